"""Unit tests for vqinsight.video: sampling, smart resize, decoding, errors, frame cache, frames bench."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vqinsight import video
from vqinsight.video import FrameCache, MediaError, fit_pixels, probe, read_frames, read_image, sample_indices

T, H, W = 24, 48, 64
BACKENDS = ["decord", "pyav"]


def _grey_clip(path: Path, t: int = T, h: int = H, w: int = W) -> Path:
    """Frame i is a flat grey of level 10*i, so a decoded frame's index is its mean brightness / 10."""
    frames = np.repeat((np.arange(t, dtype=np.uint8) * 10)[:, None, None, None], h * w * 3).reshape(t, h, w, 3)
    video.write_video(path, frames, fps=8)
    return path


def _indices_by_brightness(frames: np.ndarray) -> list[int]:
    means = frames.reshape(len(frames), -1).mean(axis=1)
    assert np.all(np.abs(means - np.round(means / 10) * 10) < 3), means  # each frame is close to one grey level
    return [int(round(m / 10)) for m in means]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _grey_clip(tmp_path_factory.mktemp("clips") / "grey.mp4")


# ------------------------------------------------------------------------------------------------ sample_indices


@pytest.mark.parametrize("total,n", [(24, 8), (300, 16), (16, 16), (1, 1), (2, 5), (5, 12), (1000, 7), (7, 1)])
def test_sample_indices_matches_linspace(total: int, n: int) -> None:
    idx = sample_indices(total, n)
    assert len(idx) == n and all(isinstance(i, int) for i in idx)
    assert idx == np.round(np.linspace(0, total - 1, n)).astype(int).tolist()
    assert idx[0] == 0 and min(idx) >= 0 and max(idx) <= total - 1
    assert n == 1 or idx[-1] == total - 1  # linspace with one point is just the start
    assert all(a <= b for a, b in zip(idx, idx[1:], strict=False))
    if total >= n:
        assert len(set(idx)) == n  # no repeats when there are enough frames


def test_sample_indices_repeats_when_short() -> None:
    assert sample_indices(2, 5) == [0, 0, 0, 1, 1] or sample_indices(2, 5) == [0, 0, 1, 1, 1]
    assert sample_indices(1, 4) == [0, 0, 0, 0]


@pytest.mark.parametrize("total,n", [(0, 4), (-1, 4), (10, 0), (10, -2)])
def test_sample_indices_errors(total: int, n: int) -> None:
    with pytest.raises(ValueError):
        sample_indices(total, n)


# ---------------------------------------------------------------------------------------------------- fit_pixels

MAXP = 128 * 28 * 28


@pytest.mark.parametrize(
    "h,w", [(720, 1280), (1080, 1920), (480, 640), (2160, 3840), (1280, 720), (540, 960), (100, 3000)]
)
def test_fit_pixels_downscale(h: int, w: int) -> None:
    h2, w2 = fit_pixels(h, w, MAXP)
    assert h2 % 28 == 0 and w2 % 28 == 0 and h2 >= 28 and w2 >= 28
    assert h2 * w2 <= MAXP
    assert h2 * w2 > MAXP * 0.6  # uses most of the budget
    assert abs(np.log((w2 / h2) / (w / h))) < 0.2  # aspect ratio kept approximately


def test_fit_pixels_matches_qwen_examples() -> None:
    assert fit_pixels(720, 1280, MAXP) == (224, 420)
    assert fit_pixels(56, 56, MAXP) == (56, 56)  # already fits: only rounded to the factor
    assert fit_pixels(50, 70, MAXP) == (56, 56)


def test_fit_pixels_upscale_to_min_pixels() -> None:
    h2, w2 = fit_pixels(30, 40, MAXP, min_pixels=4 * 28 * 28)
    assert h2 % 28 == 0 and w2 % 28 == 0 and 4 * 28 * 28 <= h2 * w2 <= MAXP
    assert w2 >= h2


