"""`attrgate serve --workers 2` as a real process tree against the Cognito stub: one port shared
by both workers (connections spread by the kernel), one decision log, one /metrics summing
both, SIGHUP and SIGTERM relayed, the SMS limit held across workers, and what a dead worker or a
dead parent does.

Calls go over fresh connections (a local subchannel pool each), since SO_REUSEPORT spreads
connections, not calls; which worker answered is the decision log's `worker` field.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from attrgate.workers.aggregate import GAUGES
from support.cognito_stub import CognitoStub, Reply, describe_reply
from support.environment import clean_env
from support.policies import sms_guard, svc_policy
from support.prometheus import metrics_text, samples_of, total
from support.redis_server import free_port
from support.rpc import as_caller, attrs_request, code_and_reason, rich
from support.waiting import wait_for, wait_until

POOL = "us-east-1_Pool1"
CONNECTIONS = 20
START = 90.0  # seconds: two interpreters importing gRPC and boto3 on a loaded 2-core machine
SERVING = re.compile(
    r"serving on port (\d+) with 2 workers \(pids (\d+), (\d+)\)"
    r"(?:; admin on port (\d+))?(?:; metrics on port (\d+))?"
)
GIVEN = svc_policy("[{attribute: given_name}]")
GIVEN_AND_FAMILY = svc_policy("[{attribute: given_name}, {attribute: family_name}]")
# A denial of 50 attributes: its decision-log entry is over 4096 bytes.
LONG_DENIAL = attrs_request(POOL, [(f"custom:a_rather_long_name_{i:02d}", "x") for i in range(50)])
QUOTA = """---
apiVersion: attrgate/v1
kind: CognitoQuota
metadata: {name: account}
spec:
  rate: 20
  shares:
    - {name: svc, callers: [svc]}
"""


@dataclass
class Parent:
    process: subprocess.Popen[bytes]
    out: Path
    err: Path
    port: int = 0
    pids: tuple[int, int] = (0, 0)
    admin_port: int = 0
    metrics_port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def errors(self) -> str:
        return self.err.read_text(errors="replace")

    def wait_serving(self) -> Parent:
        found: list[re.Match[str]] = []

        def serving() -> bool:
            match = SERVING.search(self.errors())
            if match:
                found.append(match)
            return match is not None

        wait_for(serving, f"2 workers serving:\n{self.errors()[-3000:]}", START, self.process)
        match = found[0]
        self.port = int(match[1])
        self.pids = (int(match[2]), int(match[3]))
        self.admin_port = int(match[4] or 0)
        self.metrics_port = int(match[5] or 0)
        return self

    def wait_each_worker(self, says: str) -> None:
        """Until each worker's log has a line saying `says`."""
        for worker in (0, 1):
            wait_for(
                lambda w=worker: re.search(rf"\[worker {w}\] .*{says}", self.errors()) is not None,
                f"worker {worker} to say {says!r}",
                30,
                self.process,
            )

    def exit_status(self, timeout: float = 60) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGQUIT)  # every process's stacks on stderr
            time.sleep(1)
            tail = self.errors()[-4000:]
            raise AssertionError(f"still running after {timeout}s:\n{tail}") from None


@pytest.fixture
def start(tmp_path: Path, stub: CognitoStub) -> Iterator[Callable[..., Parent]]:
    """`attrgate serve --workers 2` on an ephemeral port, against the stub, logging decisions
    to `decisions.jsonl` (unless the test passes its own --decision-log); stopped after."""
    started: list[Parent] = []

    def launch(policies: Path, *args: str, wait: bool = True, pipe: bool = False) -> Parent:
        """`pipe`: stdout is a pipe (process.stdout) the test reads, not the file `out`."""
        out, err = tmp_path / "out", tmp_path / "err"
        command = [
            *(sys.executable, "-m", "attrgate", "serve", "--workers", "2"),
            *("--insecure", "--listen", "127.0.0.1:0", "--no-policy-watch"),
            *("--policies", str(policies), "--region", "us-east-1"),
            *("--cognito-endpoint", stub.endpoint),
            *("--decision-log", str(tmp_path / "decisions.jsonl")),
            *args,  # a later flag wins
        ]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                command,
                env=clean_env("stub-key", "stub-secret"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else stdout,
                stderr=stderr,
            )
        parent = Parent(process, out, err)
        started.append(parent)
        return parent.wait_serving() if wait else parent

    yield launch
    for parent in started:
        if parent.process.poll() is None:
            parent.process.send_signal(signal.SIGTERM)
            try:
                parent.process.wait(30)
            except subprocess.TimeoutExpired:
                parent.process.kill()
                parent.process.wait()
        for pid in parent.pids:  # nothing may outlive the test
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def write_policies(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "p.yaml").write_text(text)
    return folder


