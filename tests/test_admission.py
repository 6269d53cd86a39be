"""The drain's gate (api/admission.py), on its own: it waits for every call gRPC had received
when it closed, those not yet handed over included, and admits no later one."""

from __future__ import annotations

import asyncio

from attrgate.api.admission import Admission


async def hand_over(gate: Admission) -> bool:
    """What gRPC does with a call, in a task of its own: the interceptor counts it, then the
    handler asks the gate."""

    async def handler(details: object) -> None:
        return None

    async def call() -> bool:
        await gate.interceptor().intercept_service(handler, None)  # type: ignore[arg-type]
        return gate.enter()

    return await asyncio.create_task(call())


def test_calls_received_before_the_gate_closed_are_waited_for_and_admitted() -> None:
    async def main() -> None:
        gate = Admission()
        assert await hand_over(gate)
        gate.close(received=2)  # gRPC had one more call, not yet handed over
        assert gate.owed == 1
        waiting = asyncio.create_task(gate.wait_idle(30))
        gate.leave()
        await asyncio.sleep(0.05)
        assert not waiting.done(), "the drain stopped waiting for a call it owed"
        assert await hand_over(gate)  # handed over now: still admitted
        assert not await hand_over(gate)  # one gRPC received after the gate closed: refused
        gate.leave()
        assert await waiting is True

    asyncio.run(main())


def test_a_call_still_running_is_waited_for_until_the_grace_ends() -> None:
    async def main() -> bool:
        gate = Admission()
        assert await hand_over(gate)
        gate.close(received=1)
        return await gate.wait_idle(0.5)

    assert asyncio.run(main()) is False
