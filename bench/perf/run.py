"""Runs every role of the benchmark side by side and judges the figures against issue 12's targets.

Processes: the Cognito stub (perf/stub.py), `attrgate serve` in front of it, the bare grpc.aio
reference server (perf/baseline_grpc.py), and load processes (perf/driver.py, or
perf/baseline_boto3.py for the direct boto3 reference). Each measurement starts its load
processes, waits until they are connected, hands them one window [t0, t1] (after a warm-up),
and reads /proc of the measured processes at t0 and t1: CPU per request is the measured
process's CPU time in the window over the calls that ended in it.
"""

from __future__ import annotations

import base64
import compileall
import contextlib
import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_status import rpc_status

from attrgate.v1 import attrgate_pb2 as pb
from perf import procstat
from support.moto_cognito import free_port
from support.served import serving

REPO = Path(__file__).resolve().parents[2]
POOL = "us-east-1_bench"
CALLER = "bench-writer"
ALLOWED = "given_name"
DENIED = "family_name"  # not in the caller's policy: PERMISSION_DENIED, POLICY_DENIED
POLICY = f"""\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {{name: {CALLER}}}
spec:
  callers: ["{CALLER}"]
  userPools: ["us-east-1_*"]
  allow:
    - attribute: {ALLOWED}
      maxLength: 64
"""
START_TIMEOUT = 60.0
# 2,048 in flight: two drivers of 1,024 callers on 8 channels each, starting over one second
# (the upstream's latency) so that the answers do not come back in one burst a second.
LOAD_2048: dict[str, Any] = {"ramp": 1.0, "per_channel": 128}
# Denied requests: two drivers of 64 callers, on 32 channels each. With --workers the kernel
# spreads connections over the workers (SO_REUSEPORT hashes each connection): a few connections
# would split unevenly by chance, 64 split about evenly.
LOAD_DENIED: dict[str, Any] = {"per_channel": 2}
MiB = 1024 * 1024
# The ratio rows' scenarios are measured in this many alternating rounds of a window's share.
ROUNDS = 2

# Targets (issue 12).
ALLOWED_CPU_RATIO = 1.0  # attrgate CPU per allowed request ÷ one direct boto3 call
ALLOWED_CPU_AIM = 0.8
DENIED_CPU_RATIO = 1.5  # attrgate CPU per denied request ÷ the bare grpc.aio abort
THROUGHPUT_SHARE = 0.9  # of min(in-flight ÷ latency, the CPU-bound throughput)
WORKERS_SPEEDUP = 1.4
WORKER_SHARE = 1 / 3
RSS_MIB = 150
START_SECONDS = 1.5