Call = tuple[str, Any]  # ("update" | "check", request)


def spread(
    target: str, calls: Sequence[Call], timeout: float = 30, together: bool = False
) -> list[Any]:
    """Send the calls over CONNECTIONS fresh connections at once, each its slice in order (or
    `together`: all of its slice at once); every answer (a response or the RpcError), in the
    calls' order."""
    answers: list[Any] = [None] * len(calls)

    def connection(first: int) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
        with grpc.insecure_channel(target, options=options) as channel:
            stub = pb_grpc.UserAttributesStub(channel)
            futures = {}
            for i in range(first, len(calls), CONNECTIONS):
                kind, message = calls[i]
                method = stub.UpdateUserAttributes
                if kind == "check":
                    method = stub.CheckUpdateUserAttributes  # type: ignore[assignment]
                futures[i] = method.future(message, metadata=as_caller("svc"), timeout=timeout)
                if not together:
                    futures[i].exception()  # its answer before the next call
            for i, future in futures.items():
                error = future.exception()
                answers[i] = error if error is not None else future.result()

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        list(pool.map(connection, range(CONNECTIONS)))
    return answers


def codes(answers: Sequence[Any]) -> Counter[tuple[str, str]]:
    return Counter(
        code_and_reason(a) if isinstance(a, grpc.RpcError) else ("OK", "") for a in answers
    )


def entries(path: Path, count: int) -> list[dict[str, Any]]:
    """The decision log's entries once it holds `count` lines; every line one JSON object."""

    def lines() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    wait_for(lambda: len(lines()) >= count, f"{count} decision-log lines in {path}", 30)
    return [json.loads(line) for line in lines()]


def both_workers_answered(log: list[dict[str, Any]]) -> Counter[int]:
    """Entries per worker; each took at least one connection's share."""
    per_worker = Counter(e["worker"] for e in log)
    assert set(per_worker) == {0, 1}, per_worker
    return per_worker


def health(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=2
            )
        except grpc.RpcError as error:
            return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


# --- one port, one decision log, one /metrics --------------------------------------------------


def test_two_workers_share_the_port_and_report_one_sum(
    start: Callable[..., Parent], stub: CognitoStub, tmp_path: Path
) -> None:
    parent = start(
        write_policies(tmp_path, GIVEN + QUOTA),
        *("--metrics-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"),
    )
    assert health(parent.admin_port) == "SERVING"
    allowed = [("update", attrs_request(POOL, [("given_name", "Ada")])) for _ in range(100)]
    # Entries of 5 KiB each, appended to one file by both workers: no line may be cut.
    denied = [("update", LONG_DENIAL)] * 100
    calls = [c for pair in zip(allowed, denied, strict=True) for c in pair]
    answers = spread(parent.target, calls)
    assert codes(answers) == {("OK", ""): 100, ("PERMISSION_DENIED", "POLICY_DENIED"): 100}
    assert len(stub.calls()) == 100

    log = entries(tmp_path / "decisions.jsonl", 200)
    assert len(log) == 200
    assert max(len(json.dumps(e)) for e in log) > 4096
    both_workers_answered(log)
    assert {e["decision_id"] for e in log} == {
        a.decision.decision_id if not isinstance(a, grpc.RpcError) else _decision_id(a)
        for a in answers
    }

    started = time.perf_counter()
    text = metrics_text(parent.metrics_port)
    scrape = time.perf_counter() - started
    print(f"one aggregated scrape of 2 workers: {scrape * 1000:.1f} ms, {len(text)} bytes")
    samples = samples_of(text)
    assert total(samples["attrgate_requests_total"]) == 200
    assert total(samples["attrgate_requests_total"], outcome="allowed") == 100
    assert total(samples["attrgate_requests_total"], outcome="denied") == 100
    assert total(samples["attrgate_request_duration_seconds_count"]) == 200
    assert total(
        samples["attrgate_cognito_calls_total"], operation="AdminUpdateUserAttributes"
    ) == (100)
    assert total(samples["attrgate_workers"]) == 2
    # Without Redis each worker sends at most half of the CognitoQuota's rate: 20 in all.
    assert total(samples["attrgate_quota_rate"]) == pytest.approx(20)
    assert total(samples["attrgate_quota_configured_rate"]) == 20
    assert total(samples["attrgate_in_flight_requests"]) == 0
    gauges = {line.split()[2] for line in text.splitlines() if line.endswith(" gauge")}
    assert gauges - {"attrgate_workers"} <= set(GAUGES), "say how a new gauge merges"

    parent.process.send_signal(signal.SIGTERM)
    assert parent.exit_status() == 0


