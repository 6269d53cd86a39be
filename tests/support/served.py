"""`attrgate serve` as its own process, plaintext on loopback, deciding without a Cognito
(pool metadata fails open; the endpoint is a closed port): for tests of what a real process does
with signals, files and exporters."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.environment import clean_env
from support.moto_cognito import free_port


def serve_command(listen: str, *args: str, watch: bool | None = False) -> list[str]:
    """`attrgate serve` on a plaintext loopback listener (the caller names itself). Not
    watching its policies unless `watch`: tests reload with SIGHUP and count the reloads, which
    a watcher reloading the same writes would double."""
    follow = () if watch is None else ("--policy-watch" if watch else "--no-policy-watch",)
    return [
        sys.executable,
        "-m",
        "attrgate",
        "serve",
        "--insecure",
        "--listen",
        listen,
        *follow,
        *args,
    ]


def start_serve(
    policies: Path | str,
    port: int,
    *extra: str,
    output: Path | None = None,
    memory_limit: int | None = None,
    watch: bool = False,
    **env: str,
) -> subprocess.Popen[bytes]:
    """`output`: a folder to write the process's stdout and stderr to (`out`, `err`).
    `watch`: the server reloads its policies on change (off by default, see serve_command).
    `memory_limit`: bytes of address space (`prlimit --as`), for tests that a regression could
    turn into a machine-wide out-of-memory."""
    stdout = (output / "out").open("wb") if output else subprocess.DEVNULL
    stderr = (output / "err").open("wb") if output else subprocess.DEVNULL
    limit = ("prlimit", f"--as={memory_limit}") if memory_limit else ()
    return subprocess.Popen(
        [
            *limit,
            *serve_command(
                f"127.0.0.1:{port}",
                "--region",
                "us-east-1",
                # An s3:// source is polled: the watch flags would be refused.
                watch=None if str(policies).startswith("s3://") else watch,
            ),
            *("--policies", str(policies)),
            *("--pool-metadata-fail-open", "--cognito-endpoint", f"http://127.0.0.1:{free_port()}"),
            *extra,  # a later --cognito-endpoint wins
        ],
        env=clean_env(**env),
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
    )


def serving(target: str) -> bool:
    """Whether the server at `target` answers health checks SERVING now."""
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def wait_serving(target: str, process: subprocess.Popen[bytes], seconds: float = 60) -> bool:
    """Whether the process came to serve within `seconds` (False at once when it exited)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if serving(target):
            return True
        time.sleep(0.05)
    return False


def stop_serve(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM (a drain), then SIGKILL if it does not end in time; the exit status. Before the
    kill, SIGQUIT has the server print every thread's stack to its stderr: what it waited for."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGQUIT)
        time.sleep(1)
        process.kill()
        return process.wait()
