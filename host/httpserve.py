"""`mpota serve`: the files of one folder over HTTP/1.1 with Range, for boards that pull images.

    server = make_server(folder, host="127.0.0.1", port=8080, on_request=None)
    server.serve_forever()          # a thread per connection (ThreadingHTTPServer)

Built on the standard library's http.server (SimpleHTTPRequestHandler, whose
translate_path keeps every request inside the folder). What it adds:
- `Range: bytes=A-B`, `bytes=A-` and `bytes=-N` (one range): 206 Partial Content
  with Content-Range; a range that starts at or past the end: 416 with
  `Content-Range: bytes */SIZE`. A Range that is not one well-formed byte range
  (several ranges, another unit, garbage) is ignored and the whole file sent
  (200), as RFC 9110 lets a server do; so is a Range under an If-Range that does
  not name this file's ETag.
- HEAD answers the same headers without the body.
- No directory listings (404): only a file's exact name is served.
- on_request(method, path, status, sent_bytes, seconds) for each request (the CLI's log,
  the benches' download rates).
Any other web server with Range (nginx, a bucket, a CDN) serves the same folder.
"""
from __future__ import annotations

import email.utils
import os
import re
import time
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
CHUNK = 64 * 1024


def parse_range(header: Optional[str], size: int):
    """-> None (serve it whole), (start, end) inclusive, or "unsatisfiable"."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # not one byte range: ignored
    a, b = m.group(1), m.group(2)
    if not a:  # the last N bytes
        n = int(b)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(a)
    if b and int(b) < start:
        return None  # invalid: ignored
    if start >= size:
        return "unsatisfiable"
    end = int(b) if b else size - 1
    return start, min(end, size - 1)


class RangeHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive: a board may pull several ranges on one connection
    server_version = "mpota-serve"
    on_request: Optional[Callable] = None

    def list_directory(self, path):
        self.send_error(HTTPStatus.NOT_FOUND, "no listing")
        return None

    def etag(self, st) -> str:
        return '"%x-%x"' % (st.st_mtime_ns, st.st_size)

    def send_head(self):
        self._left = None
        self._status = 0
        path = self.translate_path(self.path)
        if os.path.isdir(path) or self.path.endswith("/"):
            self.send_error(HTTPStatus.NOT_FOUND, "no listing")
            return None
        try:
            f = open(path, "rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        try:
            st = os.fstat(f.fileno())
            size = st.st_size
            etag = self.etag(st)
            rng = parse_range(self.headers.get("Range"), size)
            if_range = self.headers.get("If-Range")
            if rng is not None and if_range is not None and if_range.strip() != etag:
                rng = None  # the client's copy is another version of the file: send it whole
            if rng == "unsatisfiable":
                f.close()
                self._status = 416
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if rng is None:
                self._status = 200
                self.send_response(HTTPStatus.OK)
                start, length = 0, size
            else:
                start, end = rng
                length = end - start + 1
                self._status = 206
                self.send_response(HTTPStatus.PARTIAL_CONTENT)
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", etag)
            self.send_header("Last-Modified", email.utils.formatdate(st.st_mtime, usegmt=True))
            self.end_headers()
            f.seek(start)
            self._left = length
            return f
        except BaseException:
            f.close()
            raise

    def copyfile(self, source, outputfile):
        left = self._left
        sent = 0
        while left:
            buf = source.read(min(CHUNK, left))
            if not buf:
                break
            outputfile.write(buf)
            left -= len(buf)
            sent += len(buf)
        self._sent = sent

    def send_error(self, code, message=None, explain=None):
        self._status = int(code)
        super().send_error(code, message, explain)

    def log_request(self, code="-", size="-"):
        pass  # logged once the body is sent (handle_one_request below)

    def log_message(self, format, *args):
        pass  # stderr stays quiet: on_request reports each request

    def handle_one_request(self):
        self._sent = 0
        self._status = 0
        self.command = None
        super().handle_one_request()
        if self.command and self.on_request is not None:
            self.on_request(self.command, self.path, self._status, self._sent, time.monotonic() - self._t0)

    def parse_request(self):
        self._t0 = time.monotonic()  # the request line is in: a keep-alive connection's idle wait is not counted
        return super().parse_request()


def make_server(folder, host: str = "127.0.0.1", port: int = 8080,
                on_request: Optional[Callable] = None) -> ThreadingHTTPServer:
    """A server of `folder` bound to host:port (port 0: a free one; server.server_port)."""
    handler = type("Handler", (RangeHandler,), {"on_request": staticmethod(on_request) if on_request else None})
    server = ThreadingHTTPServer((host, port), partial(handler, directory=str(folder)))
    server.daemon_threads = True
    return server