def _decision_id(error: grpc.RpcError) -> str:
    return rich(error).info.metadata["decision_id"]


def test_health_turns_serving_once_every_worker_listens(
    start: Callable[..., Parent], tmp_path: Path
) -> None:
    """Not when the first worker does: a load balancer connecting then would pin every
    connection to it."""
    port, admin = free_port(), free_port()
    parent = start(
        write_policies(tmp_path, GIVEN),
        *("--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}"),
        wait=False,
    )
    seen: list[str] = []

    def serving() -> bool:
        seen.append(health(admin))
        return seen[-1] == "SERVING"

    wait_for(serving, "health SERVING", START, parent.process)
    workers = _children(parent.process.pid)
    assert [w for w in workers if _listens(w, port)] == workers, seen
    assert len(workers) == 2
    assert "NOT_SERVING" in seen or "UNAVAILABLE" in seen  # it did start from not serving


def _children(pid: int) -> list[int]:
    return sorted(int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())


def _listens(pid: int, port: int) -> bool:
    """Whether the process holds a listening TCP socket on `port` (/proc/net/tcp, tcp6)."""
    listening = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                listening.add(f"socket:[{fields[9]}]")
    held = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    return bool(listening & held)


# --- signals -----------------------------------------------------------------------------------


def test_sigterm_under_load_drains_both_workers_and_logs_every_decision_whole(
    start: Callable[..., Parent], stub: CognitoStub, tmp_path: Path
) -> None:
    """The decision log on stdout, a pipe as in a container: the parent copies each worker's
    in whole lines, long ones (a denial of 50 attributes, over the 4096 bytes a pipe takes in
    one piece) included, though the pipe fills up while the test does not read it."""
    cognito_answers = threading.Event()
    stub.default = Reply(hold=cognito_answers)  # the updates are at Cognito at SIGTERM
    parent = start(
        write_policies(tmp_path, GIVEN),
        *("--decision-log", "-", "--drain-delay", "1", "--grace", "60"),
        pipe=True,
    )
    denials = spread(parent.target, [("update", LONG_DENIAL)] * 40)
    assert codes(denials) == {("PERMISSION_DENIED", "POLICY_DENIED"): 40}
    assert parent.process.stdout is not None
    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.append(parent.process.stdout.read()))  # type: ignore[union-attr]
    reader.start()  # 40 entries of 5 KiB wait: more than the pipe holds
    update = ("update", attrs_request(POOL, [("given_name", "Ada")]))
    with ThreadPoolExecutor(1) as background:
        sent = background.submit(spread, parent.target, [update] * 40, 90, True)
        wait_for(lambda: len(stub.calls()) == 40, "40 updates at the stub", 30)
        parent.process.send_signal(signal.SIGTERM)
        parent.wait_each_worker("taking no new calls")
        cognito_answers.set()
        answers = sent.result(timeout=90)
    assert codes(answers) == {("OK", ""): 40}
    assert parent.exit_status() == 0
    reader.join(30)
    lines = read[0].decode().splitlines()
    log = [json.loads(line) for line in lines]  # every line whole
    assert len(log) == 80
    assert max(len(line) for line in lines) > 4096
    both_workers_answered(log)


def test_a_second_sigterm_ends_every_workers_drain_delay(
    start: Callable[..., Parent], tmp_path: Path
) -> None:
    parent = start(write_policies(tmp_path, GIVEN), "--drain-delay", "600")
    parent.process.send_signal(signal.SIGTERM)
    parent.wait_each_worker("shutting down")  # its drain delay begins
    parent.process.send_signal(signal.SIGTERM)
    assert parent.exit_status(60) == 0  # not 600 s