def role_env(server: Path) -> dict[str, str]:
    """The environment of every process started here: no ATTRGATE_*/AWS_* leaking in, static
    credentials, no instance-metadata probing, the attrgate of `server` (a folder holding the
    `attrgate` package) and this checkout's bench roles."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTRGATE_", "AWS_"))}
    paths = (REPO / "bench", server, REPO / "tests")  # tests: support.cognito_stub
    path = os.pathsep.join([*map(str, paths), *filter(None, [env.get("PYTHONPATH")])])
    env.update(
        PYTHONPATH=path,
        AWS_ACCESS_KEY_ID="bench-key",
        AWS_SECRET_ACCESS_KEY="bench-secret",  # noqa: S106 (the stub checks no signature)
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PYTHONUNBUFFERED="1",
        ATTRGATE_DRAIN_DELAY="0",
    )
    return env


class Child:
    """A process started here, its output going to a log file."""

    name: str
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self) -> str:
        try:
            return "\n--- " + self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not ended within `timeout`."""
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class Role(Child):
    """A bench role speaking JSON lines on stdout (stdin a pipe, stderr to a log file)."""

    def __init__(self, name: str, command: Sequence[str], logs: Path, env: dict[str, str]):
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                list(command),
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self._lines.put(raw.decode(errors="replace"))
        self._lines.put(None)

    def message(self, timeout: float) -> dict[str, Any]:
        """The next JSON line it prints."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(
                    f"{self.name}: nothing within {timeout:g}s{self.tail()}"
                ) from None
            if line is None:
                self.process.wait(timeout=5)
                raise RuntimeError(
                    f"{self.name} exited with status {self.process.returncode}{self.tail()}"
                )
            if line.startswith("{"):
                found: dict[str, Any] = json.loads(line)
                return found

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        self.process.stdin.flush()


def role(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"perf.{module}", *args]


# --- attrgate ------------------------------------------------------------------------------------


class Attrgate(Child):
    """`python -m attrgate serve` on a free loopback port, started and timed to SERVING."""

    def __init__(
        self, name: str, args: Sequence[str], logs: Path, env: dict[str, str], workers: int = 1
    ):
        """`workers`: with more than one (--workers N), SERVING is when all N listen (health
        may answer as soon as the first does)."""
        self.expected_workers = workers
        self.name = name
        self.log = logs / f"{name}.log"
        for _attempt in range(3):  # another process may take the free port first
            self.target = f"127.0.0.1:{free_port()}"
            command = [
                *(sys.executable, "-m", "attrgate", "serve", "--insecure"),
                *("--listen", self.target, "--admin-listen", f"127.0.0.1:{free_port()}"),
                *args,
            ]
            with self.log.open("ab") as log:
                log.write(f"--- {' '.join(command)}\n".encode())
                log.flush()
                started = time.monotonic()
                self.process = subprocess.Popen(
                    command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
            if self._wait_serving():
                self.start_seconds = time.monotonic() - started
                self.start_cpu = sum(procstat.cpu_seconds(pid) for pid in self.processes())
                self.start_rss_mib = max(rss_mib(pid) for pid in self.workers())
                return
            self.stop()
            if "cannot listen" not in self.tail():
                break
        raise RuntimeError(f"{name} did not start{self.tail()}")

    def _wait_serving(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if serving(self.target) and self._all_listening():
                return True
            time.sleep(0.01)
        return False

    def _all_listening(self) -> bool:
        if self.expected_workers <= 1:
            return True
        workers = procstat.children(self.pid)
        listening = [w for w in workers if procstat.connections(w, self.port, procstat.LISTEN)]
        return len(listening) >= self.expected_workers

    @property
    def port(self) -> int:
        return int(self.target.rsplit(":", 1)[1])

    def stop(self, timeout: float = 3.0) -> None:
        """Its drain is not measured: calls gRPC received but never handed over (under the
        heaviest load) would hold it for the whole --grace."""
        super().stop(timeout)

    def processes(self) -> list[int]:
        """Itself, then its children (the workers of --workers N)."""
        return [self.pid, *procstat.children(self.pid)]

    def workers(self) -> list[int]:
        """The processes serving: its children when it has any (--workers), else itself."""
        return self.processes()[1:] or [self.pid]


def rss_mib(pid: int) -> float:
    return procstat.status_kib(pid, "VmRSS") / 1024


def peak_rss_mib(pid: int) -> float:
    return procstat.status_kib(pid, "VmHWM") / 1024


def supports_workers(env: dict[str, str]) -> bool:
    help_text = subprocess.run(
        [sys.executable, "-m", "attrgate", "serve", "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    return "--workers" in help_text


def denial_status(target: str) -> bytes:
    """The google.rpc.Status attrgate answers the denied request with (serialized)."""
    request = pb.UpdateUserAttributesRequest(
        user_pool_id=POOL,
        username="bench-user",
        user_attributes=[pb.AttributeType(name=DENIED, value="Lovelace")],
    )
    with grpc.insecure_channel(target) as channel:
        call: grpc.UnaryUnaryMultiCallable[pb.UpdateUserAttributesRequest, bytes]
        call = channel.unary_unary(
            "/attrgate.v1.UserAttributes/UpdateUserAttributes",
            request_serializer=pb.UpdateUserAttributesRequest.SerializeToString,
        )
        try:
            call(request, metadata=(("x-attrgate-caller", CALLER),), timeout=10)
        except grpc.RpcError as error:
            status = rpc_status.from_call(error)
            if status is not None:
                return bytes(status.SerializeToString())
            raise RuntimeError(f"the denial carried no google.rpc.Status: {error}") from error
    raise RuntimeError(f"attrgate allowed {DENIED}: the bench's policy is not what it expects")


# --- measuring -----------------------------------------------------------------------------------


@dataclass
class Load:
    """One kind of load: `count` processes running `command` (a driver or the boto3 loop)."""

    command: list[str]
    count: int = 1


@dataclass
class Measurement:
    name: str
    expected: str  # the status code every call should end with: OK or PERMISSION_DENIED
    seconds: float
    codes: dict[str, int]
    reasons: dict[str, dict[str, int]]
    messages: dict[str, str]  # the first error message of each code
    rps: float  # calls ended in the window per second (every code)
    expected_rps: float
    p50_ms: float | None
    p99_ms: float | None
    by_code_ms: dict[str, tuple[float | None, float | None]]  # p50, p99 of each status code
    cpu_ms_per_call: float | None  # measured processes' CPU over calls ended in the window
    server_cpu_share: float  # of one core
    worker_cpu: list[float]  # CPU seconds in the window, per measured process (parent first)
    load_cpu_share: float  # the load processes' CPU, of one core
    stub_cpu_share: float | None
    machine_busy: float  # of all cores: everything running, others' tests included
    rss_mib: list[float]  # VmRSS of each measured process at the window's end
    connections: list[int]  # connections each measured process held on the port then
    trailer_bytes: int | None
    stub_calls: dict[str, int] = field(default_factory=dict)
    stub_most_open: int | None = None
    rounds: int = 1
    # Each code's latencies in µs, sorted: to merge rounds (not written to the JSON).
    latencies_us: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @property
    def errors(self) -> dict[str, int]:
        return {code: n for code, n in self.codes.items() if code != self.expected}


@dataclass
class Tally:
    """Answers pooled from several parts of one measurement: its load processes, or its rounds.
    The first part's error message of a code is kept."""

    codes: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)
    by_code: dict[str, list[int]] = field(default_factory=dict)  # latencies in µs
    messages: dict[str, str] = field(default_factory=dict)

    def add(
        self,
        codes: dict[str, int],
        reasons: dict[str, dict[str, int]],
        latencies_us: dict[str, list[int]],
        messages: dict[str, str],
    ) -> None:
        self.messages = messages | self.messages
        for code, n in codes.items():
            self.codes[code] = self.codes.get(code, 0) + n
        for code, found in reasons.items():
            into = self.reasons.setdefault(code, {})
            for reason, n in found.items():
                into[reason] = into.get(reason, 0) + n
        for code, values in latencies_us.items():
            self.by_code.setdefault(code, []).extend(values)

    def sorted_latencies(self) -> dict[str, list[int]]:
        for values in self.by_code.values():
            values.sort()
        return self.by_code


