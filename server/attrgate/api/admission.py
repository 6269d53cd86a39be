"""Which calls the server still takes, and how many it is handling: the drain's gate.

gRPC's own shutdown kills the calls its core has received but not yet handed to a handler (it
hands them over one at a time, so under load dozens wait there), and closes the listener at once.
attrgate never shuts gRPC down while it may still owe an answer. It closes this gate instead: it
asks gRPC's core (channelz) how many calls it has received, and serves every one of those as
usual; a call received later is answered UNAVAILABLE (ATTRGATE_SHUTTING_DOWN) at once. `wait_idle`
says when every admitted call has ended. Used on the event loop only.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import grpc.aio

log = logging.getLogger("attrgate.admission")

# The number gRPC handed the running call over with (1, 2, ...); None when not counted.
_arrival: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "attrgate_arrival", default=None
)


class Admission:
    def __init__(self) -> None:
        self._arrived = 0  # calls gRPC has handed over, every method counted
        self._cutoff: int | None = None  # None: open; else the last arrival still admitted
        self._active = 0
        self._changed = asyncio.Event()
        self._running: set[asyncio.Task[Any]] = set()  # the admitted calls' handler tasks
        self.cut = False  # the grace has ended: admitted calls still running are being cut off

    @property
    def active(self) -> int:
        return self._active

    def interceptor(self) -> grpc.aio.ServerInterceptor:
        """Counts every call gRPC hands over (health and reflection too: gRPC's core counts
        them all), before its handler runs."""
        return _Count(self)

    def arrived(self) -> int:
        self._arrived += 1
        self._changed.set()
        return self._arrived

    def enter(self) -> bool:
        """Admit a call (False: the gate is closed and it arrived after: refuse it). An
        admitted call must `leave`."""
        arrival = _arrival.get()
        if self._cutoff is not None and (arrival is None or arrival > self._cutoff):
            return False
        self._active += 1
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        return True

    def leave(self) -> None:
        self._active -= 1
        task = asyncio.current_task()
        if task is not None:
            self._running.discard(task)
        self._changed.set()

    def cut_off(self) -> None:
        """The grace has ended: cancel every admitted call still running. Its handler answers
        ABORTED (ATTRGATE_GRACE_ENDED), seeing `cut`, before gRPC shuts down."""
        self.cut = True
        for task in list(self._running):
            task.cancel()

    def close(self, received: int | None) -> None:
        """Admit no call beyond the `received` ones gRPC's core has taken in so far (None: it
        could not say; then no call beyond those already handed over)."""
        self._cutoff = max(received or 0, self._arrived)

    @property
    def owed(self) -> int:
        """Calls received before the gate closed that gRPC has not handed over yet."""
        return 0 if self._cutoff is None else max(0, self._cutoff - self._arrived)

    async def wait_idle(self, seconds: float) -> bool:
        """Whether, within `seconds`, every call received before the gate closed was handed
        over and every admitted call ended. (A call its client cancelled while it was still
        queued in gRPC may never be handed over: then this waits out `seconds`, which is bounded
        by --grace; refusing owed calls early would cut off calls that are only slow to come.)"""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self._active or self.owed:
            self._changed.clear()
            left = deadline - loop.time()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return not (self._active or self.owed)
        return True


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


class _Count(grpc.aio.ServerInterceptor):
    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        # Runs in the call's own task, so the handler sees this number.
        _arrival.set(self._admission.arrived())
        return await continuation(handler_call_details)


def channelz_server_ids() -> set[int]:
    """The ids of this process's gRPC servers in channelz (empty when it cannot say)."""
    found: set[int] = set()
    start = 0
    try:
        from grpc._cython import cygrpc  # type: ignore[attr-defined]

        while True:
            page: dict[str, Any] = json.loads(cygrpc.channelz_get_servers(start))
            ids = [int(s["ref"]["serverId"]) for s in page.get("server", [])]
            found.update(ids)
            if page.get("end", True) or not ids:
                return found
            start = max(ids) + 1
    except Exception:  # channelz is gRPC's internal API: without it, the drain still holds
        log.debug("channelz unavailable", exc_info=True)
        return set()


def calls_received(server_id: int | None) -> int | None:
    """How many calls gRPC's core has received on the server (channelz callsStarted): those
    still waiting to be handed over included."""
    if server_id is None:
        return None
    try:
        from grpc._cython import cygrpc  # type: ignore[attr-defined]

        answer: dict[str, Any] = json.loads(cygrpc.channelz_get_server(server_id))
        return int(answer["server"]["data"].get("callsStarted", 0))
    except Exception:
        log.debug("channelz unavailable", exc_info=True)
        return None
