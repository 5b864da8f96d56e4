"""The judge as a reward server: a batch HTTP JSON API on the standard library's ``http.server``.

    vqinsight serve --model DIR [--host 127.0.0.1] [--port 8377]

    POST /v1/score     {"items": [{"video": "/abs/clip.mp4"}, {"video": {"data": "<base64 mp4>"}, "prompt": "..."}]}
    POST /v1/multidim  {"items": [{"video": ..., "prompt": "a cat surfing"}]}
    POST /v1/compare   {"items": [{"a": ..., "b": ..., "prompt": "..."}]}
    POST /v1/vqa       {"items": [{"video": ..., "question": "Is the cat surfing?"}]}
    GET  /health       model, settings, queue length and counters
    -> 200 {"task": ..., "results": [...]}: each result is what ``vqinsight judge --json`` prints for that input.

A media item is a path on the server's file system (``--media-root`` confines them to one folder) or
``{"data": base64}`` bytes, stored under the upload folder by content hash (so the same bytes sent twice reuse the
decoded frames and vision features). Requests are checked, and their media decoded, in the handler threads; one
worker thread then runs every queued request through the engine together (up to ``--max-batch`` judgments a step),
so concurrent clients share batches and the static engine's vision-feature cache.

Limits: the queue holds ``--max-queue`` requests (beyond: 503), each request waits at most ``--timeout`` seconds
(504), bodies over ``--max-body-mb`` (413), more than ``--max-items`` items (413). Bad input gets a 4xx with the
reason in ``{"error": ...}``: malformed JSON or fields 400, a path outside the media root 403, an unknown task 404,
a file that is missing, not a video or truncated 422. The server binds to 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .api import TASK_NAMES, Judge, MediaError

log = logging.getLogger("vqinsight.serve")


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens and what it accepts (``vqinsight serve --help`` has the same defaults)."""

    host: str = "127.0.0.1"
    port: int = 8377
    max_queue: int = 64  # requests waiting for the engine
    timeout: float = 300.0  # seconds a request may wait for its results
    max_body_mb: float = 64.0  # request body (base64 uploads included)
    max_items: int = 64  # judgments per request
    max_batch: int = 16  # judgments per engine step, over all queued requests
    media_root: str | None = None  # if set, paths must lie under it
    upload_dir: str | None = None  # uploaded bytes (default: <cache dir>/uploads)

    def __post_init__(self) -> None:
        if min(self.max_queue, self.max_items, self.max_batch) < 1 or self.timeout <= 0 or self.max_body_mb <= 0:
            raise ValueError(f"server limits must be positive: {self}")


