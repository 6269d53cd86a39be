"""A fleet of real processes: `attrgate serve` replicas as subprocesses, and client processes
(multiprocessing, spawn) that fire a round of calls at them together, released by one Barrier.

Everything waits with a timeout; `Replica.stop` and `ClientFleet.close` always end what they
started, by process id.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import subprocess
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.environment import clean_env
from support.redis_server import free_port
from support.rpc import code_and_reason
from support.served import serve_command, wait_serving

CALLER_HEADER = "x-attrgate-caller"
START_TIMEOUT = 30.0


def replica_env(access_key_id: str, secret_access_key: str) -> dict[str, str]:
    """The environment of a replica (support/environment.py) with these credentials."""
    return clean_env(access_key_id, secret_access_key)


class Replica:
    """`python -m attrgate serve --insecure --listen 127.0.0.1:PORT ARGS...` in its own process."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = list(args)
        self.env = env
        self.log = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.target = ""

    def launch(self) -> None:
        port = free_port()
        self.target = f"127.0.0.1:{port}"
        with self.log.open("ab") as log:
            log.write(f"--- start on {self.target}\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                serve_command(self.target, *self.args),
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def start(self, timeout: float = START_TIMEOUT) -> Replica:
        if self.process is None or self.process.poll() is not None:
            self.launch()
        for _attempt in range(3):  # another process may take the free port first
            if self._wait_serving(timeout):
                return self
            if "cannot listen" not in self.log_tail():
                break
            self.launch()
        raise RuntimeError(f"replica {self.name} did not start:\n{self.log_tail()}")

    def _wait_serving(self, timeout: float) -> bool:
        assert self.process is not None
        if wait_serving(self.target, self.process, timeout):
            return True
        if self.process.poll() is not None:
            return False
        self.stop()
        raise RuntimeError(f"replica {self.name} not SERVING after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, no chance to release anything."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()


# --- client processes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    index: int
    target: str
    pool_id: str
    username: str
    phone: str


@dataclass(frozen=True)
class Outcome:
    index: int
    code: str  # grpc.StatusCode name: OK, RESOURCE_EXHAUSTED, ...
    reason: str  # ErrorInfo.reason; "" when OK or when the error carried none
    worker: int


def _classify(future: Any) -> tuple[str, str]:
    try:
        future.result()
    except grpc.RpcError as exc:
        return code_and_reason(exc)
    return "OK", ""


def client_worker(
    worker: int,
    caller: str,
    jobs: Any,  # multiprocessing.Queue of (round id, list[Call], timeout), or None to end
    results: Any,  # multiprocessing.Queue of (round id, list[Outcome] | error text)
    barrier: Any,  # multiprocessing.Barrier shared by every worker
) -> None:
    """One client process: per job, build the requests and connect, wait for every other
    worker at the barrier, then send all its calls at once and report each outcome."""
    channels: dict[str, grpc.Channel] = {}
    stubs: dict[str, pb_grpc.UserAttributesStub] = {}
    metadata = ((CALLER_HEADER, caller),)
    try:
        while True:
            job = jobs.get(timeout=300)
            if job is None:
                return
            round_id, calls, timeout = job
            try:
                for target in {c.target for c in calls}:
                    if target not in channels:
                        channels[target] = grpc.insecure_channel(target)
                        grpc.channel_ready_future(channels[target]).result(timeout=10)
                        stubs[target] = pb_grpc.UserAttributesStub(channels[target])
                requests = [
                    (
                        c,
                        pb.UpdateUserAttributesRequest(
                            user_pool_id=c.pool_id,
                            username=c.username,
                            user_attributes=[pb.AttributeType(name="phone_number", value=c.phone)],
                        ),
                    )
                    for c in calls
                ]
                barrier.wait(timeout=60)
                futures = [
                    (
                        c,
                        stubs[c.target].UpdateUserAttributes.future(
                            r, metadata=metadata, timeout=timeout
                        ),
                    )
                    for c, r in requests
                ]
                outcomes = [Outcome(c.index, *_classify(f), worker) for c, f in futures]
                results.put((round_id, outcomes))
            except Exception:
                results.put((round_id, f"worker {worker}:\n{traceback.format_exc()}"))
    finally:
        for channel in channels.values():
            channel.close()


class ClientFleet:
    """`processes` spawned client processes sharing one Barrier. `run_round` splits the calls
    into equal consecutive slices, one per process, and returns every outcome."""

    def __init__(self, processes: int = 4, caller: str = "svc") -> None:
        context = multiprocessing.get_context("spawn")
        self.barrier = context.Barrier(processes)
        self.results: Any = context.Queue()
        self.jobs: list[Any] = [context.Queue() for _ in range(processes)]
        self.processes = [
            context.Process(
                target=client_worker,
                args=(i, caller, self.jobs[i], self.results, self.barrier),
                daemon=True,
            )
            for i in range(processes)
        ]
        for process in self.processes:
            process.start()
        self._round = 0

    def run_round(
        self, calls: Sequence[Call], call_timeout: float = 30.0, round_timeout: float = 90.0
    ) -> list[Outcome]:
        n = len(self.processes)
        size, rest = divmod(len(calls), n)
        assert rest == 0, "the calls must split evenly between the client processes"
        self._round += 1
        for i, jobs in enumerate(self.jobs):
            jobs.put((self._round, list(calls[i * size : (i + 1) * size]), call_timeout))
        outcomes: list[Outcome] = []
        errors: list[str] = []
        reported = 0
        deadline = time.monotonic() + round_timeout
        while reported < n:
            try:
                round_id, got = self.results.get(timeout=0.5)
            except queue.Empty:
                dead = [i for i, p in enumerate(self.processes) if not p.is_alive()]
                if dead:
                    errors.append(f"client processes {dead} died")
                    break
                if time.monotonic() > deadline:
                    errors.append(f"client processes did not report within {round_timeout}s")
                    break
                continue
            if round_id != self._round:
                continue  # a late report from a round that already failed
            reported += 1
            if isinstance(got, str):
                errors.append(got)
                self.barrier.abort()  # the others stop waiting for this one
            else:
                outcomes.extend(got)
        if errors:
            # A worker that failed left the others at a broken barrier: mend it for the next
            # round (stragglers of this one report under its id and are skipped).
            self.barrier.reset()
            raise AssertionError("\n".join(errors))
        return sorted(outcomes, key=lambda o: o.index)

    def close(self) -> None:
        for jobs in self.jobs:
            with contextlib.suppress(OSError, ValueError):
                jobs.put(None)
        for process in self.processes:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
        self.results.close()
        for jobs in self.jobs:
            jobs.close()


def start_all(replicas: Sequence[Replica], timeout: float = START_TIMEOUT) -> None:
    """Launch every replica at once, then wait for each to serve."""
    for replica in replicas:
        replica.launch()
    for replica in replicas:
        replica.start(timeout)
