"""A small HTTP server on loopback that serves fixed files, for tests and benchmarks that
need weights "on the internet" (Flux's ``hf_lora``): plain files by path, and the two
Hugging Face Hub routes a LoRA download uses (``/api/models/<repo>`` and
``/<repo>/resolve/<revision>/<file>``). It counts the requests for each path, and a path
can be held until released, to show that concurrent predictions download once.

    with FileServer() as server:
        server.files["/loras/style.safetensors"] = data
        server.hub_repo("someone/style", {"lora.safetensors": data})
        url = server.url + "/loras/style.safetensors"
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"


class FileServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: Counter[str] = Counter()
        # Paths whose answers wait until their event is set.
        self.held: dict[str, threading.Event] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                server.requests[path] += 1
                gate = server.held.get(path)
                if gate is not None:
                    gate.wait(timeout=60)
                body = server.files.get(path)
                if body is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def hub_repo(self, repo: str, files: dict[str, bytes]) -> None:
        """Serve ``repo`` as the Hub does: its listing, and each file at HUB_REVISION."""
        listing = {"id": repo, "sha": HUB_REVISION, "siblings": [{"rfilename": n} for n in files]}
        self.files[f"/api/models/{repo}"] = json.dumps(listing).encode()
        for name, data in files.items():
            self.files[f"/{repo}/resolve/{HUB_REVISION}/{name}"] = data
            self.files[f"/{repo}/resolve/main/{name}"] = data

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for gate in self.held.values():
            gate.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
