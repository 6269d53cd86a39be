"""A worker's side of `serve --workers`: what the parent hands it, and its line back.

The parent starts each worker as `python -m attrgate serve` with its settings (ports resolved,
its own loopback metrics port) in the environment variable WORKER_ENV, and one end of a socket
pair inherited as a file descriptor. Over it the parent says GO to workers 1..N-1 once worker 0
serves (they wait for it with their imports done), each worker says, once, that it serves (and
on which ports), and the parent says SERVE to all once every worker does: only then does a
worker's health report SERVING, so a load balancer's connections spread over all of them.
When the parent dies, the worker reads the end of the stream and stops itself as on SIGTERM
(a drain), so no worker outlives its parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, MutableMapping
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any, Protocol

from attrgate.config import Settings

WORKER_ENV = "_ATTRGATE_WORKER"  # not ATTRGATE_*: no flag reads it
GO = b"go\n"
SERVE = b"serve\n"
REPORT_TIMEOUT = 30.0  # seconds
log = logging.getLogger("attrgate.workers")


class Serving(Protocol):
    """What a worker reports of its server (attrgate.app.App)."""

    @property
    def port(self) -> int: ...

    @property
    def admin_port(self) -> int: ...

    @property
    def metrics_port(self) -> int: ...

    @property
    def policy_revision(self) -> str: ...

    async def report_serving(self) -> None: ...


@dataclass(frozen=True)
class Ready:
    """A worker's one message to its parent."""

    pid: int
    port: int
    admin_port: int
    metrics_port: int
    revision: str

    def encode(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Ready:
        data = json.loads(line)
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


def worker_environment(index: int, settings: Settings, fd: int) -> str:
    """The value of WORKER_ENV for worker `index`, talking on file descriptor `fd`."""
    return json.dumps({"index": index, "fd": fd, "settings": dataclasses.asdict(settings)})


class WorkerLink:
    """This process is worker `index` of a `serve --workers` parent."""

    def __init__(self, index: int, settings: Settings, channel: socket.socket) -> None:
        self.index = index
        self.settings = settings
        self._channel = channel
        self._report_serving: Callable[[], None] = lambda: None

    def wait_to_start(self) -> bool:
        """Worker 0 starts at once; the others when the parent says GO (False: the parent is
        gone, or stopped them before)."""
        if self.index == 0:
            return True
        received = b""
        with contextlib.suppress(OSError):
            while not received.endswith(b"\n"):
                chunk = self._channel.recv(16)
                if not chunk:
                    break
                received += chunk
        return received == GO

    def watch_parent(self) -> None:
        """Stop (SIGTERM to this process: a drain) when the parent is gone."""
        threading.Thread(target=self._watch, name="attrgate-parent", daemon=True).start()

    def serving(self, app: Serving) -> None:
        """Tell the parent this worker serves (on_serving of attrgate.app.serve, on its event
        loop); its health turns SERVING when the parent says SERVE."""
        loop = asyncio.get_running_loop()

        def report_serving() -> None:  # from the thread reading the parent's lines
            asyncio.run_coroutine_threadsafe(app.report_serving(), loop).result(REPORT_TIMEOUT)

        self._report_serving = report_serving
        ready = Ready(os.getpid(), app.port, app.admin_port, app.metrics_port, app.policy_revision)
        try:
            self._channel.sendall(ready.encode())
        except OSError:
            log.warning("cannot reach the parent process: stopping")
            os.kill(os.getpid(), signal.SIGTERM)

    def _watch(self) -> None:
        with contextlib.suppress(OSError), self._channel.makefile("rb") as lines:
            for line in lines:
                if line == SERVE:
                    # The loop closed (stopped), or too busy to say it: health stays as it is.
                    with contextlib.suppress(RuntimeError, TimeoutError, CancelledError):
                        self._report_serving()
        log.warning("the parent process is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)


def worker_link(environ: MutableMapping[str, str] | None = None) -> WorkerLink | None:
    """This process's link to its parent, when it is a worker (taken out of the environment:
    nothing this process starts inherits it); None otherwise."""
    env = os.environ if environ is None else environ
    raw = env.pop(WORKER_ENV, None)
    if raw is None:
        return None
    data: dict[str, Any] = json.loads(raw)
    channel = socket.socket(fileno=int(data["fd"]))
    return WorkerLink(int(data["index"]), Settings(**data["settings"]), channel)
