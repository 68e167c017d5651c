"""Run the reference server and its registry service as processes.

    python -m refserver.serve --config server.json [--host 127.0.0.1] [--port 8000]
                              [--registry-port 0] [--db PATH] [--data-dir DIR]

The registry runs as a child process; the server runs in this one (uvicorn).
SIGINT or SIGTERM stops the server gracefully (in-flight requests finish, the
database writer drains and closes), then the registry.  The keyed-hash secret
is kept in ``DATA_DIR/secret`` (created once, mode 0600) so that a restarted
server still recognises earlier registrations; in test mode the reset token is
written to ``DATA_DIR/reset-token``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["main", "free_port", "wait_ready", "started", "scrape", "stop"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200 (or fail, also when ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with code {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback readiness probe
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout:g}s")
        time.sleep(0.05)


def serve_cmd(config: str | Path, port: int | str, data_dir: str | Path, *extra: str) -> list[str]:
    """The command that runs the reference server (and its registry) with a configuration file."""
    return [sys.executable, "-m", "refserver.serve", "--config", str(config), "--port", str(port), "--data-dir", str(data_dir), *extra]


@contextlib.contextmanager
def started(config: dict[str, Any], data_dir: Path, cpu: int | None = None, registry_cpu: int | None = None) -> Iterator[str]:
    """Run a fresh server (and registry) with ``config`` in ``data_dir``; yield its URL; always stop it.

    ``cpu`` pins the server to one CPU (Linux), so that it does not compete with
    the load generator; ``registry_cpu`` puts the registry service, which plays
    a system outside the deployment, on another.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "server.json").write_text(json.dumps(config, indent=1))
    port_file = data_dir / "port"
    port_file.unlink(missing_ok=True)
    # port 0: the server binds a free port itself and names it in DATA_DIR/port.  A port chosen here and bound
    # there could be taken in between, and the readiness probe could then be answered by another process.
    cmd = serve_cmd(data_dir / "server.json", 0, data_dir)
    if registry_cpu is not None:
        cmd += ["--registry-cpu", str(registry_cpu)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    # its own session (a terminal's Ctrl-C reaches the caller only), and stopped with the caller even if that is killed
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent)
    try:
        url = f"http://127.0.0.1:{read_port(port_file, proc)}"
        wait_ready(f"{url}/healthz", proc=proc)
        yield url
    finally:
        stop(proc, 30.0, group=True)


def listening(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (0: a free port, see ``getsockname``)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


# Listening sockets sharing the server's port (SO_REUSEPORT; the kernel spreads new connections over them).  The event
# loop (uvloop's libuv) accepts one connection per listening socket per turn of the loop: with one socket, a saturated
# server (turns of 60 ms) took in about 16 connections a second, and the rest waited in the kernel's accept queue
# (1,400 deep, many seconds) before the server's own admission control ever saw them (docs/validation.md).
LISTENERS = 16


def listeners(host: str, port: int, count: int = LISTENERS) -> list[socket.socket]:
    """``count`` listening sockets on ``host``:``port`` (0: a free port), sharing it (one where SO_REUSEPORT is missing).

    A plain socket is bound first, so that a port another process holds fails
    here as it would without sharing; the shared ones then take its place.
    """
    first = listening(host, port)
    if count <= 1 or not hasattr(socket, "SO_REUSEPORT"):
        return [first]
    port = first.getsockname()[1]
    first.close()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def write_port(path: Path, port: int) -> None:
    """Name the port bound, all at once (a reader never sees half a number)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(port))
    tmp.replace(path)


def read_port(path: Path, proc: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """The port a process started with ``--port 0`` bound, once it names it in ``path``."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before it bound a port")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no port named in {path} after {timeout:g}s")
        time.sleep(0.02)
    return int(path.read_text())


def stop(proc: subprocess.Popen[bytes], timeout: float, group: bool = False) -> None:
    """SIGTERM, then SIGKILL (to its whole session with ``group``) if it has not exited within ``timeout``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()


def scrape(url: str, timeout: float = 5.0) -> str:
    """The text of ``url``/metrics."""
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=timeout) as r:  # noqa: S310 - the caller's own target
        return str(r.read().decode("utf-8", "replace"))


def speed_log(url: str, timeout: float = 5.0) -> dict[str, Any] | None:
    """The server's speed log (``url``/metrics/speed), or None when it keeps none (an older server, or not the reference
    server) or answers nothing readable."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/metrics/speed", timeout=timeout) as r:  # noqa: S310 - the caller's own target
            found = json.loads(r.read(50_000_000))
    except (OSError, ValueError):
        return None
    if not isinstance(found, dict) or not isinstance(found.get("work"), list) or not isinstance(found.get("bucket"), (int, float)):
        return None
    return found