def test_fit_pixels_errors() -> None:
    with pytest.raises(ValueError, match="10x2500"):
        fit_pixels(10, 2500, MAXP)
    with pytest.raises(ValueError):
        fit_pixels(0, 10, MAXP)
    with pytest.raises(ValueError):
        fit_pixels(100, 100, 100)  # budget below one 28x28 patch


# --------------------------------------------------------------------------------------------------- read_frames


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_frames_identity_and_shape(clip: Path, backend: str) -> None:
    frames = read_frames(clip, 8, backend=backend)
    assert frames.dtype == np.uint8 and frames.shape == (8, H, W, 3)
    assert _indices_by_brightness(frames) == sample_indices(T, 8)


def test_backends_agree_and_resize(clip: Path) -> None:
    a = read_frames(clip, 6, backend="decord", max_pixels=4 * 28 * 28)
    b = read_frames(clip, 6, backend="pyav", max_pixels=4 * 28 * 28)
    assert a.shape == b.shape == (6, *fit_pixels(H, W, 4 * 28 * 28), 3)
    assert _indices_by_brightness(a) == _indices_by_brightness(b) == sample_indices(T, 6)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_frames_more_than_available(clip: Path, backend: str) -> None:
    frames = read_frames(clip, 40, backend=backend)
    assert frames.shape[0] == 40 and _indices_by_brightness(frames) == sample_indices(T, 40)


@pytest.mark.parametrize("backend", BACKENDS)
def test_probe(clip: Path, backend: str) -> None:
    info = probe(clip, backend=backend)
    assert (info["frames"], info["width"], info["height"]) == (T, W, H)
    assert info["fps"] == pytest.approx(8) and info["duration"] == pytest.approx(T / 8, rel=0.05)
    assert info["backend"] in BACKENDS


