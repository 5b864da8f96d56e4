"""The reward server on loopback: a bounded load test (200 requests from 8 concurrent clients, all answered, results
equal to the CLI's, throughput reported) and each bad input answered with its 4xx and reason, the server still up."""

from __future__ import annotations

import base64
import json
import logging
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from vqinsight import cli
from vqinsight.api import Judge
from vqinsight.serve import JudgeServer, ServerConfig

log = logging.getLogger("test_serve")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    from vqinsight.models.tiny import build_tiny
    from vqinsight.video import write_video

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("serve")
    model = build_tiny(root / "model", seed=0, video_pixels=(784, 4704), image_pixels=(784, 4704))
    rng = np.random.default_rng(1)
    vids = []
    for i in range(4):
        frames = np.clip(rng.normal(50 + 40 * i, 25, (4, 56, 84, 3)), 0, 255).astype(np.uint8)
        write_video(root / f"v{i}.mp4", frames, fps=4)
        vids.append(str(root / f"v{i}.mp4"))
    (root / "text.mp4").write_text("plain text, not a video")
    data = Path(vids[0]).read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    judge = Judge.load(model, cache_dir=root / "cache", nframes=4, max_new_tokens=6, batch_size=8)
    server = JudgeServer(judge, ServerConfig(port=0, max_batch=16, max_items=8, max_body_mb=0.5)).start()
    yield {"root": root, "model": model, "vids": vids, "judge": judge, "server": server}
    server.close()


def post(url: str, body: bytes | dict, timeout: float = 60) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health(world) -> dict:
    with urllib.request.urlopen(world["server"].url + "/health", timeout=10) as r:
        return json.loads(r.read())


def cli_json(world, capsys, *inputs: str, extra: tuple[str, ...] = ()) -> dict:
    rc = cli.main(
        [
            "judge",
            *inputs,
            "--json",
            "--model",
            str(world["model"]),
            "--nframes",
            "4",
            "--max-new-tokens",
            "6",
            "--threads",
            "1",
            "--cache-dir",
            str(world["root"] / "cache"),
            *extra,
        ]
    )
    assert rc == 0
    return json.loads(capsys.readouterr().out)


def test_binds_to_loopback_by_default(world) -> None:
    assert ServerConfig().host == "127.0.0.1"
    assert world["server"].url.startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_load_200_requests_8_clients_equal_the_cli(world, capsys) -> None:
    url, vids = world["server"].url, world["vids"]
    expected_score = {v: cli_json(world, capsys, v) for v in vids}
    expected_pair = cli_json(world, capsys, vids[0], vids[1], extra=("--prompt", "p"))
    bodies = []
    for i in range(200):
        if i % 10 == 9:
            bodies.append(("compare", {"items": [{"a": vids[0], "b": vids[1], "prompt": "p"}]}))
        else:
            bodies.append(("score", {"items": [{"video": vids[i % len(vids)]}]}))
    before = health(world)["judgments"]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda tb: post(f"{url}/v1/{tb[0]}", tb[1], timeout=300), bodies))
    elapsed = time.perf_counter() - t0
    assert [code for code, _ in answers] == [200] * 200
    for (task, body), (_, ans) in zip(bodies, answers, strict=True):
        (res,) = ans["results"]
        want = expected_pair if task == "compare" else expected_score[body["items"][0]["video"]]
        if task == "compare":  # the same verdicts and texts; P(A) up to batch-padding float noise
            assert {k: v for k, v in res.items() if k != "p_a"} == {k: v for k, v in want.items() if k != "p_a"}
            assert res["p_a"] == pytest.approx(want["p_a"], abs=1e-4)
        else:
            assert res == want
    h = health(world)
    assert h["judgments"] - before == 200 and h["status"] == "ok"
    rate = 200 / elapsed
    print(
        f"\nreward server: 200 requests from 8 clients in {elapsed:.2f} s = {rate:.1f} requests/s; "
        f"{h['engine_steps']} engine steps so far"
    )
    assert h["engine_steps"] < h["judgments"], "concurrent requests share engine steps"


def test_uploaded_bytes_equal_the_path(world) -> None:
    v = world["vids"][2]
    data = base64.b64encode(Path(v).read_bytes()).decode()
    code, by_bytes = post(world["server"].url + "/v1/score", {"items": [{"video": {"data": data}}]})
    code2, by_path = post(world["server"].url + "/v1/score", {"items": [{"video": v}]})
    assert code == code2 == 200
    strip = {"video", "key"}
    assert {k: x for k, x in by_bytes["results"][0].items() if k not in strip} == {
        k: x for k, x in by_path["results"][0].items() if k not in strip
    }


