"""Server CPU per denied request and per Check request, against a bare grpc.aio baseline.

The server runs in a child process (attrgate's real App, --insecure, the caller from the
x-attrgate-caller header; or a bare grpc.aio server whose handlers answer the same messages);
this process drives it with a grpc.aio client, so the client's CPU is not counted. The server's
CPU comes from /proc/<pid>/stat (every thread: gRPC's poller and the decision-log writer too),
read around each measured phase. With --profile, the child runs cProfile on its event loop
thread during the measured phases and this prints the top of it.

    python bench/profile_deny.py [--requests 10000] [--rounds 3] [--concurrency 32] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import grpc.aio

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "policies" / "profile-service.yaml"
SERVICE = "attrgate.v1.UserAttributes"
CALLER = (("x-attrgate-caller", "profile-api"),)
TICKS = os.sysconf("SC_CLK_TCK")


def denied_request() -> bytes:
    """Denied by policy: custom:role is on profile-service's deny list; given_name is fine."""
    from attrgate.v1 import attrgate_pb2 as pb

    return pb.UpdateUserAttributesRequest(
        user_pool_id="us-east-1_Bench1",
        username="ada",
        user_attributes=[
            pb.AttributeType(name="given_name", value="Ada"),
            pb.AttributeType(name="custom:role", value="admin"),
        ],
        client_metadata={"source": "bench"},
    ).SerializeToString()


# -- servers (child process) ---------------------------------------------------------------------