def _bad_files(tmp: Path, clip: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp / "text.mp4"
    text.write_text("this is not a video\n" * 20)
    data = clip.read_bytes()
    trunc = tmp / "trunc.mp4"
    trunc.write_bytes(data[: int(len(data) * 0.3)])
    return {
        "missing": (tmp / "nope.mp4", "file not found"),
        "empty": (empty, "empty file (0 bytes)"),
        "text": (text, "cannot decode"),
        "truncated": (trunc, "cannot decode"),
        "directory": (tmp, "not a regular file"),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated", "directory"])
def test_read_frames_errors(tmp_path: Path, clip: Path, backend: str, kind: str) -> None:
    path, reason = _bad_files(tmp_path, clip)[kind]
    with pytest.raises(MediaError) as err:
        read_frames(path, 4, backend=backend)
    assert str(err.value).startswith(str(path)) and reason in str(err.value)


def _faststart_copy(src: Path, dst: Path) -> Path:
    import imageio_ffmpeg

    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), "-c", "copy"]
    subprocess.run([*cmd, "-movflags", "+faststart", str(dst)], check=True, capture_output=True)
    return dst


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_at_packet_boundary_is_not_silent(tmp_path: Path, backend: str) -> None:
    """With the index up front, a file cut between packets opens fine; decord then reports the prefix length
    as the frame count. The readers must refuse instead of sampling the prefix."""
    import av

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    src = tmp_path / "noise.mp4"
    video.write_video(src, frames, fps=8)
    fast = _faststart_copy(src, tmp_path / "fast.mp4")
    with av.open(str(fast)) as c:
        ends = [p.pos + p.size for p in c.demux(c.streams.video[0]) if p.size]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(fast.read_bytes()[: ends[T // 2]])
    try:
        out = read_frames(cut, 8, backend=backend)
    except MediaError as err:
        assert str(err).startswith(str(cut)) and "cannot decode" in str(err)
    else:  # only acceptable if it really is a full-length sampling, which it cannot be here
        pytest.fail(f"truncated file decoded silently into {out.shape}")


def test_no_video_stream(tmp_path: Path) -> None:
    import imageio_ffmpeg

    wav = tmp_path / "tone.mp4"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", "sine=duration=0.2"]
    proc = subprocess.run([*cmd, "-c:a", "aac", str(wav)], capture_output=True, check=False)
    if proc.returncode != 0:
        pytest.skip("ffmpeg binary lacks lavfi/aac")
    with pytest.raises(MediaError, match="no video stream"):
        read_frames(wav, 4)


def test_decord_missing_falls_back(
    monkeypatch: pytest.MonkeyPatch, clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "decord":
            raise ImportError("no decord here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    video._decord_available.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="vqinsight.video"):
            a = read_frames(clip, 4, backend="decord")
            b = read_frames(clip, 4, backend="decord")
        assert sum("falls back to PyAV" in r.message for r in caplog.records) == 1
        assert video.available_backends() == ["pyav"]
        assert _indices_by_brightness(a) == _indices_by_brightness(b) == sample_indices(T, 4)
    finally:
        video._decord_available.cache_clear()


def test_unknown_backend(clip: Path) -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        read_frames(clip, 4, backend="opencv")


# ---------------------------------------------------------------------------------------------------- read_image


def test_read_image(tmp_path: Path) -> None:
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray(np.full((60, 90, 3), 77, np.uint8)).save(img)
    arr = read_image(img)
    assert arr.shape == (60, 90, 3) and arr.dtype == np.uint8 and int(arr.mean()) == 77
    assert read_image(img, max_pixels=4 * 28 * 28).shape == (*fit_pixels(60, 90, 4 * 28 * 28), 3)
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    cut = tmp_path / "cut.png"
    cut.write_bytes(img.read_bytes()[:40])
    for path in (bad, cut, tmp_path / "missing.png"):
        with pytest.raises(MediaError) as err:
            read_image(path)
        assert str(err.value).startswith(str(path))


# ---------------------------------------------------------------------------------------------------- FrameCache


def _counting_reader(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = video.read_frames

    def spy(path: os.PathLike, *args: object, **kwargs: object) -> np.ndarray:
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(video, "read_frames", spy)
    return calls


def test_cache_hit_does_not_decode(tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_reader(monkeypatch)
    cache = FrameCache(tmp_path / "c", nframes=6, max_pixels=4 * 28 * 28)
    a = cache.get(clip)
    b = cache.get(clip)
    assert len(calls) == 1 and cache.decodes == 1
    np.testing.assert_array_equal(a, b)
    assert _indices_by_brightness(b) == sample_indices(T, 6)
    entry = cache.path_for(clip)
    assert entry.exists() and entry.suffix == ".npy" and not list(entry.parent.glob("*.tmp"))
    assert FrameCache(tmp_path / "c", nframes=6, max_pixels=4 * 28 * 28).get(clip).shape == a.shape
    assert len(calls) == 1  # a fresh instance on the same root also hits


def test_cache_key_depends_on_params_and_file(tmp_path: Path, clip: Path) -> None:
    base = FrameCache(tmp_path, nframes=6, max_pixels=MAXP)
    assert base.key(clip) == FrameCache(tmp_path, nframes=6, max_pixels=MAXP, backend="pyav").key(clip)
    assert base.key(clip) != FrameCache(tmp_path, nframes=8, max_pixels=MAXP).key(clip)
    assert base.key(clip) != FrameCache(tmp_path, nframes=6, max_pixels=None).key(clip)
    assert base.key(clip) != FrameCache(tmp_path, nframes=6, max_pixels=MAXP, min_pixels=28 * 28).key(clip)
    copy = _grey_clip(tmp_path / "copy.mp4")
    k1 = base.key(copy)
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert base.key(copy) != k1


def test_cache_corrupted_entry_is_redecoded(
    tmp_path: Path, clip: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = _counting_reader(monkeypatch)
    cache = FrameCache(tmp_path, nframes=5, max_pixels=None)
    good = cache.get(clip)
    entry = cache.path_for(clip)
    for garbage in (b"garbage, not npy", entry.read_bytes()[:100]):
        entry.write_bytes(garbage)
        with caplog.at_level(logging.WARNING, logger="vqinsight.video"):
            np.testing.assert_array_equal(cache.get(clip), good)
        assert any("corrupted cache file" in r.message for r in caplog.records)
        caplog.clear()
    np.save(entry, np.zeros((3, 2, 2, 3), np.uint8))  # valid npy of the wrong shape
    np.testing.assert_array_equal(cache.get(clip), good)
    assert len(calls) == 4
    np.testing.assert_array_equal(np.load(entry), good)  # overwritten with the right frames


@pytest.mark.parametrize("workers", [1, 2])
def test_cache_warm_reports_failures(tmp_path: Path, clip: Path, workers: int) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    other = _grey_clip(tmp_path / "other.mp4", t=10)
    cache = FrameCache(tmp_path / "cache", nframes=4, max_pixels=4 * 28 * 28)
    failures = cache.warm([clip, bad, other, tmp_path / "missing.mp4"], workers=workers)
    assert [p for p, _ in failures] == [str(bad), str(tmp_path / "missing.mp4")]
    assert "cannot decode" in failures[0][1] and "file not found" in failures[1][1]
    assert cache.path_for(clip).exists() and cache.path_for(other).exists()
    assert _indices_by_brightness(cache.get(other)) == sample_indices(10, 4)
    assert cache.decodes == 0  # everything came from the warmed cache


# --------------------------------------------------------------------------------------------------------- bench


def test_bench_frames_json(tmp_path: Path) -> None:
    from vqinsight.bench.__main__ import main

    out = tmp_path / "deep" / "frames.json"
    argv = ["frames", "--seconds", "1", "--height", "64", "--width", "96", "--repeats", "1", "--nframes", "4"]
    assert main([*argv, "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    keys = {"name", "clip", "results", "baseline", "ratios", "versions", "machine", "timestamp"}
    assert keys <= doc.keys() and doc["name"] == "frames"
    assert doc["clip"]["frames"] == 30 and doc["clip"]["height"] == 64
    row_keys = {"backend", "mode", "nframes", "resize", "median_s", "frames_per_s", "decoded_frames_per_s"}
    assert all(row_keys <= r.keys() for r in doc["results"])
    modes = {(r["backend"], r["mode"], r["resize"]) for r in doc["results"]}
    for backend in video.available_backends():
        assert {(backend, "read", False), (backend, "read", True)} <= modes
    assert {r["mode"] for r in doc["results"]} >= {"cache_cold", "cache_warm"}
    assert {"python", "numpy", "decord", "av", "torch"} <= doc["versions"].keys()
    assert not list(out.parent.glob(".*.tmp"))


def test_bench_unknown_name() -> None:
    from vqinsight.bench.__main__ import main

    assert main(["nope"]) == 2


# ------------------------------------------------------------------------------------------- frame-count edge cases


@pytest.mark.parametrize("backend", BACKENDS)
def test_container_without_frame_count(tmp_path: Path, clip: Path, backend: str) -> None:
    """Matroska declares no frame count: PyAV counts by decoding once, then samples as usual."""
    import av
    import imageio_ffmpeg

    mkv = tmp_path / "grey.mkv"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(clip), "-c", "copy", str(mkv)]
    subprocess.run(cmd, check=True, capture_output=True)
    with av.open(str(mkv)) as c:
        assert not c.streams.video[0].frames
    assert probe(mkv, backend=backend)["frames"] == T
    assert _indices_by_brightness(read_frames(mkv, 8, backend=backend)) == sample_indices(T, 8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_declared_count_slightly_off_is_tolerated(
    clip: Path, backend: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = video._stream_meta
    monkeypatch.setattr(video, "_stream_meta", lambda p: {**real(p), "frames": T + video.FRAME_SHORTFALL_TOLERANCE})
    with caplog.at_level(logging.WARNING, logger="vqinsight.video"):
        frames = read_frames(clip, 8, backend=backend)
    assert _indices_by_brightness(frames) == sample_indices(T, 8)  # sampled over the decodable frames
    monkeypatch.setattr(video, "_stream_meta", lambda p: {**real(p), "frames": T + 5})
    with pytest.raises(MediaError, match="truncated"):
        read_frames(clip, 8, backend=backend)
