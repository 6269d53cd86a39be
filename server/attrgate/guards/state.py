"""The SMS guard's state as the server runs it: which store counts (SQLite or Redis), the key
that hashes what it counts, whether the store answers (health `attrgate.SmsStore`, the
`attrgate_sms_store_*` metrics, a periodic probe), and the temporary state of --local-cognito."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

from attrgate.config import ConfigError, Settings
from attrgate.guards.counting import SmsCounting
from attrgate.guards.keys import (
    FINGERPRINT,
    LEGACY_KEY,
    KeyCheck,
    counts_lost,
    embedded_key,
    known_key,
    mark_counting,
    read_key,
)
from attrgate.guards.sms import Hasher
from attrgate.metrics import Metrics
from attrgate.store.base import KEY_MISMATCH, REASONS, Store, StoreUnavailable
from attrgate.store.breaker import Breaker
from attrgate.store.sqlite import SqliteStore
from attrgate.store.watch import StoreWatch
from attrgate.tasks import cancel_and_wait

if TYPE_CHECKING:
    from attrgate.store.redis import RedisStore

log = logging.getLogger("attrgate.sms")
PROBE_EVERY = 2.0  # seconds between two questions to the store while nothing else asks


def redacted(url: str) -> str:
    """A Redis URL without its password, for messages."""
    parts = urlsplit(url)
    return f"Redis at {parts.hostname}:{parts.port or 6379}"


@dataclass
class SmsState:
    counting: SmsCounting | None = None
    key: bytes | None = None  # also hashes usernames in the decision log
    store: Store | None = None
    temporary: Path | None = None  # --local-cognito's state folder, removed on close
    _report: Callable[[bool], Coroutine[Any, Any, None]] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _closing: bool = False

    @classmethod
    async def open(
        cls, settings: Settings, guards: bool, metrics: Metrics, out: TextIO
    ) -> SmsState:
        """Or raise ConfigError in one line. Without SmsGuards and without a store configured,
        only the key of --hmac-key-file (for the decision log)."""
        state = cls()
        if not guards and not (settings.state or settings.redis_url):
            state.key = read_key(settings.hmac_key_file) if settings.hmac_key_file else None
            return state
        try:
            await state._open(settings, metrics, out)
        except BaseException:
            await state.close()
            raise
        return state

    async def _open(self, settings: Settings, metrics: Metrics, out: TextIO) -> None:
        store: Store
        if settings.redis_url:
            if settings.state:
                # A fleet adds Redis; the embedded default (the image sets ATTRGATE_STATE)
                # steps aside.
                log.warning("counting SMS in Redis; --state %s is not used", settings.state)
            where = redacted(settings.redis_url)
            store = self.store = await _open_redis(settings, where)
            assert settings.hmac_key_file is not None  # check() requires it with Redis
            key = read_key(settings.hmac_key_file)
        else:
            path = settings.state
            if path is None:
                if not settings.local_cognito:
                    raise ConfigError(
                        "SmsGuards are loaded but nothing counts for them: pass --state PATH "
                        "(SQLite) or --redis-url URL"
                    )
                self.temporary = Path(tempfile.mkdtemp(prefix="attrgate-state-"))
                path = str(self.temporary / "state.sqlite")
                print(f"SMS guard counts in a temporary file: {path}", file=out, flush=True)
            where = path
            had_file = _has_contents(path)  # before the store creates it
            store = self.store = SqliteStore(path, timeout=settings.store_timeout)
            try:
                await store.ping()
            except StoreUnavailable as exc:
                # Plain writes never depend on the store: serve them, and fail SMS-triggering
                # writes until the file opens (the probe keeps trying), as with a Redis down.
                lost = counts_lost(path, had_file)
                key = known_key(path, settings.hmac_key_file, exc)
            else:
                lost = counts_lost(path, await _holds_counts(store))
                key = await embedded_key(store, path, settings.hmac_key_file)
            if lost:
                log.error("%s", lost)
            mark_counting(path, key)
        check = KeyCheck(store, key, where)
        down: StoreUnavailable | None = None
        try:
            await check()
        except StoreUnavailable as exc:
            if exc.reason == KEY_MISMATCH:
                raise ConfigError(str(exc)) from None
            log.warning(
                "could not check the HMAC key against %s now; checked before the first "
                "SMS-triggering write",
                where,
            )
            down = exc
        self.key = key
        watch = StoreWatch(metrics.sms_store_failure, self._changed)
        metrics.watch_sms_store(lambda: watch.up, REASONS)
        if down is not None:  # down from the start: logged, counted, and NOT_SERVING at once
            watch.failed(down, "start")
        breaker = Breaker(
            settings.store_breaker_failures,
            settings.store_breaker_cooldown,
            # A trial is the key check (until it passes) and the reservation, each bounded by
            # the store timeout: a slow trial is not joined by a second one meanwhile.
            trial_timeout=2 * settings.store_timeout,
        )
        self.counting = SmsCounting(
            store, Hasher(key), watch=watch, key_check=check, breaker=breaker
        )

    def follow(self, report: Callable[[bool], Coroutine[Any, Any, None]]) -> None:
        """Tell `report` whether the store answers (now, and on every change), and ask the
        store every PROBE_EVERY seconds, so a failure shows without traffic."""
        if self.counting is None:
            return
        self._report = report
        self._changed(self.counting.watch.up)
        self._spawn(self._probe(self.counting))

    async def _probe(self, counting: SmsCounting) -> None:
        while not self._closing:
            await counting.probe()
            await asyncio.sleep(PROBE_EVERY)

    def _changed(self, up: bool) -> None:
        if self._report is None or self._closing:
            return
        self._spawn(self._report(up))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop probing, close the store, and remove --local-cognito's temporary state."""
        self._closing = True
        await cancel_and_wait(self._tasks)
        if self.store is not None:
            await self.store.close()
        if self.temporary is not None:
            shutil.rmtree(self.temporary, ignore_errors=True)


async def _open_redis(settings: Settings, where: str) -> RedisStore:
    # Imported here: redis-py costs a start without --redis-url 0.1 s and some MiB.
    from attrgate.store.redis import RedisStore

    assert settings.redis_url is not None
    store = RedisStore(settings.redis_url, settings.store_timeout, cluster=settings.redis_cluster)
    try:
        if not settings.redis_cluster and await store.cluster_enabled():
            await store.close()
            raise ConfigError(f"{where} runs in cluster mode: add --redis-cluster")
        problems = await store.durability_problems()
    except StoreUnavailable as exc:
        problems = [
            f"{where} does not answer now ({exc.reason}): whether it keeps counts across "
            "restarts is unknown, and SMS-triggering writes fail UNAVAILABLE until it answers"
        ]
    for problem in problems:
        if settings.require_durable_store:
            with contextlib.suppress(StoreUnavailable):
                await store.close()
            raise ConfigError(f"{problem}; refusing to start (--require-durable-store)")
        log.warning("%s", problem)
    return store


async def _holds_counts(store: Store) -> bool:
    """Whether the store was counted in before: it holds a key's fingerprint (or, made by an
    attrgate before 0.2, the key itself)."""
    try:
        return await store.secret(FINGERPRINT) is not None or (
            await store.secret(LEGACY_KEY) is not None
        )
    except StoreUnavailable:
        return True  # cannot tell: no alarm (the failure is reported by itself)


def _has_contents(path: str) -> bool:
    """A non-empty file at `path` (one stat, at start)."""
    return os.path.isfile(path) and os.path.getsize(path) > 0