def die_with_parent() -> None:
    """In the child: receive SIGTERM when the parent dies, even by SIGKILL (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Seconds an idle client connection is kept open.  uvicorn's default of 5 s makes
# an open-model client, whose pooled connections sit idle between surges, race the
# server's close: a request sent on a connection the server is closing comes back
# "connection closed".  60 s is in the range of common proxies' idle timeouts.
KEEP_ALIVE = 60


def _secret(data_dir: Path) -> bytes:
    path = data_dir / "secret"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def run_registry(config_path: str, host: str, port: int, port_file: Path | None) -> None:
    import uvicorn

    from refserver.config import ServerConfig
    from refserver.registry import create_registry_app

    cfg = ServerConfig.load(config_path)
    sock = listening(host, port)
    if port_file is not None:
        write_port(port_file, sock.getsockname()[1])
    uvicorn.Server(uvicorn.Config(create_registry_app(cfg.registry, cfg.seed), log_level="warning", access_log=False)).run(sockets=[sock])


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="refserver.serve", description="Run the reference registration server and its registry.")
    ap.add_argument("--config", required=True, help="server configuration (JSON)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000, help="0: a free port (printed, and named in --port-file)")
    ap.add_argument("--port-file", default=None, help="write the port bound here once listening (default DATA_DIR/port)")
    ap.add_argument("--registry-port", type=int, default=0, help="0: any free port")
    ap.add_argument("--db", default=None, help="SQLite file (default DATA_DIR/refserver.sqlite)")
    ap.add_argument("--data-dir", default="refserver-data")
    ap.add_argument("--registry-cpu", type=int, default=None, help="pin the registry service to this CPU (Linux)")
    ap.add_argument("--registry-only", action="store_true", help=argparse.SUPPRESS)
    return ap


def _start_registry(config: str, host: str, port: int, port_file: Path, cpu: int | None) -> subprocess.Popen[bytes]:
    """The registry service as a process of its own (it plays an outside system), pinned to ``cpu`` when given."""
    port_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "refserver.serve", "--config", config, "--host", host, "--registry-port", str(port)]
    registry = subprocess.Popen(
        [*cmd, "--port-file", str(port_file), "--registry-only"], start_new_session=True, preexec_fn=die_with_parent
    )
    if cpu is not None:  # the registry plays an outside system: keep it off the server's CPU
        os.sched_setaffinity(registry.pid, {cpu})
    return registry


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.registry_only:
        run_registry(args.config, args.host, args.registry_port, Path(args.port_file) if args.port_file else None)
        return 0

    import uvicorn

    from refserver.app import create_app
    from refserver.config import ConfigError, ServerConfig
    from refserver.protocol import Limits, guarded

    try:
        cfg = ServerConfig.load(args.config)
    except (OSError, ValueError, ConfigError) as exc:
        print(f"refserver: {exc}", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    db_path = Path(args.db) if args.db else data_dir / "refserver.sqlite"
    try:
        socks = listeners(args.host, args.port)  # bound first: a taken port fails at once, with nothing started
    except (OSError, OverflowError) as exc:  # taken, not an address of this machine, or not a port number at all
        print(f"refserver: cannot listen on {args.host}:{args.port}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 2
    port_file = Path(args.port_file) if args.port_file else data_dir / "port"
    try:  # a port file that cannot be written fails now, before the registry is started
        probe = port_file.with_name(port_file.name + ".tmp")
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        for sock in socks:
            sock.close()
        print(f"refserver: cannot write the port file {port_file}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    os.umask(0o077)  # from here on, the database, its journal, the photos, the keys: readable by this user only
    reg_file = data_dir / "registry-port"
    registry = _start_registry(args.config, args.host, args.registry_port, reg_file, args.registry_cpu)
    # uvicorn re-raises SIGTERM after its graceful shutdown; with a Python-level
    # handler that re-raise ends in SystemExit, so the registry below is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        host = f"[{args.host}]" if ":" in args.host else args.host
        reg_port = read_port(reg_file, registry)
        wait_ready(f"http://{host}:{reg_port}/healthz", proc=registry)
        reset_token = None
        if cfg.test_mode:
            reset_token = secrets.token_urlsafe(16)
            (data_dir / "reset-token").write_text(reset_token)
        app = create_app(cfg, db_path, f"http://{host}:{reg_port}", _secret(data_dir), data_dir, reset_token=reset_token)
        port = socks[0].getsockname()[1]
        print(f"refserver: serving on http://{host}:{port} (registry on port {reg_port}, database {db_path})", flush=True)
        try:
            write_port(port_file, port)  # what --port 0 chose, for whoever started it
        except OSError as exc:
            print(f"refserver: cannot write the port file {port_file}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        limits = Limits.from_config(cfg.limits)
        config = uvicorn.Config(
            app, http=guarded(limits), log_level="warning", access_log=False, timeout_graceful_shutdown=10, timeout_keep_alive=KEEP_ALIVE
        )
        uvicorn.Server(config).run(sockets=socks)
    finally:
        stop(registry, 10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
