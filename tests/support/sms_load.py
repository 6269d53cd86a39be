"""Many SMS-triggering writes at once through a real `attrgate serve`, for the load test and
the store benchmark: the requests, one round of them, and what the store holds afterwards."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import grpc
import grpc.aio

from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.policies import sms_guard, svc_policy
from support.rpc import code_and_reason

POOL = "us-east-1_Load1"
ALLOW_PHONES = svc_policy("[{attribute: phone_number}]")
# Limits that never fill: every write is counted, none refused.
GUARD = sms_guard(
    """
limits:
  - {per: phone_number, max: 5, window: 1h}
  - {per: global, max: 1000000, window: 1h}
budget: {currency: USD, amount: 100000, window: month, pricePerMessage: {default: 0.01}}
""",
    name="load",
)
POLICIES = ALLOW_PHONES + GUARD
CHANNELS = 8
STORE_UNAVAILABLE = "UNAVAILABLE SMS_STORE_UNAVAILABLE"


def phone_number(n: int) -> str:
    """A valid US number per n (exchanges 200 and up, 10,000 lines each)."""
    return f"+1415{200 + n // 10_000:03d}{n % 10_000:04d}"


def outcome(error: grpc.aio.AioRpcError | None) -> str:
    return "OK" if error is None else " ".join(code_and_reason(error)).strip()


async def one_round(
    target: str, concurrent: int, first_phone: int, call_timeout: float = 60
) -> tuple[float, list[float], Counter[str]]:
    """`concurrent` writes at once, each of a new phone number: the seconds the round took,
    each call's latency, and the answers (OK, or code and reason)."""
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(CHANNELS)
    ]
    try:
        stubs = [pb_grpc.UserAttributesStub(c) for c in channels]
        for channel in channels:
            await channel.channel_ready()
        latencies: list[float] = []
        outcomes: Counter[str] = Counter()

        async def call(i: int) -> None:
            request = pb.UpdateUserAttributesRequest(
                user_pool_id=POOL,
                username="ada",
                user_attributes=[
                    pb.AttributeType(name="phone_number", value=phone_number(first_phone + i))
                ],
            )
            started = time.perf_counter()
            error = None
            try:
                await stubs[i % CHANNELS].UpdateUserAttributes(
                    request, metadata=(("x-attrgate-caller", "svc"),), timeout=call_timeout
                )
            except grpc.aio.AioRpcError as exc:
                error = exc
            latencies.append(time.perf_counter() - started)
            outcomes[outcome(error)] += 1

        started = time.perf_counter()
        await asyncio.gather(*(call(i) for i in range(concurrent)))
        return time.perf_counter() - started, latencies, outcomes
    finally:
        for channel in channels:
            await channel.close()


def counted(policies: Path, store_args: list[str]) -> int:
    """What the store's global limit holds, read as an operator would (`attrgate sms usage`)."""
    command = [sys.executable, "-m", "attrgate", "sms", "usage", "--policies", str(policies)]
    report = subprocess.run(
        [*command, *store_args],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ | {"ATTRGATE_STATE": "", "ATTRGATE_REDIS_URL": ""},
    ).stdout
    found = re.search(r"^\s+global: (\d+)/", report, re.MULTILINE)
    return int(found.group(1)) if found else 0
