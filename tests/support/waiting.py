"""Bounded polling for what a server does just after answering (ending a span, writing a log)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def wait_for(
    condition: Callable[[], bool],
    what: str,
    seconds: float = 30.0,
    process: subprocess.Popen[Any] | None = None,
) -> None:
    """wait_until, failing the test with `what` when it does not come, or at once when the
    `process` that should bring it has exited."""
    deadline = time.monotonic() + seconds
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds:g}s waiting for {what}")
        time.sleep(0.02)


def json_lines(path: Path, count: int) -> list[dict[str, Any]]:
    """The entries of a JSON-lines file (a decision log), once it holds at least `count`."""

    def lines() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    assert wait_until(lambda: len(lines()) >= count), f"expected {count} entries in {path}"
    return [json.loads(line) for line in lines()]
