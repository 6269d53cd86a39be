"""Loading the policy set, at start and again on SIGHUP: one consistent snapshot, compiled, and
swapped into the pipeline whole, or rejected in one line while the serving set stays."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator

from attrgate.config import ConfigError
from attrgate.pipeline import Pipeline
from attrgate.policy.compile import PolicySet, load_and_compile
from attrgate.policy.snapshot import DEFAULT_MAX_BYTES
from attrgate.tasks import cancel_and_wait

log = logging.getLogger("attrgate")
# A set at --policy-max-bytes loads in a second or two; a reload taking far longer is rejected.
RELOAD_TIMEOUT = 30.0


def load_policies(
    path: str, max_bytes: int = DEFAULT_MAX_BYTES, pause_gc: bool = False
) -> PolicySet:
    """Load one consistent snapshot and compile it, or raise ConfigError with the first error in
    one line. `pause_gc`: only before the server serves (the switch is process-wide)."""
    # Loading builds many small objects and collects none: the cyclic GC's passes would only
    # add time (a 2 MiB set: ~2x).
    with gc_paused() if pause_gc else contextlib.nullcontext():
        result, policy_set = load_and_compile(path, max_bytes)
    if policy_set is None:
        more = len(result.errors) - 1
        suffix = f" (and {more} more; run `attrgate check {path}`)" if more else ""
        raise ConfigError(f"invalid policy set: {result.errors[0]}{suffix}")
    return policy_set


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Load:
    """One load in a daemon thread of its own: a load that overruns (a hung network file
    system) cannot be stopped, but it holds no thread of the event loop's executor, keeps
    nobody from exiting, and is known to be still running."""

    def __init__(self, path: str, max_bytes: int, pause_gc: bool) -> None:
        loop = asyncio.get_running_loop()
        self.result: asyncio.Future[PolicySet] = loop.create_future()
        self.started = time.monotonic()

        def settle(outcome: PolicySet | BaseException) -> None:
            if self.result.done():
                return
            if isinstance(outcome, BaseException):
                self.result.set_exception(outcome)
            else:
                self.result.set_result(outcome)

        def run() -> None:
            outcome: PolicySet | BaseException
            try:
                outcome = load_policies(path, max_bytes, pause_gc)
            except BaseException as exc:  # handed to the awaiting side
                outcome = exc
            self.finished.set()
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(settle, outcome)

        self.finished = threading.Event()  # the load's work is over (its thread may linger)
        self.result.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.thread = threading.Thread(target=run, name="attrgate-policy-load", daemon=True)
        self.thread.start()


async def load_bounded(
    path: str, max_bytes: int, seconds: float, pause_gc: bool = False
) -> PolicySet:
    """load_policies in a thread of its own, waited for at most `seconds` (ConfigError past
    it): the start-up load."""
    return await _wait(_Load(path, max_bytes, pause_gc), path, seconds)


async def _wait(load: _Load, path: str, seconds: float) -> PolicySet:
    try:
        return await asyncio.wait_for(asyncio.shield(load.result), seconds)
    except TimeoutError:
        raise ConfigError(f"loading {path} took longer than {seconds:g}s") from None


class PolicyReloader:
    """Reloads run one at a time; `refuse` says why a loaded set cannot serve here (e.g.
    SmsGuards on a server started without a counting store), or None."""

    def __init__(
        self,
        path: str,
        max_bytes: int,
        pipeline: Pipeline,
        counted: Callable[[str], None],
        refuse: Callable[[PolicySet], str | None],
        timeout: float = RELOAD_TIMEOUT,
    ) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._pipeline = pipeline
        self._counted = counted  # told "loaded" or "rejected"
        self._refuse = refuse
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._load: _Load | None = None
        self._again = False  # a reload was asked for while an overrunning load still ran
        self._later: set[asyncio.Task[bool]] = set()

    async def reload(self) -> bool:
        """Load the policy files again and swap the new set in whole; or, when they do not load,
        keep serving the current set and say why in one line. Requests already deciding finish
        under the set they started with."""
        pipeline, path = self._pipeline, self._path
        async with self._lock:
            serving = pipeline.policy_set
            try:
                # Off the event loop, in a thread of its own; the snapshot reader opens nothing
                # that blocks and reads at most --policy-max-bytes, but a hung file system can
                # still hold it: then this reload is rejected, and so is every next one until
                # that thread has ended (no pile of stuck threads).
                if self._load is not None and not self._load.finished.is_set():
                    # Not lost: the files may have changed since that load began, so one more
                    # reload runs as soon as it ends.
                    self._again = True
                    running = time.monotonic() - self._load.started
                    raise ConfigError(
                        f"the previous load of {path} is still running ({running:.0f}s); "
                        "this reload runs when it ends"
                    )
                self._load = _Load(path, self._max_bytes, pause_gc=False)
                self._load.result.add_done_callback(self._after_load)
                fresh = await _wait(self._load, path, self.timeout)
                refusal = self._refuse(fresh)
                if refusal:
                    raise ConfigError(refusal)
            except Exception as exc:  # whatever the files hold, the server keeps serving
                self._counted("rejected")
                log.error(
                    "policy reload rejected; still serving revision %s: %s",
                    serving.revision,
                    exc,
                    # A ConfigError says all; anything else is a bug worth its traceback.
                    exc_info=not isinstance(exc, ConfigError),
                )
                return False
            pipeline.policy_set = fresh
            self._counted("loaded")
            log.info(
                "policies reloaded: revision %s (%d documents); was %s",
                fresh.revision,
                fresh.size,
                serving.revision,
            )
            return True

    def _after_load(self, _: object) -> None:
        if not self._again:
            return
        self._again = False
        task = asyncio.ensure_future(self.reload())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def close(self) -> None:
        """Stopping: no reload asked for earlier starts any more."""
        self._again = False
        await cancel_and_wait(self._later)
