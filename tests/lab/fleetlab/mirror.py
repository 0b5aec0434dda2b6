"""The lab's release mirror: serves release tarballs with the pkgs.tailscale.com layout and counts requests.

    python -m fleetlab.mirror --dir DIR --listen 198.18.0.1:8080 [--build] [--stats-file PATH]

Serves DIR/<track>/<file> as /<track>/<file>, and /<track>/?mode=json (any os=) from DIR/<track>/index.json
(written by fleetlab.tailscale_release, which builds the real releases the lab serves).
GET /_fleetlab/stats returns the request counts per path as JSON and
POST /_fleetlab/stats/reset zeroes them, so tests can assert "no download on the second run".
"""

from __future__ import annotations

import argparse
import contextlib
import html
import json
import signal
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from urllib.parse import parse_qs, unquote, urlsplit

STATS_PATH = "/_fleetlab/stats"
TRACKS = ("stable", "unstable")
LAB_LISTEN = ("198.18.0.1", 8080)


class Stats:
    """Thread-safe request counters: per path (query dropped) and per full target."""

    def __init__(self, stats_file: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._stats_file = stats_file
        self.paths: dict[str, int] = {}
        self.targets: dict[str, int] = {}
        self.bytes_sent = 0

    def count(self, path: str, target: str, sent: int) -> None:
        with self._lock:
            self.paths[path] = self.paths.get(path, 0) + 1
            self.targets[target] = self.targets.get(target, 0) + 1
            self.bytes_sent += sent
            snapshot = self._snapshot_locked()
        if self._stats_file is not None:
            tmp = self._stats_file.with_name(self._stats_file.name + ".tmp")
            tmp.write_text(json.dumps(snapshot, indent=2, sort_keys=True) + "\n")
            tmp.replace(self._stats_file)

    def reset(self) -> None:
        with self._lock:
            self.paths.clear()
            self.targets.clear()
            self.bytes_sent = 0

    def _snapshot_locked(self) -> dict[str, object]:
        return {"paths": dict(self.paths), "targets": dict(self.targets), "bytes_sent": self.bytes_sent}

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return self._snapshot_locked()


class MirrorHandler(BaseHTTPRequestHandler):
    """pkgs.tailscale.com-shaped file server over one directory."""

    server: MirrorServer
    server_version = "fleetlab-mirror/1 (lab mirror, not pkgs.tailscale.com)"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - signature fixed by the base class
        if not self.server.quiet:
            sys.stderr.write(f"mirror: {self.address_string()} {format % args}\n")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, count: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = 0 if self.command == "HEAD" else len(body)
        if count:
            # Counted before the body goes out: a client that has read the response and then asks for the stats
            # finds its request there (counting after the write raced with that, seen in make test).
            parts = urlsplit(self.path)
            self.server.stats.count(unquote(parts.path), self.path, sent)
        if sent:
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_POST(self) -> None:
        if urlsplit(self.path).path == f"{STATS_PATH}/reset":
            self.server.stats.reset()
            self._send(HTTPStatus.OK, b'{"reset": true}\n', "application/json", count=False)
            return
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", "text/plain", count=False)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        if path == STATS_PATH:
            body = json.dumps(self.server.stats.snapshot(), indent=2, sort_keys=True).encode() + b"\n"
            self._send(HTTPStatus.OK, body, "application/json", count=False)
            return
        segments = [s for s in path.split("/") if s]
        if not segments or segments[0] not in TRACKS or any(s in (".", "..") for s in segments) or len(segments) > 2:
            self._send(HTTPStatus.NOT_FOUND, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        track_dir = self.server.root / segments[0]
        if len(segments) == 1:
            self._track_index(track_dir, parse_qs(parts.query), path)
            return
        target = track_dir / segments[1]
        if segments[1] == "index.json" or not target.is_file():
            self._send(HTTPStatus.NOT_FOUND, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        content_type = "application/x-gzip" if target.suffix == ".tgz" else "text/plain; charset=utf-8"
        self._send(HTTPStatus.OK, target.read_bytes(), content_type)

    def _track_index(self, track_dir: Path, query: dict[str, list[str]], path: str) -> None:
        if not path.endswith("/"):
            # pkgs.tailscale.com redirects /stable to /stable/; clients following redirects land on the index.
            self.server.stats.count(path, self.path, 0)  # before the answer, as in _send
            self.send_response(HTTPStatus.MOVED_PERMANENTLY)
            self.send_header("Location", path + "/" + (f"?{urlsplit(self.path).query}" if "?" in self.path else ""))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        index = track_dir / "index.json"
        if not index.is_file():
            self._send(HTTPStatus.NOT_FOUND, b"404 page not found\n", "text/plain; charset=utf-8")
            return
        if query.get("mode") == ["json"]:
            self._send(HTTPStatus.OK, index.read_bytes(), "application/json")
            return
        names = sorted(p.name for p in track_dir.iterdir() if p.is_file() and p.name != "index.json")
        links = "\n".join(f'<a href="{html.escape(n)}">{html.escape(n)}</a><br>' for n in names)
        body = f"<html><body><h1>fleetlab mirror (not pkgs.tailscale.com)</h1>\n{links}\n</body></html>\n"
        self._send(HTTPStatus.OK, body.encode(), "text/html; charset=utf-8")


class MirrorServer(ThreadingHTTPServer):
    """The mirror; `serve_in_thread` is the in-process entry point for tests and the lab."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: Path, address: tuple[str, int], stats_file: Path | None = None, quiet: bool = False):
        self.root = root
        self.stats = Stats(stats_file)
        self.quiet = quiet
        super().__init__(address, MirrorHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def serve_in_thread(root: Path, host: str = "127.0.0.1", port: int = 0, quiet: bool = True) -> MirrorServer:
    """Start a mirror on a background thread; stop it with server.shutdown(); server.server_close()."""
    server = MirrorServer(root, (host, port), quiet=quiet)
    threading.Thread(target=server.serve_forever, name="fleetlab-mirror", daemon=True).start()
    return server


# --- the lab's mirror process (`fleetlab mirror start|stop` calls these) -----------------------------------------


def _lab_paths() -> tuple[Path, Path, Path, Path]:
    from fleetlab.state import RUN_DIR
    from fleetlab.tailscale_release import RELEASES_DIR

    return RELEASES_DIR, RUN_DIR / "mirror.json", RUN_DIR / "mirror-stats.json", RUN_DIR / "mirror.log"


def start(versions: list[str] | None = None, arches: list[str] | None = None) -> str:
    """Build the real releases (fleetlab.tailscale_release, cached) and serve them on 198.18.0.1:8080; returns the URL.

    The process is recorded in /run/fleetlab/mirror.json as pid + kernel start time; `stop()` kills exactly it.
    """
    import os
    import subprocess
    import time

    from fleetlab import tailscale_release
    from fleetlab.state import LabError, ProcRef

    root, pidfile, stats_file, log = _lab_paths()
    url = f"http://{LAB_LISTEN[0]}:{LAB_LISTEN[1]}"
    if pidfile.exists() and ProcRef(**json.loads(pidfile.read_text())).alive():
        return url
    tailscale_release.build(root, versions, arches)
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetlab.mirror",
                "--dir",
                str(root),
                "--listen",
                f"{LAB_LISTEN[0]}:{LAB_LISTEN[1]}",
                "--stats-file",
                str(stats_file),
                "--quiet",
            ],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=os.environ.copy(),
        )
    ref = ProcRef.of(proc.pid)
    pidfile.write_text(json.dumps({"pid": ref.pid, "starttime": ref.starttime}) + "\n")
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"mirror exited with {proc.returncode}; see {log}")
        with contextlib.suppress(OSError), socket.create_connection(LAB_LISTEN, timeout=0.5):
            return url
        time.sleep(0.05)
    raise LabError(f"mirror did not listen on {url} within 10 s; see {log}")


def status() -> str | None:
    """The mirror's URL if the process recorded in /run/fleetlab/mirror.json is alive, else None.

    Answered from the lab's record (pid + kernel start time), never by connecting: before the lab's bridge exists,
    198.18.0.1 is not this machine's and a connection would leave by the default route.
    """
    from fleetlab.state import ProcRef

    _root, pidfile, _stats, _log = _lab_paths()
    try:
        ref = ProcRef(**json.loads(pidfile.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return f"http://{LAB_LISTEN[0]}:{LAB_LISTEN[1]}" if ref.alive() else None


def stop() -> None:
    """Stop the mirror `start()` made (by recorded pid and start time). Idempotent."""
    import os
    import time

    from fleetlab.state import ProcRef

    _root, pidfile, stats_file, _log = _lab_paths()
    stats_file.unlink(missing_ok=True)
    if not pidfile.exists():
        return
    ref = ProcRef(**json.loads(pidfile.read_text()))
    if ref.alive():
        os.kill(ref.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while ref.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if ref.alive():
            os.kill(ref.pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected ADDR:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetlab.mirror", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path, help="mirror root (contains stable/ and unstable/)")
    parser.add_argument("--listen", default="198.18.0.1:8080", type=parse_listen, help="ADDR:PORT")
    parser.add_argument("--stats-file", type=Path, help="also write the request counts here after each request")
    parser.add_argument("--build", action="store_true", help="build the lab's real releases into --dir first")
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)
    if args.build:
        from fleetlab import tailscale_release

        tailscale_release.build(args.dir)
    server = MirrorServer(args.dir, args.listen, stats_file=args.stats_file, quiet=args.quiet)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() blocks until serve_forever returns, so it must run off the serving thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"mirror: serving {args.dir} on {server.url}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
