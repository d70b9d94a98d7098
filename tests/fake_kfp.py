"""A loopback fake of the KFP v2beta1 REST API that records every request."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeKfp:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict | None]] = []
        self.experiments: dict[str, dict] = {}
        self.fail_with: tuple[int, str] | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                url = urllib.parse.urlparse(self.path)
                fake.requests.append((method, url.path, body))
                if fake.fail_with and url.path.endswith(("/runs", "/recurringruns")):
                    status, message = fake.fail_with
                    return self._reply(status, {"error": message, "code": 3,
                                                "message": message})
                self._reply(*fake.route(method, url, body))

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def route(self, method: str, url, body: dict | None) -> tuple[int, dict]:
        path = url.path
        if path == "/apis/v2beta1/healthz":
            return 200, {"multi_user": False}
        if path == "/apis/v2beta1/experiments" and method == "GET":
            query = urllib.parse.parse_qs(url.query)
            wanted = json.dumps(query.get("filter", [""])[0])
            found = [e for e in self.experiments.values() if e["display_name"] in wanted]
            return 200, {"experiments": found, "total_size": len(found)}
        if path == "/apis/v2beta1/experiments" and method == "POST":
            exp = {"experiment_id": f"exp-{len(self.experiments) + 1}",
                   "display_name": body["display_name"]}
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if path.startswith("/apis/v2beta1/experiments/"):
            exp = self.experiments.get(path.rsplit("/", 1)[1])
            return (200, exp) if exp else (404, {"message": "experiment not found"})
        if path == "/apis/v2beta1/runs" and method == "POST":
            return 200, {"run_id": "run-1", "display_name": body.get("display_name"),
                         "experiment_id": body.get("experiment_id"), "state": "PENDING"}
        if path == "/apis/v2beta1/recurringruns" and method == "POST":
            return 200, {"recurring_run_id": "rr-1", "display_name": body.get("display_name"),
                         "status": "ENABLED"}
        return 404, {"message": f"fake KFP has no route {method} {path}"}

    def posted(self, suffix: str) -> list[dict]:
        return [b for m, p, b in self.requests if m == "POST" and p.endswith(suffix)]

    def __enter__(self) -> FakeKfp:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
