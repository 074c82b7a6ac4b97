"""A loopback imitation of Civitai's download endpoint, for the weights-download tests.

``GET /api/download/models/<version>`` answers like civitai.com: 401 without an API key for gated files,
otherwise a 307 redirect to a signed storage URL on a *different origin* (a second server, as Civitai's
R2/S3 storage is), which serves the bytes with ``Content-Disposition`` and honours ``Range``.
Knobs per file: drop the connection after N bytes (once), answer with an HTML login page, gate behind a key.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FakeFile:
    data: bytes
    filename: str
    needs_key: bool = False
    html: bool = False
    drop_after: int | None = None  # close the connection after this many body bytes, once
    chunk_s: float = 0.0  # a slow link: sleep this long after each 64 KiB

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest().upper()


@dataclass
class Log:
    api: list[dict] = field(default_factory=list)
    storage: list[dict] = field(default_factory=list)


class FakeCivitai:
    API_KEY = "test-key"

    def __init__(self):
        self.files: dict[int, FakeFile] = {}
        self.log = Log()
        self._servers = []

    def __enter__(self):
        self.storage = self._serve(self._storage_handler())
        self.api = self._serve(self._api_handler())
        return self

    def __exit__(self, *exc):
        for s in self._servers:
            s.shutdown()
            s.server_close()

    def url(self, version_id: int) -> str:
        return f"http://127.0.0.1:{self.api.server_port}/api/download/models/{version_id}"

    def _serve(self, handler):
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self._servers.append(server)
        return server

    def _api_handler(self):
        fake = self

        class Api(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802 - http.server naming
                fake.log.api.append({"path": self.path, "auth": self.headers.get("Authorization")})
                vid = int(self.path.rsplit("/", 1)[-1].split("?")[0])
                f = fake.files.get(vid)
                if f is None:
                    return self._reply(404, b'{"error":"Model not found"}', "application/json")
                if f.html:
                    return self._reply(200, b"<html><body>Please log in</body></html>", "text/html; charset=utf-8")
                if f.needs_key and self.headers.get("Authorization") != f"Bearer {fake.API_KEY}":
                    return self._reply(401, b'{"error":"Unauthorized"}', "application/json")
                self.send_response(307)
                self.send_header("Location", f"http://127.0.0.1:{fake.storage.server_port}/blob/{vid}?X-Sig=abc")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _reply(self, code, body, ctype):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Api

    def _storage_handler(self):
        fake = self

        class Storage(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                rng = self.headers.get("Range")
                fake.log.storage.append({"path": self.path, "range": rng, "auth": self.headers.get("Authorization")})
                vid = int(self.path.split("/blob/")[1].split("?")[0])
                f = fake.files[vid]
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                if start >= len(f.data) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(f.data)}")
                    self.end_headers()
                    return
                body = f.data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(f.data) - 1}/{len(f.data)}")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Disposition", f'attachment; filename="{f.filename}"')
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if f.drop_after is not None:
                    cut, f.drop_after = f.drop_after, None
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if f.chunk_s:
                    import time

                    for i in range(0, len(body), 65536):
                        try:
                            self.wfile.write(body[i : i + 65536])
                            self.wfile.flush()
                        except OSError:  # the client went away
                            return
                        time.sleep(f.chunk_s)
                    return
                self.wfile.write(body)

        return Storage
