"""A real HTTP server on loopback speaking the OpenAI chat-completions protocol, with scripted replies.

    with ChatServer(reply) as server:          # reply(body: dict) -> str
        server.url                             # http://127.0.0.1:PORT/v1
Failures can be injected for the first requests: server.failures = ["500", "timeout", "malformed", "empty", ...]
("empty": a well-formed reply whose message content is "" or only whitespace).
It records every request body and the most requests it saw in flight at once. Replies that stall
wait on `server.closed` (a threading.Event set on exit), so leaving the block ends every handler
thread: none outlives its test to run in the middle of another.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ChatServer:
    def __init__(self, reply, delay: float = 0.0, timeout_sleep: float = 2.0):
        self.reply, self.delay, self.timeout_sleep = reply, delay, timeout_sleep
        self.failures: list[str] = []
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.closed = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(body)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    failure = server.failures.pop(0) if server.failures else None
                try:
                    time.sleep(server.delay)
                    if failure == "500":
                        return self._send(500, b'{"error": {"message": "injected"}}')
                    if failure == "timeout":  # the client gives up on it: not in flight for it any more
                        with server.lock:
                            server.in_flight -= 1
                        server.closed.wait(server.timeout_sleep)
                        with server.lock:
                            server.in_flight += 1
                    if failure == "malformed":
                        return self._send(200, b'{"choices": [{"message": ')
                    text = " \n" if failure == "empty" else server.reply(body)
                    payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
                    self._send(200, json.dumps(payload).encode())
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _send(self, status, data):
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout): nothing to send

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = False  # server_close joins the handler threads
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.closed.set()  # stalled replies return now
        self.httpd.shutdown()
        self.httpd.server_close()  # joins every handler thread
