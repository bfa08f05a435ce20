"""An OpenAI-compatible chat-completions server on loopback, for the remote LLM backend's tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def serve_chat(answer: Callable[[dict], str], seen: list[dict] | None = None) -> ThreadingHTTPServer:
    """Answer each POSTed request with `answer(request)` as the message content; requests go to `seen`.
    Call `.shutdown()` when done; the URL is `url_of(server)`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if seen is not None:
                seen.append(request)
            body = json.dumps(
                {
                    "choices": [{"message": {"content": answer(request)}}],
                    "usage": {"prompt_tokens": 12, "completion_tokens": 5},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"
