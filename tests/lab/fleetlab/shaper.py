"""Link shaper: a TCP proxy the lab puts in front of a device's telnet/adb port.

    python -m fleetlab.shaper --listen ADDR:PORT --to ADDR:PORT [--latency-ms N] [--rate-kbit N]
        [--cut-after-bytes N] [--stats-file PATH]

- latency: every byte is delivered N ms after it was read, in each direction (one-way delay; throughput is not
  throttled by it, as on a long link).
- rate: a token bucket per direction, shared by all connections through this proxy (the link's capacity).
- cut: a connection is aborted (RST) once N bytes, both directions together, have passed through it; the
  byte that reaches N is the last one delivered.
Counts bytes each way; prints the totals as JSON on exit and keeps --stats-file current.

No maintained package fits: toxiproxy is not in Debian and its PyPI client needs the Go server binary, and
tc/netem would change interfaces the lab may not own. So this stays a small asyncio program.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 16384


class TokenBucket:
    """Bytes-per-second limiter; burst of 1/20 s worth of tokens (at least one chunk) keeps the cap tight."""

    def __init__(self, rate_kbit: int) -> None:
        self.rate = rate_kbit * 1000 / 8  # bytes per second
        self.capacity = max(self.rate / 20, 512.0)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    def max_chunk(self) -> int:
        return int(max(1, min(CHUNK, self.capacity)))

    async def take(self, n: int) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


@dataclass
class Stats:
    """Totals over the proxy's life."""

    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client
    connections: int = 0
    cuts: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "connections": self.connections,
            "cuts": self.cuts,
            "errors": self.errors[-10:],
        }


@dataclass
class ShaperConfig:
    listen_host: str
    listen_port: int
    target_host: str
    target_port: int
    latency_ms: int = 0
    rate_kbit: int = 0
    cut_after_bytes: int = 0
    stats_file: Path | None = None


class Shaper:
    """The proxy. `await start()` binds; `port` is the bound port (useful with port 0); `await stop()` ends it."""

    def __init__(self, config: ShaperConfig) -> None:
        self.config = config
        self.stats = Stats()
        self._buckets = {
            "up": TokenBucket(config.rate_kbit) if config.rate_kbit > 0 else None,
            "down": TokenBucket(config.rate_kbit) if config.rate_kbit > 0 else None,
        }
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.config.listen_host, self.config.listen_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        self.write_stats()

    def write_stats(self) -> None:
        if self.config.stats_file is not None:
            tmp = self.config.stats_file.with_name(self.config.stats_file.name + ".tmp")
            tmp.write_text(json.dumps(self.stats.as_dict(), sort_keys=True) + "\n")
            tmp.replace(self.config.stats_file)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self.stats.connections += 1
        try:
            target_r, target_w = await asyncio.open_connection(self.config.target_host, self.config.target_port)
        except OSError as exc:
            self.stats.errors.append(f"connect {self.config.target_host}:{self.config.target_port}: {exc}")
            client_w.transport.abort()
            self._conns.discard(task)
            return
        conn = _Connection(self, client_w, target_w)
        try:
            await asyncio.gather(
                conn.pump(client_r, target_w, "up"),
                conn.pump(target_r, client_w, "down"),
            )
        except asyncio.CancelledError:
            conn.abort()
        finally:
            conn.close()
            self._conns.discard(task)
            self.write_stats()


class _Connection:
    """One proxied connection: two pumps sharing the cut-after-bytes budget."""

    def __init__(self, shaper: Shaper, client_w: asyncio.StreamWriter, target_w: asyncio.StreamWriter) -> None:
        self.shaper = shaper
        self.writers = (client_w, target_w)
        self.passed = 0
        self.cut = False

    def abort(self) -> None:
        for w in self.writers:
            w.transport.abort()

    def close(self) -> None:
        for w in self.writers:
            if not w.transport.is_closing():
                w.close()

    def _budget(self, n: int) -> int:
        """How many of n bytes may still pass before the cut."""
        limit = self.shaper.config.cut_after_bytes
        if limit <= 0:
            return n
        return max(0, min(n, limit - self.passed))

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        bucket = self.shaper._buckets[direction]
        latency = self.shaper.config.latency_ms / 1000
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, writer, direction))
        try:
            while not self.cut:
                size = bucket.max_chunk() if bucket else CHUNK
                try:
                    data = await reader.read(size)
                except (ConnectionError, OSError):
                    data = b""
                if not data:
                    break
                allowed = self._budget(len(data))
                data = data[:allowed]
                self.passed += len(data)
                if bucket and data:
                    await bucket.take(len(data))
                if data:
                    await queue.put((time.monotonic() + latency, data))
                if self.shaper.config.cut_after_bytes > 0 and self.passed >= self.shaper.config.cut_after_bytes:
                    self.cut = True
        finally:
            await queue.put(None)
            await deliver

    async def _deliver(
        self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter, direction: str
    ) -> None:
        while True:
            item = await queue.get()
            if item is None:
                break
            due, data = item
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                break
            if direction == "up":
                self.shaper.stats.bytes_up += len(data)
            else:
                self.shaper.stats.bytes_down += len(data)
        if self.cut:
            if not any(w.transport.is_closing() for w in self.writers):
                self.shaper.stats.cuts += 1
            # A cut is a dead link, not a polite close: both ends see a reset.
            self.abort()
        else:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()


def run_in_thread(config: ShaperConfig) -> tuple[Shaper, threading.Event]:
    """Start a shaper on its own event loop thread (for tests). Set the returned event to stop it."""
    ready = threading.Event()
    stop = threading.Event()
    holder: dict[str, Shaper] = {}

    def runner() -> None:
        async def main() -> None:
            shaper = Shaper(config)
            await shaper.start()
            holder["shaper"] = shaper
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await shaper.stop()

        asyncio.run(main())

    threading.Thread(target=runner, name="fleetlab-shaper", daemon=True).start()
    if not ready.wait(10):
        raise RuntimeError("shaper did not start")
    return holder["shaper"], stop


def _addr(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected ADDR:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetlab.shaper", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, type=_addr, help="ADDR:PORT to accept connections on")
    parser.add_argument("--to", required=True, type=_addr, help="ADDR:PORT to forward to")
    parser.add_argument("--latency-ms", type=int, default=0, help="one-way delay added in each direction")
    parser.add_argument("--rate-kbit", type=int, default=0, help="cap per direction in kbit/s (0: none)")
    parser.add_argument("--cut-after-bytes", type=int, default=0, help="abort a connection after N bytes (0: never)")
    parser.add_argument("--stats-file", type=Path, help="JSON byte counts, kept current")
    args = parser.parse_args(argv)
    config = ShaperConfig(
        listen_host=args.listen[0],
        listen_port=args.listen[1],
        target_host=args.to[0],
        target_port=args.to[1],
        latency_ms=args.latency_ms,
        rate_kbit=args.rate_kbit,
        cut_after_bytes=args.cut_after_bytes,
        stats_file=args.stats_file,
    )

    async def run() -> Shaper:
        shaper = Shaper(config)
        await shaper.start()
        print(f"shaper: {args.listen[0]}:{shaper.port} -> {args.to[0]}:{args.to[1]}", file=sys.stderr, flush=True)
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        await shaper.stop()
        return shaper

    shaper = asyncio.run(run())
    print(json.dumps(shaper.stats.as_dict(), sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
