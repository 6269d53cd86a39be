"""A real redis-server on a free loopback port, in a temporary directory, without persistence;
and a real three-node Redis Cluster (cluster-enabled servers joined by `redis-cli --cluster
create`)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

MISSING = (
    "redis-server is not installed, so the Redis store tests cannot run: "
    "install it with `apt-get install redis-server` (.ci/run does)"
)
CLUSTER_NODES = 3


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


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _attempt in range(50):
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisServer:
    def __init__(self, *extra_args: str, cluster: bool = False) -> None:
        binary = redis_server_path()
        if binary is None:
            raise RuntimeError(MISSING)
        self._dir = tempfile.TemporaryDirectory(prefix="attrgate-redis-")
        log = Path(self._dir.name) / "redis.log"
        if cluster:
            extra_args = (*extra_args, "--cluster-enabled", "yes", "--cluster-node-timeout", "5000")
        for _attempt in range(3):  # another process may take the free port first
            self.port = free_cluster_port() if cluster else free_port()
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
            self._command = [*command, *extra_args]
            self._process = subprocess.Popen(
                self._command,
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

    def pause(self) -> None:
        """SIGSTOP: connections stay open and accepted, nothing answers (a hung Redis)."""
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._process.pid, signal.SIGCONT)

    def _stop_process(self) -> None:
        if self._process.poll() is None:
            self.resume()  # a paused server would not act on SIGTERM
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def stop(self) -> None:
        self._stop_process()
        self._dir.cleanup()

    def kill(self) -> None:
        """SIGKILL: gone at once, connections reset (a crashed Redis). `restart` brings it back."""
        self._process.kill()
        self._process.wait(timeout=10)

    def restart(self, seconds: float = 10) -> None:
        """The same server again on the same port (empty: no persistence here)."""
        self._process = subprocess.Popen(
            self._command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + seconds
        while not answers_ping(self.port):
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not come back on port {self.port}")
            time.sleep(0.02)


class RedisClusterServers:
    """CLUSTER_NODES cluster-enabled redis-servers, every slot assigned (no replicas)."""

    def __init__(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (it comes with redis-server)")
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(CLUSTER_NODES):
                self.nodes.append(RedisServer(cluster=True))
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            no_replicas = ("--cluster-replicas", "0", "--cluster-yes")
            created = subprocess.run(
                [cli, "--cluster", "create", *addresses, *no_replicas],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout[-2000:]}")
            self._wait_ok(cli, addresses)
        except BaseException:
            self.stop()
            raise
        self.url = self.nodes[0].url.removesuffix("/0")

    @staticmethod
    def _wait_ok(cli: str, addresses: Sequence[str], seconds: float = 30) -> None:
        """Every node agrees the cluster is up (slots assigned, nodes known)."""
        deadline = time.monotonic() + seconds
        for address in addresses:
            host, port = address.split(":")
            while True:
                info = subprocess.run(
                    [cli, "-h", host, "-p", port, "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                ).stdout
                if "cluster_state:ok" in info:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster did not come up:\n{info}")
                time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
