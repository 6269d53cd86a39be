"""Bounded polling for what a server does just after answering (ending a span, writing a log)."""

from __future__ import annotations

import json
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


def json_lines(path: Path, count: int) -> list[dict[str, Any]]:
    """The entries of a JSON-lines file (a decision log), once it holds at least `count`."""

    def lines() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    assert wait_until(lambda: len(lines()) >= count), f"expected {count} entries in {path}"
    return [json.loads(line) for line in lines()]
