"""A loopback fake of the KFP v2beta1 REST API that records every request.

It keeps experiments, pipelines, pipeline versions and recurring runs in memory, with the
routes ``kfp.Client`` uses for them (list with a ``display_name`` filter, create, upload,
delete, enable/disable). ``tls=(certfile, keyfile)`` serves HTTPS instead of HTTP.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import urllib.parse
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = "/apis/v2beta1"


def _name_filter(query: dict[str, list[str]]) -> str | None:
    """The display name a v2beta1 ``filter`` asks for (EQUALS on display_name), if any."""
    raw = query.get("filter", [""])[0]
    if not raw:
        return None
    for predicate in json.loads(raw).get("predicates", []):
        if predicate.get("key") == "display_name":
            return predicate.get("stringValue", predicate.get("string_value"))
    return None


class FakeKfp:
    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self.requests: list[tuple[str, str, dict | None]] = []
        #: The headers of each request (names lower-cased), in the order of ``requests``.
        self.headers: list[dict[str, str]] = []
        #: The query string of each request, parsed, in the order of ``requests``.
        self.queries: list[dict[str, list[str]]] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}  # version id -> version (with pipeline_id)
        self.uploads: dict[str, bytes] = {}  # version id -> the uploaded package
        self.recurring_runs: dict[str, dict] = {}
        self.fail_with: tuple[int, str] | None = None
        self._ids = 0
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
                raw = self.rfile.read(length) if length else b""
                content_type = self.headers.get("Content-Type") or ""
                if content_type.startswith("multipart/form-data"):
                    message = BytesParser(policy=HTTP).parsebytes(
                        f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
                    body = {part.get_param("name", header="content-disposition"):
                            part.get_payload(decode=True) for part in message.iter_parts()}
                else:
                    body = json.loads(raw) if raw else None
                url = urllib.parse.urlparse(self.path)
                fake.requests.append((method, url.path, body))
                fake.headers.append({k.lower(): v for k, v in self.headers.items()})
                fake.queries.append(urllib.parse.parse_qs(url.query))
                if fake.fail_with and url.path.endswith(("/runs", "/recurringruns")):
                    status, message = fake.fail_with
                    return self._reply(status, {"error": message, "code": 3,
                                                "message": message})
                with fake._lock:
                    self._reply(*fake.route(method, url, body))

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                self._handle("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._handle("POST")

            def do_DELETE(self) -> None:  # noqa: N802
                self._handle("DELETE")

        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids}"

    def route(self, method: str, url, body: dict | None) -> tuple[int, dict]:
        path = url.path
        query = urllib.parse.parse_qs(url.query)
        wanted = _name_filter(query)
        if path == f"{API}/healthz":
            return 200, {"multi_user": False}
        # ------------------------------------------------------------ experiments
        if path == f"{API}/experiments" and method == "GET":
            found = [e for e in self.experiments.values()
                     if wanted is None or e["display_name"] == wanted]
            return 200, {"experiments": found, "total_size": len(found)}
        if path == f"{API}/experiments" and method == "POST":
            exp = {"experiment_id": f"exp-{len(self.experiments) + 1}",
                   "display_name": body["display_name"], "namespace": body.get("namespace")}
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if path.startswith(f"{API}/experiments/"):
            exp = self.experiments.get(path.rsplit("/", 1)[1])
            return (200, exp) if exp else (404, {"message": "experiment not found"})
        # ------------------------------------------------------------------ runs
        if path == f"{API}/runs" and method == "POST":
            return 200, {"run_id": "run-1", "display_name": body.get("display_name"),
                         "experiment_id": body.get("experiment_id"), "state": "PENDING"}
        # ------------------------------------------------------------- pipelines
        if path == f"{API}/pipelines" and method == "GET":
            namespace = query.get("namespace", [None])[0]
            found = [p for p in self.pipelines.values()
                     if (wanted is None or p["display_name"] == wanted)
                     and (namespace is None or p.get("namespace") == namespace)]
            return 200, {"pipelines": found, "total_size": len(found)}
        if path == f"{API}/pipelines" and method == "POST":
            pipeline = {"pipeline_id": self._new_id("pipeline"),
                        "display_name": body["display_name"],
                        "namespace": body.get("namespace"),
                        "description": body.get("description")}
            self.pipelines[pipeline["pipeline_id"]] = pipeline
            return 200, pipeline
        if path == f"{API}/pipelines/upload_version" and method == "POST":
            pipeline_id = query["pipelineid"][0]
            if pipeline_id not in self.pipelines:
                return 404, {"message": f"pipeline {pipeline_id} not found"}
            name = query["name"][0]
            if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name
                   for v in self.versions.values()):
                return 409, {"message": f"version {name!r} already exists"}
            version = {"pipeline_version_id": self._new_id("version"),
                       "pipeline_id": pipeline_id, "display_name": name}
            self.versions[version["pipeline_version_id"]] = version
            self.uploads[version["pipeline_version_id"]] = body["uploadfile"]
            return 200, version
        match = re.fullmatch(f"{API}/pipelines/([^/]+)/versions", path)
        if match and method == "GET":
            found = [v for v in self.versions.values() if v["pipeline_id"] == match[1]
                     and (wanted is None or v["display_name"] == wanted)]
            return 200, {"pipeline_versions": found, "total_size": len(found)}
        # -------------------------------------------------------- recurring runs
        if path == f"{API}/recurringruns" and method == "GET":
            experiment_id = query.get("experiment_id", [None])[0]
            found = [r for r in self.recurring_runs.values()
                     if (wanted is None or r["display_name"] == wanted)
                     and (experiment_id is None or r["experiment_id"] == experiment_id)]
            return 200, {"recurringRuns": found, "total_size": len(found)}
        if path == f"{API}/recurringruns" and method == "POST":
            run = {**body, "recurring_run_id": self._new_id("rr"),
                   "status": "DISABLED" if body.get("mode") == "DISABLE" else "ENABLED"}
            self.recurring_runs[run["recurring_run_id"]] = run
            return 200, run
        match = re.fullmatch(f"{API}/recurringruns/([^/:]+)(:enable|:disable)?", path)
        if match:
            run = self.recurring_runs.get(match[1])
            if run is None:
                return 404, {"message": f"recurring run {match[1]} not found"}
            if method == "DELETE" and not match[2]:
                del self.recurring_runs[match[1]]
                return 200, {}
            if method == "POST" and match[2]:
                run["status"] = "ENABLED" if match[2] == ":enable" else "DISABLED"
                return 200, {}
            if method == "GET" and not match[2]:
                return 200, run
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
