"""A webhook receiver on 127.0.0.1 for the alert tests, and the made-up UI addresses in links."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

EVIDENTLY_UI = "http://drift.hospital.example:8000"
PREFECT_UI = "http://prefect.hospital.example:4200"


class Receiver:
    """A webhook endpoint on 127.0.0.1 that keeps every JSON body it receives."""

    def __init__(self) -> None:
        self.messages: list[dict] = []
        received = self.messages

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alert"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, text: str, timeout: float = 45.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in list(self.messages):
                if text in json.dumps(message):
                    return message
            time.sleep(0.25)
        raise AssertionError(f"no alert containing {text!r} in {timeout} s: {self.messages}")

    def count(self, text: str) -> int:
        return sum(text in json.dumps(m) for m in list(self.messages))
