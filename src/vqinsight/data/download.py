"""Downloads: resumable, size-limited, sha256-verified, atomic; archives extracted safely. Never executes content.

Offline (or on any fetch failure) the error says which URL failed and exactly which file to place where by hand.
Supported sources: http(s) URLs (HTTP Range resume, `HF_TOKEN` sent to huggingface.co), `file:` URLs and plain
local paths. `mirrors` rewrites URL prefixes, e.g. to a cluster-local copy of the Hugging Face hub.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from ..progress import progress as progress_bar

log = logging.getLogger("vqinsight.download")
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A resource that could not be fetched or verified; the message says what to do by hand."""


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


HUB_HOSTS = ("huggingface.co", "hf.co")


def hub_file_url(url: str) -> str:
    """A Hugging Face hub page link (`.../blob/<rev>/<path>`) as its download link (`.../resolve/<rev>/<path>`);
    every other URL unchanged. GenAI-Bench's video columns hold page links: fetched verbatim they give HTML."""
    parsed = urllib.parse.urlparse(url)
    if parsed.hostname not in HUB_HOSTS:
        return url
    parts = parsed.path.split("/")
    at = 4 if len(parts) > 1 and parts[1] in ("datasets", "spaces") else 3
    if len(parts) > at + 1 and parts[at] == "blob":
        parts[at] = "resolve"
        return urllib.parse.urlunparse(parsed._replace(path="/".join(parts)))
    return url


def apply_mirrors(url: str, mirrors: dict[str, str] | None) -> str:
    for prefix, repl in sorted((mirrors or {}).items(), key=lambda kv: -len(kv[0])):
        if url.startswith(prefix):
            return repl + url[len(prefix) :]
    return url


def _local_source(url: str) -> Path | None:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(
            urllib.parse.unquote(parsed.netloc + parsed.path) if parsed.netloc else urllib.parse.unquote(parsed.path)
        )
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(url)
    return None


def _by_hand(url: str, dest: Path, sha256: str | None) -> str:
    check = f" (sha256 {sha256})" if sha256 else ""
    return f"Download {url} by hand and place it at {dest}{check}, then rerun."


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "vqinsight-downloader"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    token = os.environ.get("HF_TOKEN")
    if token and urllib.parse.urlparse(url).hostname in ("huggingface.co", "hf.co"):
        req.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 - scheme checked by caller


def _copy_stream(
    src, part: Path, mode: str, have: int, max_bytes: int | None, url: str, total: int | None, progress: bool = True
) -> None:

    with (
        open(part, mode) as out,
        progress_bar(
            total=total,
            initial=have,
            unit="B",
            unit_scale=True,
            desc=part.name[:40],
            disable=None if progress else True,
        ) as bar,
    ):
        while block := src.read(CHUNK):
            have += len(block)
            if max_bytes is not None and have > max_bytes:
                raise DownloadError(
                    f"{url}: larger than the limit of {max_bytes} bytes; refusing (raise max_bytes "
                    "in the dataset config if this is expected)"
                )
            out.write(block)
            bar.update(len(block))


def fetch_url(
    url: str,
    dest: str | os.PathLike,
    *,
    sha256: str | None = None,
    max_bytes: int | None = None,
    timeout: float = 60.0,
    mirrors: dict[str, str] | None = None,
    progress: bool = True,
) -> Path:
    """Fetch `url` to `dest` (resuming a `.part` file), verify sha256 when known, and rename into place. Hub page
    links (`/blob/`) are fetched as their files (`/resolve/`); `progress=False` hides the per-file bar."""
    dest = Path(dest)
    url = apply_mirrors(hub_file_url(url), mirrors)
    if dest.is_file() and dest.stat().st_size > 0:
        if sha256 is None or sha256_of(dest) == sha256.lower():
            log.info("present: %s", dest)
            return dest
        log.warning("%s: sha256 mismatch, fetching again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    local = _local_source(url)
    try:
        if local is not None:
            if not local.is_file():
                raise DownloadError(f"{url}: local source not found. {_by_hand(url, dest, sha256)}")
            size = local.stat().st_size
            if have > size:
                have = 0
            with open(local, "rb") as src:
                src.seek(have)
                _copy_stream(src, part, "ab" if have else "wb", have, max_bytes, url, size, progress)
        elif urllib.parse.urlparse(url).scheme in ("http", "https"):
            with _open(url, have, timeout) as resp:
                if have and resp.status != 206:  # server ignored Range: start over
                    have = 0
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else None
                if max_bytes is not None and total is not None and total > max_bytes:
                    raise DownloadError(f"{url}: {total} bytes exceeds the limit of {max_bytes}")
                ctype = resp.headers.get("Content-Type") or ""
                if ctype.startswith("text/html") and dest.suffix.lower() not in (".html", ".htm"):
                    raise DownloadError(
                        f"{url}: the server sent an HTML page, not the file (a web page link rather than a "
                        f"download link?). {_by_hand(url, dest, sha256)}"
                    )
                _copy_stream(resp, part, "ab" if have else "wb", have, max_bytes, url, total, progress)
            if total is not None and part.stat().st_size < total:
                raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes")
        else:
            raise DownloadError(f"{url}: unsupported URL scheme. {_by_hand(url, dest, sha256)}")
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(
            f"could not fetch {url}: {reason} (offline?). {_by_hand(url, dest, sha256)} "
            f"A partial download is kept at {part} and will be resumed."
        ) from None
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256.lower():
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{url}: sha256 mismatch (expected {sha256}, got {got}); the partial file was "
                f"deleted. {_by_hand(url, dest, sha256)}"
            )
    os.replace(part, dest)
    log.info("fetched %s -> %s", url, dest)
    return dest


def _safe_member(name: str, strip: int) -> PurePosixPath | None:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts:
        raise DownloadError(f"archive member {name!r} escapes the destination; refusing to extract")
    parts = p.parts[strip:]
    return PurePosixPath(*parts) if parts else None


def extract(archive: str | os.PathLike, dest_dir: str | os.PathLike, strip_components: int = 0) -> int:
    """Extract a zip / tar(.gz|.bz2|.xz) archive into dest_dir; refuses links and path traversal. Returns #files."""
    archive, dest_dir = Path(archive), Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                rel = _safe_member(info.filename, strip_components)
                if rel is None or info.is_dir():
                    continue
                target = dest_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                n += 1
        return n
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            for m in t:
                rel = _safe_member(m.name, strip_components)
                if rel is None or m.isdir():
                    continue
                if not m.isfile():
                    log.warning("%s: skipping non-regular member %s", archive, m.name)
                    continue
                target = dest_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                src = t.extractfile(m)
                assert src is not None
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                n += 1
        return n
    raise DownloadError(f"{archive}: not a zip or tar archive")