def add_server_args(p: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    g = p.add_argument_group("server")
    g.add_argument("--host", default=d.host, help="address to bind (default loopback only)")
    g.add_argument("--port", type=int, default=d.port, help="0: any free port (logged)")
    g.add_argument("--max-queue", type=int, default=d.max_queue, help="queued requests before 503")
    g.add_argument("--timeout", type=float, default=d.timeout, help="seconds a request may wait before 504")
    g.add_argument("--max-body-mb", type=float, default=d.max_body_mb, help="request body limit (413)")
    g.add_argument("--max-items", type=int, default=d.max_items, help="judgments per request (413)")
    g.add_argument("--max-batch", type=int, default=d.max_batch, help="judgments per engine step")
    g.add_argument("--media-root", default=None, help="only serve paths under this folder (403 otherwise)")
    g.add_argument("--upload-dir", default=None, help="where uploaded bytes are stored")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Request:
    task: str
    jobs: list[dict[str, Any]]
    done: threading.Event = field(default_factory=threading.Event)
    results: list[dict[str, Any]] | None = None
    error: str | None = None
    cancelled: bool = False


class Batcher:
    """One worker thread that drains the bounded queue and runs the engine over several requests at once."""

    def __init__(self, judge: Judge, max_queue: int, max_batch: int) -> None:
        self.judge, self.max_batch = judge, max_batch
        self.queue: queue.Queue[Request | None] = queue.Queue(maxsize=max_queue)
        self.stats = {"requests": 0, "judgments": 0, "engine_steps": 0, "errors": 0}
        self.stamps: dict[str, tuple[int, int]] = {}  # path -> (size, mtime_ns) when its features were cached
        self.thread = threading.Thread(target=self._loop, name="vqinsight-batcher", daemon=True)
        self.thread.start()

    def submit(self, req: Request) -> None:
        try:
            self.queue.put_nowait(req)
        except queue.Full:
            raise HTTPError(503, f"server busy: {self.queue.maxsize} requests queued; retry later") from None

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _forget_changed(self, jobs: list[dict[str, Any]]) -> None:
        """Drop cached vision features of a path whose file changed since they were computed."""
        vision = getattr(self.judge.engine, "vision", None)
        for j in jobs:
            for m in j["media"]:
                try:
                    st = os.stat(m)
                except OSError:
                    continue
                stamp = (st.st_size, st.st_mtime_ns)
                if self.stamps.get(m, stamp) != stamp and vision is not None:
                    for key in [k for k in vision.entries if k[0] == m]:
                        del vision.entries[key]
                self.stamps[m] = stamp

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch, n = [first], len(first.jobs)
            while n < self.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                batch.append(nxt)
                n += len(nxt.jobs)
            live = [r for r in batch if not r.cancelled]
            for task in dict.fromkeys(r.task for r in live):
                reqs = [r for r in live if r.task == task]
                jobs = [j for r in reqs for j in r.jobs]
                try:
                    self._forget_changed(jobs)
                    results = self.judge.run(task, jobs)
                except Exception as e:  # an engine failure fails these requests, never the server
                    log.exception("engine step failed (%d requests)", len(reqs))
                    self.stats["errors"] += len(reqs)
                    for r in reqs:
                        r.error = f"{type(e).__name__}: {e}"
                        r.done.set()
                    continue
                self.stats["engine_steps"] += 1
                self.stats["judgments"] += len(jobs)
                k = 0
                for r in reqs:
                    r.results = results[k : k + len(r.jobs)]
                    k += len(r.jobs)
                    self.stats["requests"] += 1
                    r.done.set()


class JudgeServer:
    """The HTTP server around a loaded ``Judge``. ``start()`` serves from a background thread (tests, notebooks);
    ``serve_forever()`` blocks."""

    def __init__(self, judge: Judge, config: ServerConfig | None = None) -> None:
        self.judge, self.config = judge, config or ServerConfig()
        cache_root = Path(judge.engine.loader.spec.cache_dir)
        self.upload_dir = Path(self.config.upload_dir or cache_root / "uploads")
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.media_root = Path(self.config.media_root).resolve() if self.config.media_root else None
        self.batcher = Batcher(judge, self.config.max_queue, self.config.max_batch)
        self.started = time.time()
        self.httpd = ThreadingHTTPServer((self.config.host, self.config.port), _handler(self))
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> JudgeServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="vqinsight-http", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.batcher.stop()

    # -- request handling (handler threads) ----------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        s = self.judge.settings
        return {
            "status": "ok",
            "model": self.judge.model_dir,
            "tasks": list(TASK_NAMES),
            "settings": {
                "nframes": s.nframes,
                "max_pixels": s.max_pixels,
                "scale": list(s.scale),
                "format": s.fmt,
                "style": s.style,
            },
            "queued": self.batcher.queue.qsize(),
            "uptime_s": round(time.time() - self.started, 1),
            **self.batcher.stats,
        }

    def media(self, ref: Any, where: str) -> str:
        """A local path for one media reference (a path, or {"data": base64}); HTTPError when unusable."""
        if isinstance(ref, str) and ref:
            p = Path(ref)
            if not p.is_absolute():
                raise HTTPError(
                    400,
                    f"{where}: {ref!r}: give an absolute path (the server's working directory is not the client's)",
                )
            if self.media_root is not None and not p.resolve().is_relative_to(self.media_root):
                raise HTTPError(403, f"{where}: {ref}: outside the server's media root {self.media_root}")
            return str(p)
        if isinstance(ref, dict) and isinstance(ref.get("data"), str):
            try:
                data = base64.b64decode(ref["data"], validate=True)
            except (binascii.Error, ValueError) as e:
                raise HTTPError(400, f"{where}: data is not valid base64 ({e})") from None
            if not data:
                raise HTTPError(422, f"{where}: uploaded file is empty (0 bytes)")
            suffix = str(ref.get("suffix") or ".mp4")
            if not suffix.startswith(".") or not suffix[1:].isalnum() or len(suffix) > 6:
                raise HTTPError(400, f"{where}: suffix {suffix!r} is not a file extension like '.mp4'")
            path = self.upload_dir / f"{hashlib.sha256(data).hexdigest()}{suffix.lower()}"
            if not path.exists():
                tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
            return str(path)
        raise HTTPError(400, f'{where}: a media item is an absolute path or {{"data": base64}}, got {ref!r:.80}')

    def parse(self, task: str, body: bytes) -> Request:
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise HTTPError(400, f"malformed JSON: {e}") from None
        items = obj.get("items") if isinstance(obj, dict) else None
        if not isinstance(items, list) or not items:
            raise HTTPError(400, 'the body must be a JSON object with a non-empty list "items"')
        if len(items) > self.config.max_items:
            raise HTTPError(413, f"{len(items)} items; at most {self.config.max_items} per request")
        default_prompt = obj.get("prompt")
        jobs = []
        for i, it in enumerate(items):
            where = f"items[{i}]"
            if not isinstance(it, dict):
                raise HTTPError(400, f"{where}: expected an object, got {type(it).__name__}")
            keys = ("a", "b") if task == "compare" else ("video",)
            missing = [k for k in keys if k not in it]
            if missing:
                raise HTTPError(400, f"{where}: missing {', '.join(missing)} (task {task} takes {', '.join(keys)})")
            prompt, question = it.get("prompt", default_prompt), it.get("question", obj.get("question"))
            for name, v in (("prompt", prompt), ("question", question)):
                if v is not None and not isinstance(v, str):
                    raise HTTPError(400, f"{where}: {name} must be a string")
            if task == "vqa" and not question:
                raise HTTPError(400, f"{where}: task vqa needs a question")
            media = [self.media(it[k], f"{where}.{k}") for k in keys]
            for m, k in zip(media, keys, strict=True):
                try:
                    self.judge.check(m)
                except (MediaError, ValueError) as e:
                    raise HTTPError(422, f"{where}.{k}: {e}") from None
            jobs.append({"media": media, "prompt": prompt, "question": question})
        return Request(task, jobs)

    def handle(self, task: str, body: bytes) -> dict[str, Any]:
        req = self.parse(task, body)
        self.batcher.submit(req)
        if not req.done.wait(self.config.timeout):
            req.cancelled = True
            raise HTTPError(504, f"no result within {self.config.timeout:g} s (queue: {self.batcher.queue.qsize()})")
        if req.error is not None:
            raise HTTPError(500, f"the judge failed on this batch: {req.error}")
        return {"task": task, "results": req.results}


def _handler(server: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vqinsight"

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("%s " + fmt, self.client_address[0], *args)

        def _send(self, status: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 503:
                self.send_header("Retry-After", "1")
            self.end_headers()
            self.wfile.write(data)

        def _error(self, e: HTTPError) -> None:
            log.info("%s %s -> %d %s", self.command, self.path, e.status, e.message)
            self._send(e.status, {"error": e.message, "status": e.status})

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") == "/health":
                self._send(200, server.health())
            else:
                self._error(HTTPError(404, f"no such endpoint {self.path}; GET /health, POST /v1/<task>"))

        def do_POST(self) -> None:  # noqa: N802
            try:
                parts = self.path.strip("/").split("/")
                if len(parts) != 2 or parts[0] != "v1":
                    raise HTTPError(
                        404, f"no such endpoint {self.path}; POST /v1/<task>, task one of {', '.join(TASK_NAMES)}"
                    )
                if parts[1] not in TASK_NAMES:
                    raise HTTPError(404, f"unknown task {parts[1]!r}; valid: {', '.join(TASK_NAMES)}")
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    raise HTTPError(411, "a Content-Length header is required")
                limit = int(server.config.max_body_mb * 2**20)
                if int(length) > limit:
                    self.close_connection = True
                    left = min(int(length), 4 * limit)  # read (and drop) a modest excess so the client sees the 413
                    while left > 0:
                        chunk = self.rfile.read(min(left, 1 << 16))
                        if not chunk:
                            break
                        left -= len(chunk)
                    raise HTTPError(413, f"body of {int(length)} bytes; the limit is {limit} (--max-body-mb)")
                body = self.rfile.read(int(length))
                if len(body) < int(length):
                    raise HTTPError(400, f"body ended after {len(body)} of {length} bytes")
                self._send(200, server.handle(parts[1], body))
            except HTTPError as e:
                self._error(e)
            except Exception as e:  # never let one request take the server down
                log.exception("unexpected error on %s", self.path)
                self._send(500, {"error": f"{type(e).__name__}: {e}", "status": 500})

    return Handler


def serve_command(a: argparse.Namespace, load_judge: Any) -> int:
    """``vqinsight serve``: load the judge, serve until SIGINT/SIGTERM."""
    cfg = ServerConfig(
        a.host, a.port, a.max_queue, a.timeout, a.max_body_mb, a.max_items, a.max_batch, a.media_root, a.upload_dir
    )
    judge = load_judge(a)
    server = JudgeServer(judge, cfg)
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s: anyone who can reach it can read files the server can read", cfg.host)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    log.info("serving %s on %s (POST /v1/{%s}, GET /health)", judge.model_dir, server.url, ",".join(TASK_NAMES))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.httpd.server_close()
    server.batcher.stop()
    log.info("stopped: %s", server.batcher.stats)
    return 0