@pytest.mark.parametrize(
    ("path", "body", "code", "reason"),
    [
        ("/v1/score", b"{not json", 400, "malformed JSON"),
        ("/v1/score", b"[1, 2]", 400, 'non-empty list "items"'),
        ("/v1/rank", {"items": [{"video": "/x.mp4"}]}, 404, "unknown task 'rank'"),
        ("/v2/score", {"items": []}, 404, "no such endpoint"),
        ("/v1/score", {"items": [{"video": "{root}/missing.mp4"}]}, 422, "missing.mp4: file not found"),
        ("/v1/score", {"items": [{"video": "{root}/text.mp4"}]}, 422, "text.mp4: cannot decode"),
        ("/v1/score", {"items": [{"video": "{root}/truncated.mp4"}]}, 422, "truncated.mp4: cannot decode"),
        ("/v1/score", {"items": [{"video": {"data": "%%%"}}]}, 400, "not valid base64"),
        ("/v1/score", {"items": [{"video": {"data": base64.b64encode(b"junk").decode()}}]}, 422, "cannot decode"),
        ("/v1/score", {"items": [{"video": "v0.mp4"}]}, 400, "absolute path"),
        ("/v1/score", {"items": [{"video": "{root}/v0.mp4"}] * 9}, 413, "at most 8 per request"),
        ("/v1/score", {"items": [{"video": "x" * 600_000}]}, 413, "the limit is"),
        ("/v1/compare", {"items": [{"a": "{root}/v0.mp4"}]}, 400, "missing b"),
        ("/v1/vqa", {"items": [{"video": "{root}/v0.mp4"}]}, 400, "needs a question"),
    ],
)
def test_bad_input_gets_a_4xx_with_the_reason(world, path, body, code, reason) -> None:
    if isinstance(body, dict):
        body = json.dumps(body).replace("{root}", str(world["root"])).encode()
    got, ans = post(world["server"].url + path, body)
    assert (got, ans["status"]) == (code, code)
    assert reason in ans["error"]
    assert health(world)["status"] == "ok"
    code2, ok = post(world["server"].url + "/v1/score", {"items": [{"video": world["vids"][0]}]})
    assert code2 == 200 and ok["results"][0]["video"] == world["vids"][0], "the server still judges"


def test_media_root_and_timeout(world) -> None:
    judge: Judge = world["judge"]
    other = world["root"].parent / "elsewhere"
    other.mkdir(exist_ok=True)
    confined = JudgeServer(judge, ServerConfig(port=0, media_root=str(other), timeout=0.001)).start()
    try:
        code, ans = post(confined.url + "/v1/score", {"items": [{"video": world["vids"][0]}]})
        assert code == 403 and "outside the server's media root" in ans["error"]
        inside = other / "v.mp4"
        inside.write_bytes(Path(world["vids"][0]).read_bytes())
        code, ans = post(confined.url + "/v1/score", {"items": [{"video": str(inside)}]})
        assert code == 504 and "no result within" in ans["error"]
    finally:
        confined.close()


class _Blocking:
    """The loaded judge, but each engine step waits for ``go``: makes a full queue deterministic."""

    def __init__(self, judge: Judge) -> None:
        import threading

        self.judge, self.started, self.go = judge, threading.Event(), threading.Event()
        self.engine, self.settings, self.model_dir = judge.engine, judge.settings, judge.model_dir

    def check(self, path):
        return self.judge.check(path)

    def run(self, task, jobs):
        self.started.set()
        assert self.go.wait(60)
        return self.judge.run(task, jobs)


def test_full_queue_answers_503_then_recovers(world) -> None:
    blocking = _Blocking(world["judge"])
    server = JudgeServer(blocking, ServerConfig(port=0, max_queue=1)).start()
    body = {"items": [{"video": world["vids"][3]}]}
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, server.url + "/v1/score", body)
            assert blocking.started.wait(30)  # the worker holds the first request
            second = pool.submit(post, server.url + "/v1/score", body)
            deadline = time.monotonic() + 30
            while server.batcher.queue.qsize() < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            code, ans = post(server.url + "/v1/score", body)
            assert code == 503 and "server busy" in ans["error"]
            blocking.go.set()
            assert first.result()[0] == second.result()[0] == 200
        assert post(server.url + "/v1/score", body)[0] == 200
    finally:
        blocking.go.set()
        server.close()