def _bare_handlers() -> grpc.GenericRpcHandler:
    """What a minimal handler does for the same answers: decode the request, build the same
    google.rpc.Status (ErrorInfo + BadRequest) and abort with it, or answer a Decision."""
    from google.protobuf import any_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2
    from grpc_status import rpc_status

    from attrgate.v1 import attrgate_pb2 as pb

    def status(decision_id: str) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(
            reason="POLICY_DENIED",
            domain="attrgate",
            metadata={"decision_id": decision_id, "policy_revision": "0123456789ab"},
        )
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field="user_attributes[1]",
                    description="custom:role: ATTRIBUTE_DENIED (policy profile-service deny[0]): "
                    "denied by policy",
                    reason="ATTRIBUTE_DENIED",
                )
            ]
        )
        details = [any_pb2.Any(), any_pb2.Any()]
        details[0].Pack(info)
        details[1].Pack(bad)
        return rpc_status.to_status(
            status_pb2.Status(
                code=code_pb2.PERMISSION_DENIED,
                message="denied by policy: custom:role (ATTRIBUTE_DENIED)",
                details=details,
            )
        )

    async def update(request: pb.UpdateUserAttributesRequest, context: grpc.aio.ServicerContext):  # type: ignore[type-arg]
        decision_id = os.urandom(16).hex()
        error = status(decision_id)
        metadata = (*error.trailing_metadata, ("x-attrgate-decision-id", decision_id))
        await context.abort(error.code, error.details, metadata)

    async def check(request: pb.UpdateUserAttributesRequest, context: grpc.aio.ServicerContext):  # type: ignore[type-arg]
        decision_id = os.urandom(16).hex()
        context.set_trailing_metadata((("x-attrgate-decision-id", decision_id),))
        return pb.Decision(
            allowed=False,
            decision_id=decision_id,
            policy_revision="0123456789ab",
            denied_by="policy",
            matched_policies=["profile-service"],
            violations=[
                pb.Violation(
                    attribute="custom:role",
                    policy="profile-service",
                    entry="deny[0]",
                    reason="ATTRIBUTE_DENIED",
                    message="attribute custom:role is denied by policy profile-service",
                )
            ],
        )

    handlers = {
        "UpdateUserAttributes": grpc.unary_unary_rpc_method_handler(
            update,
            request_deserializer=pb.UpdateUserAttributesRequest.FromString,
            response_serializer=pb.UpdateUserAttributesResponse.SerializeToString,
        ),
        "CheckUpdateUserAttributes": grpc.unary_unary_rpc_method_handler(
            check,
            request_deserializer=pb.UpdateUserAttributesRequest.FromString,
            response_serializer=pb.Decision.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


async def _serve(kind: str, profile_to: str | None, decision_log: str) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    profiler = cProfile.Profile()
    if profile_to:
        loop.add_signal_handler(signal.SIGUSR1, profiler.enable)

        def dump() -> None:
            profiler.disable()
            profiler.dump_stats(profile_to)
            print("dumped", flush=True)

        loop.add_signal_handler(signal.SIGUSR2, dump)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if kind == "bare":
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((_bare_handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await stop.wait()
        await server.stop(0)
        return
    from attrgate.app import App
    from attrgate.config import Settings

    settings = Settings(
        listen="127.0.0.1:0",
        insecure=True,
        region="us-east-1",
        policies=str(POLICY),
        decision_log=decision_log,
        policy_watch=False,
        grace=0.0,
        drain_delay=0.0,
    )
    app = App(settings, io.StringIO())
    await app.start()
    print(app.port, flush=True)
    await stop.wait()
    await app.stop(0)


# -- driver (this process) -----------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


async def _drive(target: str, method: str, count: int, concurrency: int, body: bytes) -> float:
    """Send `count` calls, `concurrency` at a time; the seconds it took."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                try:
                    await call(body, metadata=CALLER, timeout=10)
                except grpc.aio.AioRpcError as error:
                    if error.code() != grpc.StatusCode.PERMISSION_DENIED:
                        raise

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started


class Server:
    """A server child process: its port, its CPU, its profile."""

    def __init__(self, kind: str, args: argparse.Namespace, tree: str | None = None) -> None:
        """`tree`: another checkout's server/ folder to import attrgate from (before/after)."""
        self.kind = kind
        self.profile_to = str(Path(tempfile.mkdtemp()) / f"{kind}.prof") if args.profile else None
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if tree:
            env["PYTHONPATH"] = tree
        serves = "bare" if kind == "bare" else "attrgate"
        command = [sys.executable, __file__, "--serve", serves, "--decision-log", args.decision_log]
        if self.profile_to:
            command += ["--profile-to", self.profile_to]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        self.target = f"127.0.0.1:{int(self.process.stdout.readline())}"

    def cpu(self) -> float:
        return _cpu_seconds(self.process.pid)

    def profiling(self, on: bool) -> None:
        if self.profile_to and on:
            self.process.send_signal(signal.SIGUSR1)
            time.sleep(0.2)

    def print_profile(self, top: int) -> None:
        if not self.profile_to:
            return
        assert self.process.stdout is not None
        self.process.send_signal(signal.SIGUSR2)
        assert self.process.stdout.readline().strip() == "dumped"
        out = io.StringIO()
        stats = pstats.Stats(self.profile_to, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)
        print(f"--- {self.kind}: cProfile of the event-loop thread (measured phases) ---")
        print(out.getvalue())

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


METHODS = ("UpdateUserAttributes", "CheckUpdateUserAttributes")


def measure(servers: list[Server], args: argparse.Namespace) -> dict[tuple[str, str], list[float]]:
    """Server CPU µs per request, per (kind, method), one figure a round. The servers take
    turns within each round, so load from elsewhere on the machine falls on all alike."""
    body = denied_request()
    found: dict[tuple[str, str], list[float]] = {}
    for server in servers:  # warm up: caches, code paths, gRPC's pools
        for method in METHODS:
            asyncio.run(_drive(server.target, method, args.requests // 10, args.concurrency, body))
    for server in servers:
        server.profiling(True)
    for _ in range(args.rounds):
        for method in METHODS:
            for server in servers:
                before = server.cpu()
                asyncio.run(_drive(server.target, method, args.requests, args.concurrency, body))
                cpu = server.cpu() - before
                found.setdefault((server.kind, method), []).append(cpu / args.requests * 1e6)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("bare", "attrgate"))
    parser.add_argument(
        "--before", metavar="SERVER_DIR", help="also measure attrgate imported from this folder"
    )
    parser.add_argument("--decision-log", default=os.devnull)
    parser.add_argument("--serve", choices=("bare", "attrgate"), help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.profile_to, args.decision_log))
        return
    kinds = [args.only] if args.only else ["bare", "attrgate"]
    servers = [Server(kind, args) for kind in kinds]
    if args.before:
        servers.insert(1, Server("before", args, args.before))
        kinds.insert(1, "before")
    try:
        found = measure(servers, args)
        for server in servers:
            server.print_profile(args.top)
    finally:
        for server in servers:
            server.stop()
    print(f"server CPU µs per request, median of {args.rounds} rounds of {args.requests}:")
    print(
        f"{'':<28}"
        + "".join(f"{k:>10}" for k in kinds)
        + ("     ratio" if kinds[0] == "bare" else "")
    )
    for method in METHODS:
        row = [statistics.median(found[(k, method)]) for k in kinds]
        ratio = f"{row[-1] / row[0]:>9.2f}x" if kinds[0] == "bare" and len(row) > 1 else ""
        print(f"{method:<28}" + "".join(f"{v:>10.0f}" for v in row) + ratio)
    if args.rounds > 1:
        for (kind, method), values in found.items():
            print(f"  {kind} {method}: " + " ".join(f"{v:.0f}" for v in values))


if __name__ == "__main__":
    main()
