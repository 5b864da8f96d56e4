"""Downloads against local files and a loopback HTTP server: resume, checksums, limits, offline errors, archives."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
import zipfile

import polars as pl
import pytest

from vqinsight.data.download import DownloadError, apply_mirrors, extract, fetch_url, hub_file_url, sha256_of
from vqinsight.data.fetch import fetch

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    honour_range = True
    cut_first_at: int | None = None  # close the connection after this many bytes, once
    requests: list[dict] = []
    html_paths: set[str] = set()  # served as text/html (a hub page, not the file)

    def log_message(self, *a):  # keep test output quiet
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        data = self.files.get(self.path)
        type(self).requests.append({"path": self.path, "range": self.headers.get("Range")})
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and self.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        if self.path in type(self).html_paths:
            self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        cut = type(self).cut_first_at
        if cut is not None:
            type(self).cut_first_at = None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    _Handler.files, _Handler.requests, _Handler.honour_range, _Handler.cut_first_at = {}, [], True, None
    _Handler.html_paths = set()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Handler
    srv.shutdown()


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_local_path_and_file_url(tmp_path):
    src = tmp_path / "src dir" / "a b.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    d1 = fetch_url(str(src), tmp_path / "out" / "x.bin", sha256=_sha(PAYLOAD))
    d2 = fetch_url(src.as_uri(), tmp_path / "out" / "y.bin")
    assert d1.read_bytes() == PAYLOAD and d2.read_bytes() == PAYLOAD
    assert not list((tmp_path / "out").glob("*.part"))


def test_sha_mismatch_deletes_partial_and_says_what_to_do(tmp_path):
    src = tmp_path / "a.bin"
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "a.bin"
    with pytest.raises(DownloadError, match="sha256 mismatch") as e:
        fetch_url(str(src), dest, sha256="0" * 64)
    assert str(dest) in str(e.value) and "by hand" in str(e.value)
    assert not dest.exists() and not dest.with_name("a.bin.part").exists()


def test_existing_file_with_good_checksum_is_not_fetched_again(tmp_path, server):
    base, h = server
    dest = tmp_path / "a.bin"
    dest.write_bytes(PAYLOAD)
    fetch_url(f"{base}/a.bin", dest, sha256=_sha(PAYLOAD))
    assert h.requests == []


def test_http_download_resumes_after_a_dropped_connection(tmp_path, server):
    base, h = server
    h.files["/big.bin"] = PAYLOAD
    h.cut_first_at = 300_000
    dest = tmp_path / "big.bin"
    with pytest.raises(DownloadError, match="will be resumed"):
        fetch_url(f"{base}/big.bin", dest, sha256=_sha(PAYLOAD))
    part = dest.with_name("big.bin.part")
    assert part.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    fetch_url(f"{base}/big.bin", dest, sha256=_sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD
    assert h.requests[-1]["range"] == f"bytes={part.stat().st_size if part.exists() else 300_000}-"


def test_server_ignoring_range_restarts_cleanly(tmp_path, server):
    base, h = server
    h.files["/f.bin"] = PAYLOAD
    h.honour_range = False
    dest = tmp_path / "f.bin"
    dest.with_name("f.bin.part").write_bytes(b"garbage-prefix")
    fetch_url(f"{base}/f.bin", dest, sha256=_sha(PAYLOAD))
    assert dest.read_bytes() == PAYLOAD


def test_size_limit(tmp_path, server):
    base, h = server
    h.files["/f.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match="limit"):
        fetch_url(f"{base}/f.bin", tmp_path / "f.bin", max_bytes=1000)
    assert not (tmp_path / "f.bin").exists()


def test_offline_error_names_url_and_destination(tmp_path):
    url = "http://127.0.0.1:9/unreachable.json"  # discard port: connection refused
    dest = tmp_path / "metas" / "x.json"
    with pytest.raises(DownloadError) as e:
        fetch_url(url, dest, sha256="a" * 64)
    msg = str(e.value)
    assert url in msg and str(dest) in msg and "a" * 64 in msg and "by hand" in msg


def test_http_404_is_a_download_error(tmp_path, server):
    base, _ = server
    with pytest.raises(DownloadError, match="missing.bin"):
        fetch_url(f"{base}/missing.bin", tmp_path / "m.bin")


def test_mirrors_longest_prefix_wins():
    m = {"https://huggingface.co/": "file:/mirror/hf/", "https://huggingface.co/datasets/X/": "/fast/X/"}
    assert apply_mirrors("https://huggingface.co/datasets/X/a.csv", m) == "/fast/X/a.csv"
    assert apply_mirrors("https://huggingface.co/datasets/Y/a.csv", m) == "file:/mirror/hf/datasets/Y/a.csv"
    assert apply_mirrors("https://other/a", m) == "https://other/a"


def test_extract_zip_and_tar_with_strip(tmp_path):
    z = tmp_path / "a.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("1024x768/x.jpg", b"x")
        f.writestr("1024x768/sub/y.jpg", b"y")
    assert extract(z, tmp_path / "img", strip_components=1) == 2
    assert (tmp_path / "img" / "x.jpg").read_bytes() == b"x" and (tmp_path / "img" / "sub" / "y.jpg").exists()
    t = tmp_path / "b.tar.gz"
    with tarfile.open(t, "w:gz") as f:
        info = tarfile.TarInfo("ia-batch1/v.mp4")
        info.size = 3
        f.addfile(info, io.BytesIO(b"abc"))
    assert extract(t, tmp_path / "videos") == 1
    assert (tmp_path / "videos" / "ia-batch1" / "v.mp4").read_bytes() == b"abc"


@pytest.mark.parametrize("name", ["../evil.txt", "/etc/evil.txt", "a/../../evil.txt"])
def test_extract_refuses_path_traversal(tmp_path, name):
    z = tmp_path / "bad.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr(name, b"x")
    with pytest.raises(DownloadError, match="escapes"):
        extract(z, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_extract_rejects_non_archives(tmp_path):
    p = tmp_path / "x.zip"
    p.write_text("not an archive")
    with pytest.raises(DownloadError, match="not a zip or tar"):
        extract(p, tmp_path / "o")


def test_fetch_download_source_with_archive_and_media_urls(tmp_path, server):
    """A whole dataset fetch (GenAI-Bench shape): parquet by URL, then each video URL it lists."""
    base, h = server
    buf = io.BytesIO()
    pl.DataFrame(
        {
            "prompt": ["p"],
            "left_video": [f"{base}/v/l.mp4"],
            "right_video": [f"{base}/v/r.mp4"],
            "vote_type": ["leftvote"],
        }
    ).write_parquet(buf)
    h.files["/genai.parquet"] = buf.getvalue()
    h.files["/v/l.mp4"], h.files["/v/r.mp4"] = b"L" * 10, b"R" * 10
    raw = tmp_path / "raw"
    spec = {
        "source": "download",
        "resources": [
            {
                "url": f"{base}/genai.parquet",
                "dest": "video_generation/test_v1-00000-of-00001.parquet",
                "sha256": _sha(buf.getvalue()),
            }
        ],
        "media_urls": {
            "file": "video_generation/test_v1-*.parquet",
            "columns": ["left_video", "right_video"],
            "dest": "videos",
        },
    }
    fetch("genaibench", raw, spec)
    assert (raw / "videos" / "l.mp4").read_bytes() == b"L" * 10 and (raw / "videos" / "r.mp4").exists()


def test_fetch_local_source_reports_missing_native_files(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(DownloadError) as e:
        fetch("livevqc", tmp_path / "raw", {"source": "local"})
    assert "data.mat" in str(e.value) and "Video/" in str(e.value) and "docs/DATASETS.md" in str(e.value)


def test_fetch_main_writes_stamp_and_fails_cleanly(tmp_path):
    from vqinsight.data.fetch import main

    stamp = tmp_path / "s.json"
    assert (
        main(
            [
                "--dataset",
                "livevqc",
                "--raw-dir",
                str(tmp_path / "r"),
                "--spec",
                '{"source": "local"}',
                "--stamp",
                str(stamp),
            ]
        )
        == 1
    )
    assert not stamp.exists()
    (tmp_path / "r" / "Video").mkdir(parents=True)
    (tmp_path / "r" / "Video" / "A001.mp4").write_bytes(b"x")
    (tmp_path / "r" / "data.mat").write_bytes(b"x")
    assert (
        main(
            [
                "--dataset",
                "livevqc",
                "--raw-dir",
                str(tmp_path / "r"),
                "--spec",
                '{"source": "local"}',
                "--stamp",
                str(stamp),
            ]
        )
        == 0
    )
    assert json.loads(stamp.read_text())["n_files"] == 2
    assert sha256_of(tmp_path / "r" / "data.mat") == _sha(b"x")


def test_unknown_source_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        fetch("koniq", tmp_path, {"source": "ftp"})


@pytest.mark.parametrize(
    ("url", "want"),
    [
        (
            "https://huggingface.co/datasets/tianleliphoebe/genai-arena-video-mp4/blob/main/dir/ab12.mp4",
            "https://huggingface.co/datasets/tianleliphoebe/genai-arena-video-mp4/resolve/main/dir/ab12.mp4",
        ),
        (
            "https://huggingface.co/org/model/blob/v1.0/w.safetensors",
            "https://huggingface.co/org/model/resolve/v1.0/w.safetensors",
        ),
        (
            "https://hf.co/spaces/o/s/blob/main/a.mp4?download=true",
            "https://hf.co/spaces/o/s/resolve/main/a.mp4?download=true",
        ),
        # already a download link, a file literally under a "blob" folder, another host: unchanged
        ("https://huggingface.co/datasets/o/d/resolve/main/blob/x.mp4", None),
        ("https://example.org/datasets/o/d/blob/main/x.mp4", None),
        ("https://huggingface.co/datasets/o/d/blob", None),
    ],
)
def test_hub_page_links_become_download_links(url, want):
    assert hub_file_url(url) == (want or url)


def test_html_page_instead_of_a_video_is_an_error(tmp_path, server):
    base, h = server
    h.files["/page.mp4"] = b"<!doctype html><html>hub page</html>"
    h.html_paths.add("/page.mp4")
    with pytest.raises(DownloadError, match="HTML page"):
        fetch_url(f"{base}/page.mp4", tmp_path / "v.mp4")
    assert not (tmp_path / "v.mp4").exists()


def test_many_hub_media_links_download_concurrently_and_resume(tmp_path, server):
    """GenAI-Bench's real URL form (/blob/ page links) through a mirror; 24 videos, 4 workers, one resumed."""
    base, h = server
    hub = "https://huggingface.co/datasets/tianleliphoebe/genai-arena-video-mp4"
    names = [f"{i:032x}.mp4" for i in range(24)]
    for n in names:
        h.files[f"/hf/datasets/tianleliphoebe/genai-arena-video-mp4/resolve/main/dir/{n}"] = n.encode() * 1000
        h.files[f"/hf/datasets/tianleliphoebe/genai-arena-video-mp4/blob/main/dir/{n}"] = b"<html>page</html>"
        h.html_paths.add(f"/hf/datasets/tianleliphoebe/genai-arena-video-mp4/blob/main/dir/{n}")
    raw = tmp_path / "raw"
    table = raw / "video_generation" / "test_v1-00000-of-00001.parquet"
    table.parent.mkdir(parents=True)
    pl.DataFrame(
        {
            "prompt": ["p"] * 12,
            "left_video": [f"{hub}/blob/main/dir/{n}" for n in names[:12]],
            "right_video": [f"{hub}/blob/main/dir/{n}" for n in names[12:]],
            "vote_type": ["leftvote"] * 12,
        }
    ).write_parquet(table)
    part = raw / "videos" / f"{names[5]}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes((names[5].encode() * 1000)[:5000])
    spec = {
        "source": "download",
        "mirrors": {"https://huggingface.co/": f"{base}/hf/"},
        "media_urls": {
            "file": "video_generation/test_v1-*.parquet",
            "columns": ["left_video", "right_video"],
            "dest": "videos",
            "workers": 4,
        },
    }
    fetch("genaibench", raw, spec)
    for n in names:
        assert (raw / "videos" / n).read_bytes() == n.encode() * 1000
    resumed = [r for r in h.requests if r["path"].endswith(names[5])]
    assert resumed == [{"path": resumed[0]["path"], "range": "bytes=5000-"}]
    assert all("/resolve/" in r["path"] for r in h.requests)
