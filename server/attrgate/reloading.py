"""Loading a policy set, at start and again on SIGHUP, a change on disk or a new bundle: one
consistent snapshot, compiled, and swapped in whole, or rejected in one line while the serving
set stays."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator

from attrgate.config import ConfigError
from attrgate.policy.compile import PolicySet, load_and_compile
from attrgate.policy.load import LoadResult
from attrgate.policy.snapshot import DEFAULT_MAX_BYTES
from attrgate.rollout.source import PolicySource, SourceUnavailable
from attrgate.rollout.status import LOADED, REJECTED, UNAVAILABLE, UNCHANGED, SetStatus
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
        loaded = load_and_compile(path, max_bytes)
    return compiled_or_refused(loaded, f"attrgate check {path}")


def compiled_or_refused(loaded: tuple[LoadResult, PolicySet | None], command: str) -> PolicySet:
    """The compiled set, or ConfigError with the load's first error in one line (and the
    `command` that lists them all)."""
    result, policy_set = loaded
    if policy_set is None:
        more = len(result.errors) - 1
        suffix = f" (and {more} more; run `{command}`)" if more else ""
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
    system, a stalled download) cannot be stopped, but it holds no thread of the event loop's
    executor, keeps nobody from exiting, and is known to be still running."""

    def __init__(self, work: Callable[[], PolicySet | None]) -> None:
        loop = asyncio.get_running_loop()
        self.result: asyncio.Future[PolicySet | None] = loop.create_future()
        self.started = time.monotonic()

        def settle(outcome: PolicySet | BaseException | None) -> None:
            if self.result.done():
                return
            if isinstance(outcome, BaseException):
                self.result.set_exception(outcome)
            else:
                self.result.set_result(outcome)

        def run() -> None:
            outcome: PolicySet | BaseException | None
            try:
                outcome = work()
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
    source: PolicySource, max_bytes: int, seconds: float, pause_gc: bool = False
) -> PolicySet:
    """The start-up load: `source` loaded in a thread of its own, waited for at most `seconds`
    (ConfigError past it)."""
    load = _Load(lambda: source.load(max_bytes, pause_gc, force=True))
    fresh = await _wait(load, source.source, seconds)
    if fresh is None:  # a source may only say "unchanged" when not forced
        raise ConfigError(f"{source.source} gave no policy set")
    return fresh


async def _wait(load: _Load, what: str, seconds: float) -> PolicySet | None:
    try:
        return await asyncio.wait_for(asyncio.shield(load.result), seconds)
    except TimeoutError:
        raise ConfigError(f"loading {what} took longer than {seconds:g}s") from None


class PolicyReloader:
    """Reloads of one policy set (the serving one, or the candidate) run one at a time.
    `install` swaps a loaded set in; `current` is the set serving now; `counted` is told
    LOADED, REJECTED or UNCHANGED; `refuse` says why a loaded set cannot serve here (e.g.
    SmsGuards on a server started without a counting store), or None."""

    def __init__(
        self,
        source: PolicySource,
        max_bytes: int,
        install: Callable[[PolicySet], None],
        current: Callable[[], PolicySet],
        counted: Callable[[str], None],
        refuse: Callable[[PolicySet], str | None],
        status: SetStatus,
        name: str = "policies",
        timeout: float = RELOAD_TIMEOUT,
    ) -> None:
        self.source = source
        self._max_bytes = max_bytes
        self._install = install
        self._current = current
        self._counted = counted
        self._refuse = refuse
        self.status = status
        self._name = name  # "policies" or "candidate policies", in log lines
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._load: _Load | None = None
        self._again = False  # a reload was asked for while an overrunning load still ran
        self._later: set[asyncio.Task[bool]] = set()
        self._logged_error = ""  # the last rejection logged: the same one is not logged again

    async def reload(self, force: bool = True) -> bool:
        """Load the set again and swap it in whole; or, when it does not load, keep serving the
        current set and say why in one line. Requests already deciding finish under the set they
        started with. `force` (SIGHUP): load and swap even when nothing seems to have changed,
        and log every rejection; otherwise (a watcher, a poll) a set whose revision is the one
        serving changes nothing, and a rejection is logged once until the error changes.
        Whether the set serving now is the one just loaded."""
        source = self.source
        async with self._lock:
            serving = self._current()
            try:
                # Off the event loop, in a thread of its own; the snapshot reader opens nothing
                # that blocks and reads at most --policy-max-bytes, but a hung file system can
                # still hold it: then this reload is rejected, and so is every next one until
                # that thread has ended (no pile of stuck threads).
                if self._load is not None and not self._load.finished.is_set():
                    # Not lost: the set may have changed since that load began, so one more
                    # reload runs as soon as it ends.
                    self._again = True
                    running = time.monotonic() - self._load.started
                    raise ConfigError(
                        f"the previous load of {source.source} is still running "
                        f"({running:.0f}s); this reload runs when it ends"
                    )
                max_bytes = self._max_bytes
                self._load = _Load(lambda: source.load(max_bytes, False, force))
                self._load.result.add_done_callback(self._after_load)
                fresh = await _wait(self._load, source.source, self.timeout)
                # While --policies-fallback serves, the source's first set swaps in even when
                # its revision is the fallback's: what serves is then the source's.
                same = fresh is not None and fresh.revision == serving.revision
                if fresh is None or (not force and same and not self.status.fallback):
                    self._attempted(UNCHANGED)
                    self._logged_error = ""  # the set came back: its next error is news
                    if fresh is not None:
                        self._counted(UNCHANGED)
                    log.debug("%s unchanged: revision %s", self._name, serving.revision)
                    return False
                refusal = self._refuse(fresh)
                if refusal:
                    raise ConfigError(refusal)
            except SourceUnavailable as exc:
                self._unavailable(str(exc), serving.revision, force)
                return False
            except Exception as exc:  # whatever the files hold, the server keeps serving
                self._counted(REJECTED)
                message = str(exc)
                self._attempted(REJECTED, message)
                if force or message != self._logged_error:
                    self._logged_error = message
                    log.error(
                        "%s reload rejected; still serving revision %s: %s",
                        "policy" if self._name == "policies" else self._name,
                        serving.revision,
                        message,
                        # A ConfigError says all; anything else is a bug worth its traceback.
                        exc_info=not isinstance(exc, ConfigError),
                    )
                return False
            self._install(fresh)
            self._logged_error = ""
            self._counted(LOADED)
            self._attempted(LOADED)
            self.status.serving(fresh.revision, fresh.size)
            log.info(
                "%s reloaded: revision %s (%d documents); was %s",
                self._name,
                fresh.revision,
                fresh.size,
                serving.revision,
            )
            return True

    def _unavailable(self, message: str, revision: str, force: bool) -> None:
        """The source could not be read: counted every time, logged once per streak (and on
        every SIGHUP), with the reason; `attrgate status` shows it until the source answers."""
        self._counted(UNAVAILABLE)
        first = not self.status.source_errors
        self.status.attempted(UNAVAILABLE, message)
        if first or force:
            log.warning(
                "%s source unavailable; still serving revision %s: %s",
                self._name,
                revision,
                message,
            )

    def _attempted(self, result: str, error: str = "") -> None:
        since = self.status.source_error_since
        failed = self.status.attempted(result, error)
        if failed:
            log.info(
                "%s source %s answers again, after %d failed %s over %.0fs",
                self._name,
                self.source.source,
                failed,
                "attempt" if failed == 1 else "attempts",
                self.status.last_attempt - since,
            )

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
