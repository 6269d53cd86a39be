"""A grpc.aio load driver: N callers in closed loop (each sends, waits for the answer, sends again)
against attrgate.v1.UserAttributes/UpdateUserAttributes, spread over several channels (one HTTP/2
connection each) so the client side is not one connection's bottleneck.

    python -m perf.driver --target HOST:PORT --in-flight N [...]

Protocol (JSON lines): prints {"ready": true} once every channel is connected, then reads one
line from stdin, {"t0": EPOCH, "t1": EPOCH}, and starts the load at once; calls that end within
[t0, t1] are the measured ones (before t0 is the warm-up). At t1 the callers send no more; the
calls in flight are waited for, never cancelled (grpc.aio clients leak on cancelled calls), and
the last line is the result: completions in the window by status code (and ErrorInfo reason, for
the first errors of each code), their latencies, and the size of one error's trailers. Latencies
(microseconds) are listed by status code.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import grpc
import grpc.aio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from attrgate.v1 import attrgate_pb2 as pb
from perf.procstat import raise_nofile

METHOD = "/attrgate.v1.UserAttributes/UpdateUserAttributes"
CALLER_HEADER = "x-attrgate-caller"
REASONS_PER_CODE = 50  # errors per code whose ErrorInfo reason is read (it costs the driver CPU)
CHANNEL_OPTIONS = [
    # A channel of its own connection each: channels with the same target and arguments share a
    # subchannel (one TCP connection) by default.
    ("grpc.use_local_subchannel_pool", 1),
]


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    info = error_details_pb2.ErrorInfo()
    for detail in status.details if status is not None else ():
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def trailer_bytes(error: grpc.aio.AioRpcError) -> int:
    """Bytes of the error's trailers as sent (keys and values; binary ones base64-encoded) plus
    its grpc-message."""
    size = len((error.details() or "").encode())
    for key, value in error.trailing_metadata() or ():
        raw = value if isinstance(value, bytes) else str(value).encode()
        encoded = (len(raw) + 2) // 3 * 4 if key.endswith("-bin") else len(raw)
        size += len(key) + encoded
    return size


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        request = pb.UpdateUserAttributesRequest(
            user_pool_id=args.pool,
            username=args.username,
            user_attributes=[pb.AttributeType(name=args.attribute, value=args.value)],
        )
        self.payload = request.SerializeToString()
        self.metadata = ((CALLER_HEADER, args.caller),)
        self.codes: Counter[str] = Counter()
        self.reasons: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.latencies_us: defaultdict[str, list[int]] = defaultdict(list)  # by status code
        self.outside = 0  # calls that ended in the warm-up or after t1
        self.trailer_bytes: int | None = None
        self.messages: dict[str, str] = {}  # the first error message of each code
        self.t0 = self.t1 = 0.0

    async def caller(self, call: Any, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        timeout = self.args.timeout
        while time.time() < self.t1:
            started = time.perf_counter()
            try:
                await call(self.payload, metadata=self.metadata, timeout=timeout)
                code = "OK"
                error = None
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                error = exc
            took = time.perf_counter() - started
            now = time.time()
            if not self.t0 <= now <= self.t1:
                self.outside += 1
            else:
                self.codes[code] += 1
                self.latencies_us[code].append(int(took * 1e6))
                if error is not None and sum(self.reasons[code].values()) < REASONS_PER_CODE:
                    self.reasons[code][reason_of(error)] += 1
                    self.messages.setdefault(code, error.details() or "")
                    if self.trailer_bytes is None:
                        self.trailer_bytes = trailer_bytes(error)
            if error is not None and self.args.error_pause:
                await asyncio.sleep(self.args.error_pause)

    async def run(self) -> dict[str, Any]:
        args = self.args
        count = -(-args.in_flight // args.per_channel)
        channels = [
            grpc.aio.insecure_channel(args.target, options=CHANNEL_OPTIONS) for _ in range(count)
        ]
        await asyncio.wait_for(
            asyncio.gather(*(c.channel_ready() for c in channels)), args.connect_timeout
        )
        calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]]
        calls = [c.unary_unary(METHOD) for c in channels]
        print(json.dumps({"ready": True}), flush=True)
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, sys.stdin.readline)
        window = json.loads(line)
        self.t0, self.t1 = float(window["t0"]), float(window["t1"])
        callers = [
            self.caller(calls[i % count], args.ramp * i / args.in_flight)
            for i in range(args.in_flight)
        ]
        await asyncio.gather(*callers)
        for channel in channels:
            await channel.close()
        return {
            "in_flight": args.in_flight,
            "channels": count,
            "window": [self.t0, self.t1],
            "codes": dict(self.codes),
            "reasons": {code: dict(r) for code, r in self.reasons.items()},
            "messages": self.messages,
            "outside_window": self.outside,
            "trailer_bytes": self.trailer_bytes,
            "latencies_us": dict(self.latencies_us),
        }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="grpc.aio closed-loop load driver")
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--in-flight", type=int, default=64, help="concurrent callers")
    parser.add_argument("--per-channel", type=int, default=64, help="callers per channel")
    parser.add_argument("--caller", default="bench-writer", help="x-attrgate-caller")
    parser.add_argument("--pool", default="us-east-1_bench")
    parser.add_argument("--username", default="bench-user")
    parser.add_argument("--attribute", default="given_name")
    parser.add_argument("--value", default="Ada")
    parser.add_argument("--timeout", type=float, default=30.0, help="each call's deadline")
    parser.add_argument(
        "--ramp", type=float, default=0.2, help="seconds over which the callers start, spread"
    )
    parser.add_argument(
        "--error-pause",
        type=float,
        default=0.05,
        help="seconds a caller waits after an error before sending again (no hot loop)",
    )
    parser.add_argument("--connect-timeout", type=float, default=20.0)
    args = parser.parse_args(argv)
    raise_nofile()
    result = asyncio.run(Load(args).run())
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
