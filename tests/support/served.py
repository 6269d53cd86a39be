"""`attrgate serve` as its own process, plaintext on loopback, deciding without a Cognito
(pool metadata fails open; the endpoint is a closed port): for tests of what a real process does
with signals, files and exporters."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from support.moto_cognito import free_port


def start_serve(
    policies: Path,
    port: int,
    *extra: str,
    output: Path | None = None,
    memory_limit: int | None = None,
    **env: str,
) -> subprocess.Popen[bytes]:
    """`output`: a folder to write the process's stdout and stderr to (`out`, `err`).
    `memory_limit`: bytes of address space (`prlimit --as`), for tests that a regression could
    turn into a machine-wide out-of-memory."""
    stdout = (output / "out").open("wb") if output else subprocess.DEVNULL
    stderr = (output / "err").open("wb") if output else subprocess.DEVNULL
    limit = ("prlimit", f"--as={memory_limit}") if memory_limit else ()
    return subprocess.Popen(
        [
            *limit,
            *(sys.executable, "-m", "attrgate", "serve", "--insecure", "--region", "us-east-1"),
            *("--policies", str(policies), "--listen", f"127.0.0.1:{port}"),
            *("--pool-metadata-fail-open", "--cognito-endpoint", f"http://127.0.0.1:{free_port()}"),
            *extra,  # a later --cognito-endpoint wins
        ],
        env={
            **os.environ,
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        stdout=stdout,
        stderr=stderr,
    )


def stop_serve(process: subprocess.Popen[bytes], timeout: float = 15) -> int:
    """SIGTERM (a drain), then SIGKILL if it does not end in time; the exit status."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
