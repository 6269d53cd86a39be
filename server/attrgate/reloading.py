"""Loading a policy set, at start and again on SIGHUP, a change on disk or a new bundle: one
consistent snapshot, compiled, and swapped in whole, or rejected in one line while the serving
set stays."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from attrgate.config import ConfigError
from attrgate.policy.compile import PolicySet
from attrgate.rollout.source import Loaded, PolicySource, Refused, SourceUnavailable
from attrgate.rollout.status import LOADED, REJECTED, UNAVAILABLE, UNCHANGED, SetStatus
from attrgate.tasks import cancel_and_wait

log = logging.getLogger("attrgate")
# A set at --policy-max-bytes loads in a second or two; a reload taking far longer is rejected.
RELOAD_TIMEOUT = 30.0


class _Load:
    """One load in a daemon thread of its own: a load that overruns (a hung network file
    system, a stalled download) cannot be stopped, but it holds no thread of the event loop's
    executor, keeps nobody from exiting, and is known to be still running."""

    def __init__(self, work: Callable[[], Loaded]) -> None:
        loop = asyncio.get_running_loop()
        self.result: asyncio.Future[Loaded] = loop.create_future()
        self.started = time.time()

        def settle(outcome: Loaded | BaseException) -> None:
            if self.result.done():
                return
            if isinstance(outcome, BaseException):
                self.result.set_exception(outcome)
            else:
                self.result.set_result(outcome)

        def run() -> None:
            outcome: Loaded | BaseException
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


class SourceLoader:
    """The loads of one source, one at a time: at start and on every reload after it. A load that
    overran its time goes on in its thread; until it ends, no other load of that source begins
    (the source's state is never read or written by two loads at once)."""

    def __init__(self, source: PolicySource, max_bytes: int) -> None:
        self.source = source
        self._max_bytes = max_bytes
        self.running: _Load | None = None  # the last load begun; it may still run

    def busy(self) -> _Load | None:
        """The load still running, if any."""
        if self.running is not None and not self.running.finished.is_set():
            return self.running
        return None

    async def load(self, force: bool, seconds: float, pause_gc: bool = False) -> Loaded:
        """The source loaded in a thread of its own, waited for at most `seconds` (ConfigError
        past it; the thread goes on, and the source commits nothing of it). ConfigError at once
        while an earlier load still runs."""
        source, max_bytes = self.source, self._max_bytes
        running = self.busy()
        if running is not None:
            # No number that changes from one attempt to the next: the reloader logs a message
            # once until it changes.
            began = time.strftime("%H:%M:%S", time.localtime(running.started))
            raise ConfigError(
                f"the previous load of {source.source} (begun at {began}) is still running; "
                "this reload runs when it ends"
            )
        self.running = _Load(lambda: source.load(max_bytes, pause_gc, force))
        try:
            return await asyncio.wait_for(asyncio.shield(self.running.result), seconds)
        except TimeoutError:
            raise ConfigError(f"loading {source.source} took longer than {seconds:g}s") from None

    async def load_set(self, seconds: float, pause_gc: bool = False) -> PolicySet:
        """The start-up load: forced, settled as soon as it loads (nothing serves yet to compare
        it with); Refused is settled by the caller once it has decided what serves."""
        try:
            loaded = await self.load(True, seconds, pause_gc)
        except Refused as exc:
            self.source.settle(exc.version, str(exc))
            raise
        if loaded.policy_set is None:  # a source may only say "unchanged" when not forced
            raise ConfigError(f"{self.source.source} gave no policy set")
        self.source.settle(loaded.version)
        return loaded.policy_set


class PolicyReloader:
    """Reloads of one policy set (the serving one, or the candidate) run one at a time, through
    the set's SourceLoader. `install` swaps a loaded set in; `current` is the set serving now
    (None: a candidate that has not loaded yet); `counted` is told LOADED, REJECTED, UNCHANGED or
    UNAVAILABLE; `refuse` says why a loaded set cannot serve here (e.g. SmsGuards on a server
    started without a counting store), or None."""

    def __init__(
        self,
        loader: SourceLoader,
        install: Callable[[PolicySet], None],
        current: Callable[[], PolicySet | None],
        counted: Callable[[str], None],
        refuse: Callable[[PolicySet], str | None],
        status: SetStatus,
        name: str = "policies",
        timeout: float = RELOAD_TIMEOUT,
    ) -> None:
        self.loader = loader
        self.source = loader.source
        self._install = install
        self._current = current
        self._counted = counted
        self._refuse = refuse
        self.status = status
        self._name = name  # "policies" or "candidate policies", in log lines
        self.timeout = timeout
        self._lock = asyncio.Lock()
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
            was = serving.revision if serving is not None else "none"
            try:
                # Off the event loop, in a thread of its own; the snapshot reader opens nothing
                # that blocks and reads at most --policy-max-bytes, but a hung file system can
                # still hold it: then this reload is rejected, and so is every next one until
                # that thread has ended (no pile of stuck threads).
                running = self.loader.busy()
                if running is not None and not self._again:
                    # Not lost: the set may have changed since that load began, so one more
                    # reload runs as soon as it ends.
                    self._again = True
                    running.result.add_done_callback(self._after_load)
                loaded = await self.loader.load(force, self.timeout)
                fresh = loaded.policy_set
                # While --policies-fallback serves, or before a candidate has loaded, the
                # source's first set swaps in even when its revision is the one serving.
                first = serving is None or self.status.fallback
                same = fresh is not None and serving is not None and fresh.revision == was
                if fresh is None or (not force and same and not first):
                    source.settle(loaded.version)
                    self._attempted(UNCHANGED)
                    self._logged_error = ""  # the set came back: its next error is news
                    if fresh is not None:
                        self._counted(UNCHANGED)
                    log.debug("%s unchanged: revision %s", self._name, was)
                    return False
                refusal = self._refuse(fresh)
                if refusal:
                    raise Refused(refusal, loaded.version)
            except SourceUnavailable as exc:
                self._unavailable(str(exc), was, force)
                return False
            except Exception as exc:  # whatever the files hold, the server keeps serving
                if isinstance(exc, Refused):  # remembered for that version, not read again
                    source.settle(exc.version, str(exc))
                self._counted(REJECTED)
                message = str(exc)
                self._attempted(REJECTED, message)
                if force or message != self._logged_error:
                    self._logged_error = message
                    log.error(
                        "%s reload rejected; still serving revision %s: %s",
                        "policy" if self._name == "policies" else self._name,
                        was,
                        message,
                        # A ConfigError says all; anything else is a bug worth its traceback.
                        exc_info=not isinstance(exc, ConfigError),
                    )
                return False
            self._install(fresh)
            source.settle(loaded.version)
            self._logged_error = ""
            self._counted(LOADED)
            self._attempted(LOADED)
            self.status.serving(fresh.revision, fresh.size)
            log.info(
                "%s reloaded: revision %s (%d documents); was %s",
                self._name,
                fresh.revision,
                fresh.size,
                was,
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
