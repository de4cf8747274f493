"""A real S3-API server on 127.0.0.1 for the tests (moto's server mode), counting the requests it receives.

The code under test talks HTTP to it as to any bucket: `AWS_ENDPOINT_URL` and the usual credential variables
point s3fs (and anything else that follows the standard configuration) at it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter

from moto.server import MotoRequestHandler, ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server


COUNTER = "/_shotcap/requests"  # GET: the counts so far; POST: start again from zero


class CountingServer(ThreadedMotoServer):
    """ThreadedMotoServer whose WSGI app counts every request by method (`requests`, `reset()`)."""

    def __init__(self):
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on the test's stderr
        self.requests: Counter = Counter()
        self.bytes_out = 0  # bytes of the responses' bodies (Content-Length)
        self._lock = threading.Lock()

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)

        def counting(environ, start_response):
            if environ.get("PATH_INFO") == COUNTER:  # another process asks for the count (or resets it)
                if environ["REQUEST_METHOD"] == "POST":
                    self.reset()
                body = json.dumps({"total": self.total, "bytes": self.bytes_out, **self.requests}).encode()
                start_response("200 OK", [("Content-Type", "application/json")])
                return [body]
            with self._lock:
                self.requests[environ["REQUEST_METHOD"]] += 1

            head = environ["REQUEST_METHOD"] == "HEAD"  # its Content-Length is the object's, with no body

            def counted(status, headers, *rest):
                size = 0 if head else next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
                with self._lock:
                    self.bytes_out += size
                return start_response(status, headers, *rest)

            return app(environ, counted)

        self._server = make_server(self._ip_address, self._port, counting, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_out = 0

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def url(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"


def environment(url: str) -> dict:
    """The standard variables that point an S3 client at the server (credentials are the server's dummies)."""
    return {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
