"""A real HTTP server on 127.0.0.1 for the downloader tests: good file, 404, stall, flaky, a
body cut short, HTML."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>gone</body></html>\n"
)


def make_handler(files: dict[str, bytes], hits: dict[str, int]):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_GET(self) -> None:
            hits[self.path] = hits.get(self.path, 0) + 1
            if self.path == "/stall":
                time.sleep(3)  # longer than the client's timeout
                return self._send(200, b"too late")
            if self.path == "/flaky.txt" and hits[self.path] == 1:
                return self._send(503, b"try again")
            if self.path.startswith("/cut") and (
                self.path == "/cut-always.txt" or hits[self.path] == 1
            ):
                return self._send(200, files["/timemachine.txt"], cut=True)  # connection drops
            if self.path.startswith("/cut"):
                return self._send(200, files["/timemachine.txt"])
            body = files.get("/timemachine.txt" if self.path == "/flaky.txt" else self.path)
            if self.path == "/page.html":
                return self._send(200, HTML_PAGE, "text/html")
            if body is None:
                return self._send(404, b"not found")
            return self._send(200, body)

        def _send(self, code: int, body: bytes, ctype: str = "text/plain", cut=False) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError):  # the client may have timed out
                self.wfile.write(body[: len(body) // 2] if cut else body)
            if cut:
                self.close_connection = True

    return Handler


@contextmanager
def serve(files: dict[str, bytes]) -> Iterator[tuple[str, dict[str, int]]]:
    hits: dict[str, int] = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(files, hits))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()
