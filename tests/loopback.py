"""A file server on the loopback interface, standing in for a download host in the tests."""

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Files(BaseHTTPRequestHandler):
    "Serve `server.files[path]`; under `/cut/`, half of the file, then a closed connection."

    def do_GET(self):
        self.server.requests.append(self.path)
        body = self.server.files.get(self.path.removeprefix("/cut"))
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if self.path.startswith("/cut/") else body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(files: dict):
    "A loopback server of `files` ({path: bytes}) for the block: `.url`, `.requests` (paths)."
    server = ThreadingHTTPServer(("127.0.0.1", 0), Files)
    server.files, server.requests = files, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
