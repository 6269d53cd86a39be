"""Stopping tasks that do not stop when cancelled once (attrgate/tasks.py). Python 3.11's
asyncio.wait_for swallows a cancellation that arrives as its future completes; a drain that
cancelled the SMS store's probe once and then awaited it hung for good (seen in CI)."""

from __future__ import annotations

import asyncio
import gc
import sys

import pytest

from attrgate.tasks import cancel_and_wait


async def stubborn(swallow: int, ended: list[str]) -> None:
    """Shrugs off the first `swallow` cancellations, as a wait_for racing its answer does."""
    for _ in range(swallow):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue
    try:
        await asyncio.sleep(3600)
    finally:
        ended.append("ended")


def test_a_task_that_swallows_cancellations_is_cancelled_until_it_ends() -> None:
    async def main() -> None:
        ended: list[str] = []
        task = asyncio.create_task(stubborn(3, ended))
        await asyncio.sleep(0)
        await asyncio.wait_for(cancel_and_wait([task]), 10)
        assert task.cancelled()
        assert ended == ["ended"]

    asyncio.run(main())


def test_a_single_cancel_would_have_waited_forever() -> None:
    """The failure cancel_and_wait exists for, on the same task: cancelled once, it runs on."""

    async def main() -> None:
        task = asyncio.create_task(stubborn(1, []))
        await asyncio.sleep(0)
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=0.5)
        assert not done
        await cancel_and_wait([task])

    asyncio.run(main())


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="fixed in 3.12 (CPython gh-86296)")
def test_wait_for_on_this_python_swallows_a_cancellation_racing_its_answer() -> None:
    """Why: the store's calls wait with wait_for(shield(answer)), answered from another thread."""

    async def main() -> bool:
        answer: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def ask() -> bool:
            await asyncio.wait_for(asyncio.shield(answer), 10)
            return True  # carried on after being cancelled

        task = asyncio.create_task(ask())
        await asyncio.sleep(0)
        answer.set_result(1)
        task.cancel()  # in the same turn as the answer: wait_for returns it instead
        try:
            return await task
        except asyncio.CancelledError:
            return False

    assert asyncio.run(main()) is True


def test_outcomes_are_taken_and_finished_tasks_left_alone() -> None:
    """A task that failed on its own is not reported as "exception was never retrieved"."""
    reported: list[str] = []

    async def fails() -> None:
        raise RuntimeError("boom")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: reported.append(context["message"])
        )
        tasks = [asyncio.create_task(fails()), asyncio.create_task(asyncio.sleep(0, "done"))]
        await asyncio.sleep(0.01)
        await cancel_and_wait(tasks)
        assert tasks[1].result() == "done"
        del tasks
        gc.collect()

    asyncio.run(main())
    assert reported == []
