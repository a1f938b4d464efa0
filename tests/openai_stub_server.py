"""A tiny real HTTP server that speaks OpenAI's ``POST /v1/embeddings``, for tests.

Runs on 127.0.0.1 with an ephemeral port in a background thread (stdlib only, plus numpy), so the
real ``openai`` client can be exercised end to end: retries, dropped connections, bad responses.

* Vectors are deterministic: :func:`vector_for` derives them from a sha256 of the text, so a test
  can check every returned row.
* Faults are scripted: :meth:`StubEmbeddingServer.push` queues one fault per upcoming request;
  :meth:`StubEmbeddingServer.fail_after` makes every request after the first ``n`` successful ones
  fail. Fault dicts: ``{"status": 500}``, ``{"status": 429, "headers": {"Retry-After": "1"}}``,
  ``{"drop": True}`` (close the socket without answering), ``{"short": 1}`` (one vector fewer),
  ``{"nan": True}``, ``{"dim": 7}`` (wrong dimension), ``{"delay": 0.2}`` (then answer normally).
* Every request is logged (:attr:`StubEmbeddingServer.requests`): inputs, model, dimensions,
  Authorization header and what was answered.
"""
from __future__ import annotations

import base64
import collections
import hashlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Deque, Dict, List, Optional

import numpy as np

MODEL_DIMS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}


def vector_for(text: str, dim: int) -> np.ndarray:
    """Deterministic unit vector for ``text`` (float64)."""
    seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim)
    return v / np.linalg.norm(v)


class StubEmbeddingServer:
    """Context manager: ``with StubEmbeddingServer() as srv: srv.base_url``."""

    def __init__(self, default_dim: int = 24, expected_key: Optional[str] = None) -> None:
        self.default_dim = default_dim
        self.expected_key = expected_key
        self._lock = threading.Lock()
        self._faults: Deque[Dict[str, Any]] = collections.deque()
        self._after: Optional[tuple[int, Dict[str, Any]]] = None
        self._ok = 0
        self.requests: List[Dict[str, Any]] = []
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- control ----------------------------------------------------------------------------------
    def push(self, *faults: Dict[str, Any]) -> None:
        with self._lock:
            self._faults.extend(faults)

    def fail_after(self, n_ok: int, fault: Dict[str, Any]) -> None:
        """After ``n_ok`` more successful requests, answer every request with ``fault``."""
        with self._lock:
            self._after = (self._ok + n_ok, dict(fault))

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()
            self._after = None

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def inputs_sent(self) -> List[str]:
        with self._lock:
            return [t for r in self.requests for t in r["inputs"]]

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "StubEmbeddingServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                server._handle(self)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "StubEmbeddingServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- request handling -------------------------------------------------------------------------
    def _next_fault(self) -> Optional[Dict[str, Any]]:
        with self._lock:
            if self._faults:
                return self._faults.popleft()
            if self._after is not None and self._ok >= self._after[0]:
                return dict(self._after[1])
            return None

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        inputs = body.get("input", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        entry: Dict[str, Any] = {
            "path": h.path, "model": body.get("model"), "inputs": list(inputs),
            "dimensions": body.get("dimensions"), "has_dimensions": "dimensions" in body,
            "encoding_format": body.get("encoding_format"),
            "authorization": h.headers.get("Authorization"), "time": time.monotonic(),
        }
        with self._lock:
            self.requests.append(entry)

        if h.path.rstrip("/") != "/v1/embeddings":
            entry["answer"] = 404
            return self._send(h, 404, {"error": {"message": f"no route {h.path}", "type": "invalid_request_error"}})
        presented = (h.headers.get("Authorization") or "").removeprefix("Bearer ")
        if self.expected_key is not None and presented != self.expected_key:
            entry["answer"] = 401
            # Deliberately echoes the key in full (a careless proxy might): the client must redact it.
            return self._send(h, 401, {"error": {"message": f"Incorrect API key provided: {presented}",
                                                 "type": "invalid_request_error", "code": "invalid_api_key"}})

        fault = self._next_fault() or {}
        if fault.get("delay"):
            time.sleep(float(fault["delay"]))
        if fault.get("drop"):
            entry["answer"] = "drop"
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault.get("status"):
            status = int(fault["status"])
            entry["answer"] = status
            body_out = fault.get("body") or {"error": {"message": f"stub fault {status}", "type": "server_error"}}
            return self._send(h, status, body_out, fault.get("headers"))

        model = body.get("model") or "stub"
        dim = int(fault.get("dim") or body.get("dimensions") or MODEL_DIMS.get(model, self.default_dim))
        data = []
        for i, text in enumerate(inputs):
            vec = vector_for(text, dim)
            if fault.get("nan") and i == 0:
                vec = vec.copy()
                vec[0] = float("nan")
            if body.get("encoding_format") == "base64":
                emb: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
            else:
                emb = vec.tolist()
            data.append({"object": "embedding", "index": i, "embedding": emb})
        if fault.get("short"):
            data = data[: max(0, len(data) - int(fault["short"]))]
        tokens = sum(max(1, len(t) // 4) for t in inputs)
        entry["answer"] = 200
        with self._lock:
            self._ok += 1
        self._send(h, 200, {"object": "list", "data": data, "model": model,
                            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, payload: Any,
              headers: Optional[Dict[str, str]] = None) -> None:
        blob = json.dumps(payload).encode("utf-8")
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(blob)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(blob)