def counted(
    window: float,
    codes: dict[str, int],
    expected: str,
    by_code: dict[str, list[int]],
    server_cpu: float,
) -> dict[str, Any]:
    """A measurement's figures from what its window counted (`by_code`: sorted latencies)."""
    calls = sum(codes.values())
    latencies = sorted(v for values in by_code.values() for v in values)
    return {
        "rps": calls / window,
        "expected_rps": codes.get(expected, 0) / window,
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "by_code_ms": {
            code: (percentile(values, 0.5), percentile(values, 0.99))
            for code, values in by_code.items()
        },
        "cpu_ms_per_call": server_cpu / calls * 1000 if calls else None,
        "server_cpu_share": server_cpu / window,
    }


def merged(rounds: Sequence[Measurement]) -> Measurement:
    """Rounds of one scenario as one measurement: calls, CPU and latencies pooled (CPU per call
    is all the CPU over all the calls); what is read at a window's end, from the last round."""
    last = rounds[-1]
    window = sum(m.seconds for m in rounds)
    tally = Tally()
    stub_calls: dict[str, int] = {}
    for m in rounds:
        tally.add(m.codes, m.reasons, m.latencies_us, m.messages)
        for op, n in m.stub_calls.items():
            stub_calls[op] = stub_calls.get(op, 0) + n
    by_code = tally.sorted_latencies()
    worker_cpu = [sum(cpu) for cpu in zip(*(m.worker_cpu for m in rounds), strict=True)]
    server_cpu = sum(worker_cpu)

    def share(part: Callable[[Measurement], float | None]) -> float:
        return sum((part(m) or 0.0) * m.seconds for m in rounds) / window

    return Measurement(
        name=last.name,
        expected=last.expected,
        seconds=window,
        codes=tally.codes,
        reasons=tally.reasons,
        messages=tally.messages,
        **counted(window, tally.codes, last.expected, by_code, server_cpu),
        worker_cpu=worker_cpu,
        load_cpu_share=share(lambda m: m.load_cpu_share),
        stub_cpu_share=(
            share(lambda m: m.stub_cpu_share)
            if any(m.stub_cpu_share is not None for m in rounds)
            else None
        ),
        machine_busy=share(lambda m: m.machine_busy),
        rss_mib=last.rss_mib,
        connections=last.connections,
        trailer_bytes=last.trailer_bytes,
        stub_calls=stub_calls,
        stub_most_open=last.stub_most_open,
        rounds=len(rounds),
        latencies_us=by_code,
    )


def percentile(sorted_values: Sequence[int], share: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(share * len(sorted_values)) - 1))
    return sorted_values[index] / 1000.0


def cpu_of(pids: Sequence[int]) -> dict[int, float]:
    return {pid: procstat.cpu_seconds(pid) for pid in pids}


