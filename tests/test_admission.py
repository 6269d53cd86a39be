"""The drain's gate (admission.py), on its own: calls gRPC counted but never hands over (a
client cancelled one still queued) do not hold the drain for its whole grace."""

from __future__ import annotations

import asyncio
import time

from attrgate.api.admission import OWED_QUIET, Admission


def test_calls_never_handed_over_are_not_waited_for_once_nothing_runs() -> None:
    async def main() -> tuple[bool, float]:
        gate = Admission()
        gate.arrived()
        assert gate.enter()
        gate.close(received=3)  # gRPC counted two more calls than it handed over
        assert gate.owed == 2
        asyncio.get_running_loop().call_later(0.1, gate.leave)
        started = time.monotonic()
        idle = await gate.wait_idle(30)
        return idle, time.monotonic() - started

    idle, took = asyncio.run(main())
    assert idle
    assert took < 30 / 2, f"waited {took:.1f}s of the 30s grace for calls that never came"
    assert took >= OWED_QUIET  # it did give them their chance


def test_a_call_still_running_is_waited_for_until_the_grace_ends() -> None:
    async def main() -> bool:
        gate = Admission()
        gate.arrived()
        assert gate.enter()
        gate.close(received=1)
        return await gate.wait_idle(OWED_QUIET * 2)

    assert asyncio.run(main()) is False
