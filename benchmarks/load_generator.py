"""The load generator of benchmarks/load.py, run as its own process so it competes with the orchestrator
for nothing: N keep-alive HTTP clients (aiohttp, one event loop, one connection per client) posting
hook bodies for a warm-up and then a measured time, or a fixed number of requests.

Reads a JSON spec on stdin, writes a JSON result on stdout:
  spec:   url, bodies (file paths, sent in turn), clients, warmup_s, duration_s, max_requests (or null),
          placeholder (a hookInstance uuid in the bodies, replaced per request so every call is its own)
  result: requests, errors {kind: count}, error_samples, latencies_ms (measured window only),
          server_timing {stage: [ms, ...]}, elapsed_s, cpu_pct (this process, % of one core)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import aiohttp

HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class Run:
    def __init__(self, spec: dict):
        self.url = spec["url"]
        self.bodies = [Path(path).read_bytes() for path in spec["bodies"]]
        self.placeholder = spec.get("placeholder", "").encode()
        self.clients = spec["clients"]
        self.warmup_s = spec.get("warmup_s", 0.0)
        self.duration_s = spec.get("duration_s")
        self.max_requests = spec.get("max_requests")
        self.issued = 0
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.server_timing: dict[str, list[float]] = {}
        self.measure_start = self.measure_end = 0.0

    def _next_body(self) -> bytes | None:
        if self.max_requests is not None and self.issued >= self.max_requests:
            return None
        body = self.bodies[self.issued % len(self.bodies)]
        self.issued += 1
        if self.placeholder:  # same length: the replacement costs a copy, no re-encoding
            body = body.replace(self.placeholder, str(uuid.uuid4()).encode(), 1)
        return body

    def _error(self, kind: str, sample: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{kind}: {sample[:300]}")

    async def client(self) -> None:
        connector = aiohttp.TCPConnector(limit=1)  # one keep-alive connection per client
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=HEADERS) as session:
            while self.measure_end == 0.0 or time.perf_counter() < self.measure_end:
                body = self._next_body()
                if body is None:
                    return
                start = time.perf_counter()
                status, text, timing = None, "", None
                try:
                    async with session.post(self.url, data=body) as response:
                        payload = await response.read()
                        status, timing = response.status, response.headers.get("Server-Timing")
                        if status != 200:
                            text = payload.decode("utf-8", "replace")
                except (TimeoutError, aiohttp.ClientError) as exc:
                    text = f"{type(exc).__name__}: {exc}"
                end = time.perf_counter()
                if start < self.measure_start or (self.measure_end and end > self.measure_end):
                    continue  # warm-up, or finished after the window closed
                if status != 200:
                    self._error(f"HTTP {status}" if status else text.split(":", 1)[0], text)
                    continue
                self.latencies.append((end - start) * 1000)
                for stage, ms in parse_server_timing(timing):
                    self.server_timing.setdefault(stage, []).append(ms)

    async def run(self) -> dict:
        now = time.perf_counter()
        self.measure_start = now + self.warmup_s
        if self.duration_s is not None:
            self.measure_end = self.measure_start + self.duration_s
        tasks = [asyncio.create_task(self.client()) for _ in range(self.clients)]
        await asyncio.sleep(max(0.0, self.measure_start - time.perf_counter()))
        cpu_start = time.process_time()
        await asyncio.gather(*tasks)
        finished = time.perf_counter()
        cpu = time.process_time() - cpu_start
        window = (self.measure_end or finished) - self.measure_start
        return {
            "requests": len(self.latencies) + sum(self.errors.values()),
            "ok": len(self.latencies),
            "errors": self.errors,
            "error_samples": self.error_samples,
            "latencies_ms": self.latencies,
            "server_timing": self.server_timing,
            "elapsed_s": window,
            "cpu_pct": 100 * cpu / max(finished - self.measure_start, 1e-9),  # of one core
        }


def parse_server_timing(header: str | None) -> list[tuple[str, float]]:
    """``parse;dur=0.3, prefetch;dur=12.5`` -> [("parse", 0.3), ("prefetch", 12.5)]."""
    out = []
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur" and name:
                try:
                    out.append((name, float(value)))
                except ValueError:
                    pass
    return out


def main() -> None:
    spec = json.load(sys.stdin)
    json.dump(asyncio.run(Run(spec).run()), sys.stdout)


if __name__ == "__main__":
    main()