class Bench:
    def __init__(
        self,
        logs: Path,
        warmup: float,
        seconds: float,
        say: Callable[[str], None],
        env: dict[str, str],
    ):
        self.env = env
        self.logs = logs
        self.warmup = warmup
        self.seconds = seconds
        self.say = say
        self.stub: Role | None = None
        self.stub_url = ""
        self._started = 0

    # The stub's control requests.
    def _stub_request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        host, port = self.stub_url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            connection.request(method, path, body=json.dumps(body or {}))
            return json.loads(connection.getresponse().read())
        finally:
            connection.close()

    def start_stub(self) -> None:
        self.stub = Role("stub", role("stub", "--until-stdin-closes"), self.logs, self.env)
        self.stub_url = f"http://127.0.0.1:{self.stub.message(START_TIMEOUT)['port']}"

    def set_latency(self, seconds: float) -> None:
        self._stub_request("POST", "/__bench/latency", {"seconds": seconds})

    def stub_stats(self) -> dict[str, Any]:
        found: dict[str, Any] = self._stub_request("GET", "/__bench/stats")
        return found

    def measure(
        self,
        name: str,
        load: Load,
        measured: Callable[[list[Role]], list[int]],
        expected: str = "OK",
        warmup: float | None = None,
        port: int | None = None,
        seconds: float | None = None,
    ) -> Measurement:
        """Start the load, give it a warm-up, then measure one window (`seconds`, by default
        the bench's). `port`: the server's, to count each measured process's connections on it
        at the window's end."""
        warmup = self.warmup if warmup is None else warmup
        self.say(f"  {name} ...")
        loads: list[Role] = []
        try:
            for _ in range(load.count):
                self._started += 1
                loads.append(Role(f"load-{self._started}", load.command, self.logs, self.env))
            for process in loads:
                if not process.message(START_TIMEOUT).get("ready"):
                    raise RuntimeError(f"{process.name} did not say it was ready")
            stub_before = self.stub_stats() if self.stub else {}
            t0 = time.time() + warmup
            t1 = t0 + (self.seconds if seconds is None else seconds)
            for process in loads:
                process.send({"t0": t0, "t1": t1})
            pids = measured(loads)
            load_pids = [p.pid for p in loads]
            stub_pid = self.stub.pid if self.stub else None
            others = load_pids + ([stub_pid] if stub_pid else [])
            time.sleep(max(0.0, t0 - time.time()))
            cpu0, other0, busy0 = cpu_of(pids), cpu_of(others), procstat.machine_busy()
            time.sleep(max(0.0, t1 - time.time()))
            cpu1, other1, busy1 = cpu_of(pids), cpu_of(others), procstat.machine_busy()
            rss = [procstat.status_kib(pid, "VmRSS") / 1024 for pid in pids]
            held = [procstat.connections(pid, port) for pid in pids] if port else []
            results = [process.message(120.0) for process in loads]
            stub_after = self.stub_stats() if self.stub else {}
        finally:
            for process in loads:
                process.stop()
        tally = Tally()
        trailer: int | None = None
        for result in results:
            tally.add(
                result["codes"],
                result["reasons"],
                result["latencies_us"],
                result.get("messages", {}),
            )
            trailer = trailer if trailer is not None else result["trailer_bytes"]
        codes, by_code = tally.codes, tally.sorted_latencies()
        window = t1 - t0
        worker_cpu = [cpu1[pid] - cpu0[pid] for pid in pids]
        server_cpu = sum(worker_cpu)
        busy, total = busy1[0] - busy0[0], busy1[1] - busy0[1]
        stub_calls = {
            op: n - stub_before.get("counts", {}).get(op, 0)
            for op, n in stub_after.get("counts", {}).items()
        }
        measurement = Measurement(
            name=name,
            expected=expected,
            seconds=window,
            codes=codes,
            reasons=tally.reasons,
            messages=tally.messages,
            **counted(window, codes, expected, by_code, server_cpu),
            worker_cpu=worker_cpu,
            load_cpu_share=sum(other1[p] - other0[p] for p in load_pids) / window,
            stub_cpu_share=(other1[stub_pid] - other0[stub_pid]) / window if stub_pid else None,
            machine_busy=busy / total if total else 0.0,
            rss_mib=rss,
            connections=held,
            trailer_bytes=trailer,
            stub_calls=stub_calls,
            stub_most_open=stub_after.get("most_open"),
            latencies_us=by_code,
        )
        self.say(
            f"    {measurement.rps:8.1f} calls/s  cpu/call "
            f"{fmt(measurement.cpu_ms_per_call, 'ms')}  p50 {fmt(measurement.p50_ms, 'ms')}  "
            f"p99 {fmt(measurement.p99_ms, 'ms')}  codes {codes}"
        )
        return measurement


def fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{(' ' + unit) if unit else ''}"


def driver(target: str, in_flight: int, attribute: str, **options: Any) -> list[str]:
    args = ["--target", target, "--in-flight", str(in_flight), "--attribute", attribute]
    args += ["--caller", CALLER, "--pool", POOL]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    return role("driver", *args)


# --- the scenarios and their verdicts -----------------------------------------------------------


@dataclass
class Row:
    scenario: str
    measured: str
    baseline: str
    ratio: str
    target: str
    met: bool | None  # None: not measured, or nothing to judge
    note: str = ""
    # What limits the figure, from figures measured in the same run: printed with a miss, so
    # that a missed target names its cause.
    limit: str = ""


ROWS = ("allowed", "denied", "latency100", "latency1s", "workers")


@dataclass
class Options:
    rows: Sequence[str] = ROWS
    warmup: float = 1.5
    seconds: float = 6.0
    logs: Path | None = None
    server: Path = REPO / "server"  # the attrgate measured: a folder holding its package


