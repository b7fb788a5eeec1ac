"""A stand-in vLLM fleet's metrics endpoint, run as its own process by tests:
`python tests/integration/vllm_fleet.py PORT DECODE_TPS PROMPT_TPS`.

Its counters follow the wall clock at fixed rates. Being a separate process, a busy test process
(GIL, flows running) can neither delay its answers nor make Prometheus miss scrapes.
"""

from __future__ import annotations

import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

START = time.time()
DECODE_TPS = float(sys.argv[2]) if len(sys.argv) > 2 else 3000.0
PROMPT_TPS = float(sys.argv[3]) if len(sys.argv) > 3 else 15000.0


class Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        t = time.time() - START
        body = (
            "# TYPE vllm:generation_tokens_total counter\n"
            f'vllm:generation_tokens_total{{service="chat",role="decode"}} {DECODE_TPS * t:.1f}\n'
            "# TYPE vllm:prompt_tokens_total counter\n"
            f'vllm:prompt_tokens_total{{service="chat",role="prefill"}} {PROMPT_TPS * t:.1f}\n'
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Metrics).serve_forever()