def test_sighup_reloads_the_policies_of_every_worker(
    start: Callable[..., Parent], tmp_path: Path
) -> None:
    folder = write_policies(tmp_path, GIVEN)
    parent = start(folder, "--admin-listen", "127.0.0.1:0")
    check = ("check", attrs_request(POOL, [("family_name", "Lovelace")]))
    before = spread(parent.target, [check] * 40)
    assert {a.allowed for a in before} == {False}
    (folder / "p.yaml").write_text(GIVEN_AND_FAMILY)
    parent.process.send_signal(signal.SIGHUP)
    parent.wait_each_worker("policies reloaded")
    after = spread(parent.target, [check] * 40)
    assert {a.allowed for a in after} == {True}
    log = entries(tmp_path / "decisions.jsonl", 80)[40:]
    both_workers_answered(log)
    revisions = {e["policy_revision"] for e in log}
    assert len(revisions) == 1
    # `attrgate status` asks whichever worker its connection lands on: each says the same.
    assert statuses(parent.admin_port, 10) == revisions
    assert parent.process.poll() is None


def statuses(admin_port: int, connections: int) -> set[str]:
    """The serving revision each of `connections` fresh connections to Admin/Status reports."""
    found = set()
    for _ in range(connections):
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"127.0.0.1:{admin_port}", options=options) as channel:
            reply = pb_grpc.AdminStub(channel).Status(pb.StatusRequest(), timeout=10)
            found.add(reply.policies.revision)
    return found


# --- failures ----------------------------------------------------------------------------------


def test_a_worker_that_dies_stops_the_server_with_status_1(
    start: Callable[..., Parent], tmp_path: Path
) -> None:
    """Health turns NOT_SERVING on the survivor (it drains), then the parent exits 1: the
    orchestrator restarts the whole server."""
    parent = start(
        write_policies(tmp_path, GIVEN),
        *("--admin-listen", "127.0.0.1:0", "--drain-delay", "3"),
    )
    survivor, victim = parent.pids
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: health(parent.admin_port) == "NOT_SERVING", seconds=30)
    assert parent.exit_status() == 1
    assert f"worker 1 (pid {victim}) exited on SIGKILL: stopping the other workers" in (
        parent.errors()
    )
    assert not _alive(survivor)


def test_workers_stop_when_their_parent_is_killed(
    start: Callable[..., Parent], tmp_path: Path
) -> None:
    parent = start(write_policies(tmp_path, GIVEN))
    parent.process.kill()
    parent.process.wait(10)
    for pid in parent.pids:
        wait_for(lambda p=pid: not _alive(p), f"worker pid {pid} to stop", 30)


def test_a_refused_start_is_said_once(start: Callable[..., Parent], tmp_path: Path) -> None:
    folder = write_policies(tmp_path, "kind: [")
    parent = start(folder, wait=False)
    assert parent.exit_status() == 2
    refusals = [line for line in parent.errors().splitlines() if "refusing to start" in line]
    assert len(refusals) == 1, parent.errors()
    assert "invalid policy set" in refusals[0]


def test_a_port_another_server_holds_is_refused(
    start: Callable[..., Parent], tmp_path: Path
) -> None:
    occupant = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = occupant.add_insecure_port("127.0.0.1:0")
    occupant.start()
    try:
        parent = start(write_policies(tmp_path, GIVEN), "--listen", f"127.0.0.1:{port}", wait=False)
        assert parent.exit_status() == 2
        assert parent.errors().strip().splitlines() == [
            f"attrgate: refusing to start: cannot listen on 127.0.0.1:{port} (in use or not a "
            "local address?)"
        ]
    finally:
        occupant.stop(0)


# --- shared state ------------------------------------------------------------------------------


def test_an_sms_limit_holds_across_workers(
    start: Callable[..., Parent], stub: CognitoStub, tmp_path: Path
) -> None:
    stub.describe = describe_reply(auto_verified=("phone_number",))
    guard = sms_guard("limits:\n  - {per: global, max: 20, window: 1h}")
    parent = start(
        write_policies(tmp_path, svc_policy("[{attribute: phone_number}]") + guard),
        *("--state", str(tmp_path / "state.sqlite")),
    )
    calls: list[Call] = [
        ("update", attrs_request(POOL, [("phone_number", f"+1415555{i:04d}")], f"user{i}"))
        for i in range(100)
    ]
    answers = spread(parent.target, calls)
    assert codes(answers) == {
        ("OK", ""): 20,
        ("RESOURCE_EXHAUSTED", "SMS_LIMIT_EXCEEDED"): 80,
    }
    assert len(stub.calls()) == 20
    both_workers_answered(entries(tmp_path / "decisions.jsonl", 100))
