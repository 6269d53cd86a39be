"""A real redis-server on a free loopback port, in a temporary directory, without persistence."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MISSING = (
    "redis-server is not installed, so the Redis store tests did NOT run: "
    "install it with `apt-get install redis-server` (.ci/run does)"
)


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, *extra_args: str) -> None:
        binary = redis_server_path()
        if binary is None:
            raise RuntimeError(MISSING)
        self._dir = tempfile.TemporaryDirectory(prefix="attrgate-redis-")
        log = Path(self._dir.name) / "redis.log"
        for _attempt in range(3):  # another process may take the free port first
            self.port = free_port()
            settings = {
                "port": str(self.port),
                "bind": "127.0.0.1",
                "save": "",
                "appendonly": "no",
                "daemonize": "no",
                "dir": self._dir.name,
                "logfile": str(log),
            }
            command = [binary, *(x for k, v in settings.items() for x in (f"--{k}", v))]
            self._process = subprocess.Popen(
                [*command, *extra_args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 10
            while self._process.poll() is None and time.monotonic() < deadline:
                if answers_ping(self.port):
                    self.url = f"redis://127.0.0.1:{self.port}/0"
                    return
                time.sleep(0.02)
            self._stop_process()
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        self._dir.cleanup()
        raise RuntimeError(f"redis-server did not start:\n{tail}")

    def _stop_process(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        self._stop_process()
        self._dir.cleanup()
