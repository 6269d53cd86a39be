"""Open-loop load for tests of the Cognito quota governor: flows of UpdateUserAttributes calls,
each from one caller at a fixed rate, driven from separate processes (multiprocessing, spawn).

Open loop: request k of a flow is sent at start + k / rps whatever the earlier ones did (slow
answers, refusals), so a server that slows down does not slow its load down. Every process
connects first (one grpc.aio channel per target, kept for the whole run), reports ready, and
all start at one common time. Each answer is a Result.

Everything waits with a timeout; `run_flows` always ends its processes, by process id.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import queue
import signal
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import grpc
import grpc.aio

from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.rpc import as_caller, code_and_reason

CONNECT_TIMEOUT = 10.0  # seconds for a process's channels to be ready
# Between the go and the common start: every process wakes up and sleeps until the start instead
# of the first ones sending while the last are still waking.
LEAD = 0.5
HARD_MARGIN = 30.0  # the whole run: duration + the longest deadline + this
# After its last send a process waits this long past the deadline for answers: gRPC enforces the
# deadline itself, so only a driver bug would need it.
DRAIN_GRACE = 5.0


@dataclass(frozen=True)
class Flow:
    caller: str  # sent as the x-attrgate-caller header (servers run --insecure)
    rps: float  # open loop: request k is sent at start + k / rps, whatever earlier ones did
    targets: tuple[str, ...]  # host:port of replicas; requests go round robin
    pool: str = "us-east-1_Quota1"
    users: int = 1000  # username = f"user-{k % users}"; users=1: always "user-0"
    deadline: float = 10.0  # per-call gRPC timeout, seconds
    attribute: str = "given_name"
    value: str = "Quota"  # the attribute's value in every request


@dataclass(frozen=True)
class Result:
    flow: int  # index of the flow
    sent: float  # seconds since the common start when sent
    done: float  # seconds since the common start when answered
    code: str  # "OK" or the grpc status code name
    reason: str  # ErrorInfo reason or ""
    index: int  # k: the request's index in its flow (user f"user-{k % users}", due at k / rps)


@dataclass(frozen=True)
class Driver:
    """What one driver process reports of itself."""

    flow: int
    share: int  # it sent the requests k ≡ share (mod processes_per_flow)
    cpu: float  # CPU seconds (every thread) from the start until its last answer
    wall: float  # seconds from the start until its last answer


class Results(list[Result]):
    """Every Result of a run, in order of sending, and what the run knows beside them."""

    def __init__(self, results: Sequence[Result], start: float, drivers: Sequence[Driver]) -> None:
        super().__init__(sorted(results, key=lambda r: (r.sent, r.flow, r.index)))
        # time.monotonic() of the common start. CLOCK_MONOTONIC is one clock for every process
        # on a Linux machine, so this compares with the CognitoStub's Received.at.
        self.start = start
        self.drivers = list(drivers)  # by flow, then share


def username(k: int, users: int) -> str:
    return f"user-{k % users}"


def request_count(flow: Flow, duration: float) -> int:
    """How many requests the flow sends: those due before `duration` (k / rps < duration)."""
    # Without the nudge 3 s x 100 rps could come out as 301 from a float a hair above 300.
    return max(0, math.ceil(duration * flow.rps - 1e-9))


# --- the driver processes -------------------------------------------------------------------


def _worker(
    worker: int,
    flow_index: int,
    flow: Flow,
    share: int,
    of: int,
    duration: float,
    go: Any,  # multiprocessing.Event: the start time is set
    start_at: Any,  # multiprocessing.Value("d"): time.monotonic() of the common start
    reports: Any,  # multiprocessing.Queue of (worker, kind, payload)
) -> None:
    try:
        asyncio.run(_drive(worker, flow_index, flow, share, of, duration, go, start_at, reports))
    except BaseException:
        trace = traceback.format_exc()
        reports.put((worker, "error", f"driver {worker} (flow {flow_index}):\n{trace}"))


async def _drive(
    worker: int,
    flow_index: int,
    flow: Flow,
    share: int,
    of: int,
    duration: float,
    go: Any,
    start_at: Any,
    reports: Any,
) -> None:
    indices = range(share, request_count(flow, duration), of)
    # Built before the start: during the run a call costs the call alone.
    requests = {
        u: pb.UpdateUserAttributesRequest(
            user_pool_id=flow.pool,
            username=username(u, flow.users),
            user_attributes=[pb.AttributeType(name=flow.attribute, value=flow.value)],
        )
        for u in {k % flow.users for k in indices}
    }
    channels = [grpc.aio.insecure_channel(target) for target in flow.targets]
    try:
        methods = [pb_grpc.UserAttributesStub(c).UpdateUserAttributes for c in channels]
        await asyncio.wait_for(
            asyncio.gather(*(c.channel_ready() for c in channels)), CONNECT_TIMEOUT
        )
        metadata = as_caller(flow.caller)
        targets = len(methods)
        rps = flow.rps
        timeout = flow.deadline
        clock = time.monotonic
        answers: list[tuple[int, float, float, str, str]] = []

        reports.put((worker, "ready", None))
        if not await asyncio.to_thread(go.wait, HARD_MARGIN + duration):
            raise TimeoutError("no go from run_flows")
        start = start_at.value
        cpu_before = time.process_time()

        async def call(k: int) -> None:
            sent = clock() - start
            try:
                await methods[k % targets](
                    requests[k % flow.users], metadata=metadata, timeout=timeout
                )
                code, reason = "OK", ""
            except grpc.RpcError as error:
                code, reason = code_and_reason(error)
            except asyncio.CancelledError:
                code, reason = "CANCELLED", "quota_load: no answer within the deadline"
            except Exception as error:  # counted, not lost: the sums must add up
                code, reason = "DRIVER_ERROR", repr(error)
            answers.append((k, sent, clock() - start, code, reason))

        loop = asyncio.get_running_loop()
        tasks = []
        for k in indices:
            delay = start + k / rps - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            # Late (a slow wake-up): sent at once, the lateness shows in Result.sent.
            tasks.append(loop.create_task(call(k)))
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout + DRAIN_GRACE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=DRAIN_GRACE)
        driver = Driver(flow_index, share, time.process_time() - cpu_before, clock() - start)
        reports.put((worker, "results", (answers, driver)))
    finally:
        for channel in channels:
            await channel.close()


# --- the run --------------------------------------------------------------------------------


def run_flows(flows: Sequence[Flow], duration: float, processes_per_flow: int = 1) -> Results:
    """Drive every flow for `duration` seconds, each from `processes_per_flow` processes, all
    started together; wait for every answer. Raises (after ending every process) when a process
    fails or dies, or when the run takes longer than duration + the longest deadline + 30 s."""
    if not flows or duration <= 0 or processes_per_flow < 1:
        raise ValueError("run_flows needs flows, a positive duration and processes")
    for flow in flows:
        if flow.rps <= 0 or not flow.targets or flow.users < 1 or flow.deadline <= 0:
            raise ValueError(f"a flow needs rps > 0, targets, users >= 1, a deadline: {flow}")
    context = multiprocessing.get_context("spawn")
    reports: Any = context.Queue()
    go = context.Event()
    start_at = context.Value("d", 0.0, lock=False)  # written once, before the go
    limit = time.monotonic() + duration + max(f.deadline for f in flows) + HARD_MARGIN
    processes: list[Any] = []
    done = False
    try:
        for flow_index, flow in enumerate(flows):
            for share in range(processes_per_flow):
                process = context.Process(
                    target=_worker,
                    args=(
                        *(len(processes), flow_index, flow, share, processes_per_flow),
                        *(duration, go, start_at, reports),
                    ),
                    daemon=True,
                )
                process.start()
                processes.append(process)
        _await(reports, processes, "ready", limit)
        start_at.value = start = time.monotonic() + LEAD
        go.set()
        reported = _await(reports, processes, "results", limit)
        results: list[Result] = []
        drivers: list[Driver] = []
        for answers, driver in reported.values():
            drivers.append(driver)
            results.extend(Result(driver.flow, s, d, c, r, k) for k, s, d, c, r in answers)
        done = True
        return Results(results, start, sorted(drivers, key=lambda p: (p.flow, p.share)))
    finally:
        _reap(processes, grace=5.0 if done else 0.0)
        reports.close()
        reports.cancel_join_thread()  # nothing of ours is buffered: never block on the pipe


def _await(reports: Any, processes: list[Any], kind: str, limit: float) -> dict[int, Any]:
    """The payload of a `kind` report from every process, by process number."""
    got: dict[int, Any] = {}
    while len(got) < len(processes):
        try:
            worker, what, payload = reports.get(timeout=0.2)
        except queue.Empty:
            # A report may still be in the pipe of a process that just exited: look again once
            # more before calling it dead.
            dead = [i for i, p in enumerate(processes) if i not in got and not p.is_alive()]
            if dead and reports.empty():
                codes = [processes[i].exitcode for i in dead]
                raise RuntimeError(f"driver processes {dead} died (exit codes {codes})") from None
            if time.monotonic() > limit:
                raise TimeoutError(
                    f"driver processes {sorted(set(range(len(processes))) - set(got))} did not "
                    f"report {kind} in time"
                ) from None
            continue
        if what == "error":
            raise RuntimeError(payload)
        if what == kind:
            got[worker] = payload
    return got


def _reap(processes: list[Any], grace: float) -> None:
    """Every process ended: waited for up to `grace` seconds in all, then killed by pid."""
    until = time.monotonic() + grace
    for process in processes:
        process.join(timeout=max(0.0, until - time.monotonic()))
    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGKILL)
        process.join(timeout=5)


# --- reading the results --------------------------------------------------------------------


def achieved_rps(results: Sequence[Result], flow: int, duration: float) -> float:
    """The flow's send rate as achieved: its requests actually sent within [0, duration), per
    second. A driver that lags its schedule pushes sends past `duration` and scores lower."""
    return sum(1 for r in results if r.flow == flow and 0 <= r.sent < duration) / duration


class FlowSummary(TypedDict):
    sent: int
    ok: int
    by: dict[tuple[str, str], int]  # (code, reason) -> answers
    late_max: float  # seconds the latest send lagged its schedule (k / rps)


def summary(results: Sequence[Result], flows: Sequence[Flow]) -> dict[int, FlowSummary]:
    """Per flow (by index): requests sent, answered OK, answers by (code, reason), lag."""
    found: dict[int, FlowSummary] = {}
    for index, flow in enumerate(flows):
        mine = [r for r in results if r.flow == index]
        by = Counter((r.code, r.reason) for r in mine)
        found[index] = FlowSummary(
            sent=len(mine),
            ok=by[("OK", "")],
            by=dict(by),
            late_max=max((r.sent - r.index / flow.rps for r in mine), default=0.0),
        )
    return found