def run(options: Options, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every measurement the selected rows need, then the rows; the whole result as a dict."""
    procstat.raise_nofile()  # every process started here inherits it
    rows = set(options.rows)
    unknown = rows - set(ROWS)
    if unknown:
        raise ValueError(f"unknown rows {sorted(unknown)}; known: {', '.join(ROWS)}")
    logs = options.logs or Path(tempfile.mkdtemp(prefix="attrgate-bench-perf-"))
    logs.mkdir(parents=True, exist_ok=True)
    policies = logs / "policies"
    policies.mkdir(exist_ok=True)
    (policies / "bench.yaml").write_text(POLICY)
    env = role_env(options.server)
    bench = Bench(logs, options.warmup, options.seconds, say, env)
    measurements: dict[str, Measurement] = {}
    started: dict[str, float] = {}
    start_cpu: dict[str, float] = {}
    memory: dict[str, float] = {}
    # What the peak RSS compares with: attrgate's VmRSS at SERVING, the bare grpc.aio server's
    # at start and its peak under 2,048 in flight.
    memory_context: dict[str, float] = {}
    shares: list[float] = []
    workers_available: bool | None = None
    ag: Attrgate | None = None
    bares: list[Role] = []

    def attrgate_args(*extra: str) -> list[str]:
        return [
            *("--region", "us-east-1", "--cognito-endpoint", bench.stub_url),
            *("--policies", str(policies), "--decision-log", "/dev/null"),
            *extra,
        ]

    def itself(loads: list[Role]) -> list[int]:
        return [p.pid for p in loads]

    try:
        say(f"logs in {logs}")
        # As installed (pip compiles bytecode): a tree run from source under
        # PYTHONDONTWRITEBYTECODE would compile attrgate's modules at every start.
        compileall.compile_dir(options.server, quiet=2)
        bench.start_stub()
        say("starting attrgate ...")
        ag = Attrgate("attrgate", attrgate_args(), logs, env)
        started["1 worker"] = ag.start_seconds
        start_cpu["1 worker"] = ag.start_cpu
        memory_context["attrgate idle"] = ag.start_rss_mib
        denial = denial_status(ag.target)

        def start_bare(*extra: str) -> tuple[str, int]:
            bare = Role(
                "bare-grpc",
                role(
                    "baseline_grpc",
                    *("--until-stdin-closes", "--denial-status", base64.b64encode(denial).decode()),
                    *extra,
                ),
                bench.logs,
                env,
            )
            bares.append(bare)
            return f"127.0.0.1:{bare.message(START_TIMEOUT)['port']}", bare.pid

        def stop_bares() -> None:
            while bares:
                bares.pop().stop()

        def on_attrgate(_: list[Role]) -> list[int]:
            assert ag is not None  # the one serving now: --workers 2 replaces the first
            return ag.processes()

        def allowed(seconds: float | None = None) -> Measurement:
            assert ag is not None
            return bench.measure(
                "attrgate allowed, 64 in flight, 0 ms upstream",
                Load(driver(ag.target, 64, ALLOWED)),
                on_attrgate,
                port=ag.port,
                seconds=seconds,
            )

        def denied(seconds: float | None = None) -> Measurement:
            assert ag is not None
            return bench.measure(
                "attrgate denied, 2 x 64 in flight",
                Load(driver(ag.target, 64, DENIED, **LOAD_DENIED), count=2),
                on_attrgate,
                port=ag.port,
                expected="PERMISSION_DENIED",
                seconds=seconds,
            )

        # The ratio rows: each scenario and its references in alternating rounds (A B A B),
        # so that a drift in the machine's speed (shared cores, a neighbour's load) weighs on
        # both sides of a ratio alike.
        scenarios: list[tuple[str, Callable[[float], Measurement]]] = []
        if "allowed" in rows:
            bench.set_latency(0.0)
            # The floor of any proxy on this stack: the gRPC hop plus botocore's serializer and
            # signer and one aiohttp POST, nothing else (perf/baseline_grpc.py --forward).
            floor_target, floor_pid = start_bare("--forward", bench.stub_url)
            boto3 = role("baseline_boto3", "--endpoint", bench.stub_url, "--threads", "8")
            boto3_load = Load(boto3)
            scenarios += [
                (
                    "boto3",
                    lambda s: bench.measure(
                        "direct boto3 calls (8 threads)", boto3_load, itself, seconds=s
                    ),
                ),
                (
                    "bare_forward",
                    lambda s: bench.measure(
                        "zero-logic proxy: grpc.aio + botocore signer + aiohttp, 64 in flight",
                        Load(driver(floor_target, 64, ALLOWED)),
                        lambda _: [floor_pid],
                        seconds=s,
                    ),
                ),
                ("allowed", allowed),
            ]
        if "denied" in rows:
            bare_target, bare_pid = start_bare()
            measurements["bare_allowed"] = bench.measure(
                "bare grpc.aio: answer, 64 in flight",
                Load(driver(bare_target, 64, ALLOWED)),
                lambda _: [bare_pid],
            )
            scenarios += [
                (
                    "bare_denied",
                    lambda s: bench.measure(
                        "bare grpc.aio: abort, 2 x 64 in flight",
                        Load(driver(bare_target, 64, DENIED, **LOAD_DENIED), count=2),
                        lambda _: [bare_pid],
                        expected="PERMISSION_DENIED",
                        seconds=s,
                    ),
                ),
                ("denied", denied),
            ]
        rounds: dict[str, list[Measurement]] = {}
        for _ in range(ROUNDS if scenarios else 0):
            for key, measure in scenarios:
                rounds.setdefault(key, []).append(measure(bench.seconds / ROUNDS))
        measurements.update({key: merged(done) for key, done in rounds.items()})
        stop_bares()
        if "allowed" not in measurements and rows & {"latency100", "latency1s"}:
            bench.set_latency(0.0)
            measurements["allowed"] = allowed()  # the CPU-bound throughput they are judged by
        if "denied" not in measurements and "workers" in rows:
            measurements["denied"] = denied()
        if "latency1s" in rows:
            bare_target, bare_pid = start_bare("--latency", "1.0")
            memory_context["bare idle"] = rss_mib(bare_pid)
            measurements["bare_latency1s"] = bench.measure(
                "bare grpc.aio: answer after 1 s, 2 x 1024 in flight",
                Load(driver(bare_target, 1024, ALLOWED, **LOAD_2048), count=2),
                lambda _: [bare_pid],
                warmup=max(options.warmup, 2.5),
            )
            memory_context["bare peak"] = peak_rss_mib(bare_pid)
            stop_bares()
        if "latency100" in rows:
            bench.set_latency(0.1)
            measurements["latency100"] = bench.measure(
                "attrgate allowed, 256 in flight, 100 ms upstream",
                Load(driver(ag.target, 256, ALLOWED, ramp=0.1)),
                on_attrgate,
                port=ag.port,
            )
        if "latency1s" in rows:
            bench.set_latency(1.0)
            memory_context["attrgate before 2048"] = rss_mib(ag.pid)
            measurements["latency1s"] = bench.measure(
                "attrgate allowed, 2 x 1024 in flight, 1 s upstream",
                Load(driver(ag.target, 1024, ALLOWED, **LOAD_2048), count=2),
                on_attrgate,
                port=ag.port,
                warmup=max(options.warmup, 2.5),
            )
            memory_context["attrgate after 2048"] = peak_rss_mib(ag.pid)
            bench.set_latency(0.0)
        memory["1 worker"] = peak_rss_mib(ag.pid)
        ag.stop()
        ag = None

        if "workers" in rows:
            workers_available = supports_workers(env)
            if workers_available:
                say("starting attrgate --workers 2 ...")
                ag = Attrgate("attrgate-workers", attrgate_args("--workers", "2"), logs, env, 2)
                started["2 workers"] = ag.start_seconds
                start_cpu["2 workers"] = ag.start_cpu
                two = bench.measure(
                    "attrgate --workers 2 denied, 2 x 64 in flight",
                    Load(driver(ag.target, 64, DENIED, **LOAD_DENIED), count=2),
                    on_attrgate,
                    port=ag.port,
                    expected="PERMISSION_DENIED",
                )
                measurements["workers2_denied"] = two
                workers = two.worker_cpu[1:]  # after the parent's own
                total = sum(workers)
                shares = [c / total for c in workers] if total else []
                memory["2 workers (largest)"] = max(
                    (peak_rss_mib(pid) for pid in ag.workers()),
                    default=0.0,
                )
                ag.stop()
                ag = None
    finally:
        for process in (ag, *bares, bench.stub):
            if process is not None:
                process.stop()

    figures = Figures(
        measurements, started, start_cpu, memory, memory_context, shares, workers_available
    )
    table = judge(figures, rows)
    return {
        "machine": {"cores": os.cpu_count(), "load_average": os.getloadavg()},
        "warmup_seconds": options.warmup,
        "window_seconds": options.seconds,
        "logs": str(logs),
        "server": str(options.server),
        "rows": [row.__dict__ for row in table],
        "measurements": {
            k: {n: v for n, v in m.__dict__.items() if n != "latencies_us"} | {"errors": m.errors}
            for k, m in measurements.items()
        },
        "start_to_serving_seconds": started,
        "start_cpu_seconds": start_cpu,
        "peak_rss_mib": memory,
        "memory_context_mib": memory_context,
        "worker_cpu_shares": shares,
    }


@dataclass
class Figures:
    """Everything one run measured, for the verdicts."""

    m: dict[str, Measurement]
    started: dict[str, float]
    start_cpu: dict[str, float]
    memory: dict[str, float]
    memory_context: dict[str, float]
    shares: list[float]
    workers_available: bool | None


def judge(figures: Figures, rows: set[str]) -> list[Row]:
    m = figures.m
    table: list[Row] = []

    def ratio_row(
        scenario: str, key: str, base_key: str, base_label: str, limit: float, aim: str = ""
    ) -> None:
        ours, base = m[key].cpu_ms_per_call, m[base_key].cpu_ms_per_call
        ratio = ours / base if ours and base else None
        table.append(
            Row(
                scenario,
                fmt(ours, "ms"),
                f"{fmt(base, 'ms')} ({base_label})",
                fmt(ratio, "x"),
                f"<= {limit:g}x{aim}",
                None if ratio is None else ratio <= limit,
                limit=limit_text(scenario, m),
            )
        )

    if "allowed" in rows:
        ratio_row(
            "server CPU per allowed request",
            "allowed",
            "boto3",
            "direct boto3 call",
            ALLOWED_CPU_RATIO,
            f" (aim {ALLOWED_CPU_AIM:g}x)",
        )
        floor = m["bare_forward"].cpu_ms_per_call
        boto3 = m["boto3"].cpu_ms_per_call
        ours = m["allowed"].cpu_ms_per_call
        table.append(
            Row(
                "(reference) zero-logic proxy",
                fmt(floor, "ms"),
                f"{fmt(boto3, 'ms')} (direct boto3 call)",
                fmt(floor / boto3 if floor and boto3 else None, "x"),
                "",
                None,
                "the gRPC hop + botocore's serializer and signer + one aiohttp POST, nothing "
                "else: the floor of any proxy on this stack; attrgate's allowed request costs "
                f"{fmt(ours / floor if ours and floor else None, 'x')} of it",
            )
        )
    if "denied" in rows:
        ratio_row(
            "server CPU per denied request",
            "denied",
            "bare_denied",
            "bare grpc.aio abort",
            DENIED_CPU_RATIO,
        )
        bare = m["bare_allowed"]
        table.append(
            Row(
                "(reference) bare grpc.aio answer",
                fmt(bare.cpu_ms_per_call, "ms"),
                "",
                "",
                "",
                None,
                "CPU per call of an empty answer",
            )
        )
    cpu_bound = m["allowed"].expected_rps if "allowed" in m else None
    for key, in_flight, latency in (("latency100", 256, 0.1), ("latency1s", 2048, 1.0)):
        if key not in m:
            continue
        got = m[key]
        assert cpu_bound is not None
        ceiling = min(in_flight / latency, cpu_bound)
        share = got.expected_rps / ceiling if ceiling else None
        errors = got.errors
        ok = got.by_code_ms.get(got.expected, (None, None))
        met = share is not None and share >= THROUGHPUT_SHARE
        if key == "latency1s":
            met = met and not errors
        table.append(
            Row(
                f"{in_flight} in flight, {latency * 1000:g} ms upstream",
                f"{got.expected_rps:.0f} rps",
                f"{ceiling:.0f} rps (min({in_flight / latency:.0f}, CPU-bound {cpu_bound:.0f}))",
                fmt(share * 100 if share is not None else None, "%", 0),
                f">= {THROUGHPUT_SHARE:.0%}" + (", no errors" if key == "latency1s" else ""),
                met,
                f"{got.expected_rps / (in_flight / latency):.0%} of {in_flight / latency:.0f}; "
                f"OK p50 {fmt(ok[0], 'ms', 0)} p99 {fmt(ok[1], 'ms', 0)}"
                + (f"; errors {errors_text(got)}" if errors else "")
                + reference_text(m.get(f"bare_{key}")),
                limit=cpu_bound_limit(got, m["allowed"]),
            )
        )
    if "workers" in rows:
        if not figures.workers_available or "workers2_denied" not in m:
            table.append(
                Row(
                    "--workers 2 denied throughput",
                    "-",
                    "-",
                    "-",
                    f">= {WORKERS_SPEEDUP:g}x, each >= 1/3",
                    None,
                    "not available in this build",
                )
            )
        else:
            one, two = m["denied"].expected_rps, m["workers2_denied"].expected_rps
            speedup = two / one if one else None
            shares = figures.shares
            fair = len(shares) >= 2 and min(shares) >= WORKER_SHARE
            table.append(
                Row(
                    "--workers 2 denied throughput",
                    f"{two:.0f} rps",
                    f"{one:.0f} rps (1 worker)",
                    fmt(speedup, "x"),
                    f">= {WORKERS_SPEEDUP:g}x, each >= 1/3",
                    speedup is not None and speedup >= WORKERS_SPEEDUP and fair,
                    "worker CPU shares "
                    + ", ".join(f"{s:.0%}" for s in shares)
                    + "; connections per worker "
                    + ", ".join(map(str, m["workers2_denied"].connections[1:])),
                    limit=workers_limit(m["denied"]),
                )
            )
    if figures.memory:
        row = worst_row("peak RSS per worker (VmHWM)", figures.memory, "MiB", RSS_MIB, 0)
        row.limit = memory_limit(figures.memory, figures.memory_context)
        table.append(row)
    if figures.started:
        row = worst_row("start to SERVING", figures.started, "s", START_SECONDS, 2)
        # What starting cost in CPU: on a busy machine the wall time says little.
        row.limit = start_limit(figures.start_cpu)
        table.append(row)
    return table


# --- what limits a figure: measured in the same run ------------------------------------------


def limit_text(scenario: str, m: dict[str, Measurement]) -> str:
    """For the ratio rows: what the stack itself costs, and what attrgate's work adds."""
    if scenario.endswith("allowed request"):
        floor, boto3 = m["bare_forward"].cpu_ms_per_call, m["boto3"].cpu_ms_per_call
        ours = m["allowed"].cpu_ms_per_call
        decision = decision_ms(m)
        if not (floor and boto3 and ours):
            return ""
        text = (
            f"the zero-logic proxy (the stack: gRPC hop, signer, HTTP) costs {floor / boto3:.2f}x"
        )
        if decision is None:
            return text
        # An approximation: a denial's extra also builds status details an allowed call does
        # not, and an allowed call's decision differs in its findings.
        text += (
            f"; with about the decision (what a denial adds to a bare abort, {decision:.2f} ms: "
            f"validation, the engine, the decision log) {(floor + decision) / boto3:.2f}x"
        )
        rest = ours - floor - decision
        if rest <= 0:
            return text + "; nothing measurable left above those two"
        return (
            f"{text}; the remaining {rest:.2f} ms is the upstream's own behaviours (botocore's "
            "retry events and parser, timeouts, the call's task, span, metrics; "
            "docs/performance.md)"
        )
    if scenario.endswith("denied request"):
        bare, decision = m["bare_denied"].cpu_ms_per_call, decision_ms(m)
        if bare is None or decision is None:
            return ""
        return (
            f"gRPC's own cost of an aborted call is {bare:.2f} ms (the bare abort); attrgate's "
            f"part, {decision:.2f} ms, is validation, the engine, the status details and the "
            "decision-log entry (bench/profile_deny.py)"
        )
    return ""


def decision_ms(m: dict[str, Measurement]) -> float | None:
    """What attrgate's handler adds to a bare abort: the decision and its record."""
    if "denied" not in m or "bare_denied" not in m:
        return None
    ours, bare = m["denied"].cpu_ms_per_call, m["bare_denied"].cpu_ms_per_call
    return ours - bare if ours and bare else None


def cpu_bound_limit(got: Measurement, at_64: Measurement) -> str:
    """A throughput row is judged against the throughput at 64 in flight. Both being CPU-bound,
    the share is (CPU share here / there) x (CPU per call there / here): which of the two
    factors fell short."""
    here, there = got.cpu_ms_per_call, at_64.cpu_ms_per_call
    core_here, core_there = got.server_cpu_share, at_64.server_cpu_share
    if not (here and there and core_there):
        return ""
    return (
        f"the server's share of a core {core_here:.0%} here, {core_there:.0%} at 64 in flight "
        f"({core_here / core_there:.2f}); its CPU per call {here:.2f} ms here, {there:.2f} ms "
        f"at 64 in flight ({there / here:.2f}: more connections, timers and queued work)"
    )


def workers_limit(one: Measurement) -> str:
    """What two workers can reach when the load driver shares the machine's cores (all calls
    counted on both sides: CPU per call is per call ended, of whatever code)."""
    cores = len(os.sched_getaffinity(0))
    if not (one.cpu_ms_per_call and one.rps):
        return ""
    worker = one.cpu_ms_per_call
    driver = one.load_cpu_share / one.rps * 1000  # ms of the driver's CPU per call
    ceiling = cores * 1000 / (worker + driver)
    return (
        f"{cores} cores shared with the load driver: at most {cores} / ({worker:.2f} ms worker "
        f"+ {driver:.2f} ms driver per call, measured with one worker) = {ceiling:.0f} calls/s, "
        f"{ceiling / one.rps:.2f}x one worker"
    )


def memory_limit(memory: dict[str, float], context: dict[str, float]) -> str:
    """Attrgate's RSS at SERVING, then its growth under 2,048 in flight beside the bare
    server's under the same load (each read just before and at the end of that load)."""
    idle = context.get("attrgate idle")
    if idle is None:
        return ""
    text = f"attrgate at SERVING {idle:.0f} MiB (the libraries and botocore's data)"
    before, after = context.get("attrgate before 2048"), context.get("attrgate after 2048")
    if before is not None and after is not None:
        text += f"; 2,048 in flight took it from {before:.0f} to {after:.0f} MiB"
    bare_idle, bare_peak = context.get("bare idle"), context.get("bare peak")
    if bare_idle is not None and bare_peak is not None:
        text += (
            f"; the bare grpc.aio server under the same load: {bare_idle:.0f} to "
            f"{bare_peak:.0f} MiB (gRPC's own memory per call in flight)"
        )
    return text


def start_limit(start_cpu: dict[str, float]) -> str:
    """Starting is CPU: imports, the boto3 client, the policy set."""
    cores = len(os.sched_getaffinity(0))
    spent = ", ".join(f"{k} {cpu:.2f} s" for k, cpu in start_cpu.items())
    return (
        f"CPU spent starting (imports, the boto3 client, the policy set; every process and "
        f"thread): {spent}, on {cores} cores"
    )


def worst_row(
    scenario: str, figures: dict[str, float], unit: str, limit: float, digits: int
) -> Row:
    """A row judging the largest of `figures` (one per attrgate started) against `limit`."""
    worst = max(figures.values())
    return Row(
        scenario,
        f"{worst:.{digits}f} {unit}",
        ", ".join(f"{k}: {v:.{digits}f} {unit}" for k, v in figures.items()),
        "",
        f"<= {limit:g} {unit}",
        worst <= limit,
    )


def reference_text(bare: Measurement | None) -> str:
    if bare is None:
        return ""
    text = f"; bare grpc.aio under the same load: {bare.expected_rps:.0f} rps"
    return text + (f", errors {errors_text(bare)}" if bare.errors else "")


def errors_text(measurement: Measurement) -> str:
    parts = []
    for code, n in sorted(measurement.errors.items(), key=lambda kv: -kv[1]):
        reasons = measurement.reasons.get(code, {})
        top = max(reasons, key=lambda r: reasons[r]) if reasons else ""
        p50 = measurement.by_code_ms.get(code, (None, None))[0]
        parts.append(f"{code} {n} ({top + ', ' if top else ''}p50 {fmt(p50, 'ms', 0)})")
    return ", ".join(parts)


def render(result: dict[str, Any]) -> str:
    """The verdict table, then one line per load measurement."""
    header = ("scenario", "attrgate", "baseline", "ratio", "target", "verdict")
    lines = [header]
    notes = []
    for row in result["rows"]:
        verdict = {True: "met", False: "MISSED", None: "-"}[row["met"]]
        lines.append(
            (
                row["scenario"],
                row["measured"],
                row["baseline"],
                row["ratio"],
                row["target"],
                verdict,
            )
        )
        if row["note"]:
            notes.append(f"  {row['scenario']}: {row['note']}")
        if row["met"] is False and row.get("limit"):
            notes.append(f"  {row['scenario']}, limit: {row['limit']}")
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    out += ["", *notes, ""]
    out.append(
        f"{'load':<52} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu/call':>9} "
        f"{'server':>7} {'load':>6} {'stub':>6} {'busy':>5}  errors"
    )
    for m in result["measurements"].values():
        out.append(
            f"{m['name']:<52} {m['rps']:>8.1f} {fmt(m['p50_ms'], '', 1):>8} "
            f"{fmt(m['p99_ms'], '', 1):>8} {fmt(m['cpu_ms_per_call'], 'ms'):>9} "
            f"{m['server_cpu_share']:>7.0%} {m['load_cpu_share']:>6.0%} "
            f"{'-' if m['stub_cpu_share'] is None else format(m['stub_cpu_share'], '.0%'):>6} "
            f"{m['machine_busy']:>5.0%}  {m['errors'] or ''}"
        )
    out.append(
        "(server, load, stub: CPU of one core; busy: the whole machine's, other processes "
        "included; cpu/call: the measured server's, or the boto3 loop's own)"
    )
    return "\n".join(out)
