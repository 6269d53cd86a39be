"""The policy sets of one server and what keeps them current: the serving set and the optional
candidate, each from its source, reloaded on SIGHUP and followed (watched on disk, or polled in
S3) while serving."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from attrgate.config import S3_PREFIX, ConfigError, Settings
from attrgate.pipeline import Pipeline
from attrgate.policy.compile import PolicySet
from attrgate.reloading import RELOAD_TIMEOUT, PolicyReloader, SourceLoader
from attrgate.rollout.source import LocalSource, PolicySource, SourceUnavailable, open_source
from attrgate.rollout.status import REJECTED, UNAVAILABLE, ServerStatus, SetStatus
from attrgate.tasks import cancel_and_wait

log = logging.getLogger("attrgate")

Refuse = Callable[[PolicySet], str | None]
Counted = Callable[[str, str], None]  # (result, set): set is "serving" or "candidate"


class PolicyRollout:
    def __init__(self, settings: Settings) -> None:
        assert settings.policies is not None
        self.settings = settings
        self.source = open_source(settings.policies, settings)
        self.status = SetStatus(self.source.source, self.source.follows)
        # One loader per source, from the first load on: no two loads of a source at once.
        self.loader = SourceLoader(self.source, settings.policy_max_bytes)
        self.candidate_source: PolicySource | None = None
        self.candidate_status: SetStatus | None = None
        self.candidate_loader: SourceLoader | None = None
        if settings.candidate_policies:
            self.candidate_source = open_source(settings.candidate_policies, settings)
            self.candidate_status = SetStatus(
                self.candidate_source.source, self.candidate_source.follows
            )
            self.candidate_loader = SourceLoader(self.candidate_source, settings.policy_max_bytes)
        self.reloaders: list[PolicyReloader] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    async def load_initial(self) -> tuple[PolicySet, PolicySet | None]:
        """The serving set and the candidate (None without one, or while an s3:// candidate
        cannot be had), each loaded within RELOAD_TIMEOUT; ConfigError when the serving set
        cannot be had, or a local candidate does not load."""
        settings = self.settings
        # The GC pause is only for this first load (nothing serves yet).
        try:
            serving = await self.loader.load_set(RELOAD_TIMEOUT, pause_gc=True)
            self.status.serving(serving.revision, serving.size)
        except ConfigError as exc:
            if not settings.policies_fallback:
                raise
            serving = await self._load_fallback(settings.policies_fallback, exc)
        candidate = None
        if self.candidate_loader is not None and self.candidate_status is not None:
            try:
                candidate = await self.candidate_loader.load_set(RELOAD_TIMEOUT)
            except ConfigError as exc:
                where = self.candidate_loader.source.source
                if not where.startswith(S3_PREFIX):  # a local path: a configuration error
                    raise ConfigError(f"candidate policies: {exc}") from None
                # A candidate never changes an outcome: serve without it until it loads.
                result = UNAVAILABLE if isinstance(exc, SourceUnavailable) else REJECTED
                self.candidate_status.attempted(result, str(exc))
                log.warning(
                    "candidate policies %s not loaded; serving without a candidate until it "
                    "loads: %s",
                    where,
                    exc,
                )
            else:
                self.candidate_status.serving(candidate.revision, candidate.size)
        return serving, candidate

    async def _load_fallback(self, path: str, why: ConfigError) -> PolicySet:
        """--policies-fallback: a local set serves until the source gives a valid one (the
        source is still followed; its first valid set replaces this one)."""
        try:
            local = LocalSource(path, watch=False)
            fallback = await SourceLoader(local, self.settings.policy_max_bytes).load_set(
                RELOAD_TIMEOUT
            )
        except ConfigError as exc:
            raise ConfigError(f"{why}; and the fallback {path}: {exc}") from None
        self.status.serving(fallback.revision, fallback.size, fallback=True)
        result = UNAVAILABLE if isinstance(why, SourceUnavailable) else REJECTED
        self.status.attempted(result, str(why))
        log.warning(
            "serving the fallback policies %s (revision %s) until %s gives a valid set: %s",
            path,
            fallback.revision,
            self.source.source,
            why,
        )
        return fallback

    def attach(self, pipeline: Pipeline, counted: Counted, refuse: Refuse) -> None:
        """Reloads swap into `pipeline`: the serving set, and the candidate beside it."""

        def install_serving(fresh: PolicySet) -> None:
            pipeline.policy_set = fresh

        def install_candidate(fresh: PolicySet) -> None:
            pipeline.candidate = fresh

        self.reloaders = [
            PolicyReloader(
                self.loader,
                install_serving,
                lambda: pipeline.policy_set,
                lambda result: counted(result, "serving"),
                refuse,
                self.status,
            )
        ]
        if self.candidate_loader is not None and self.candidate_status is not None:
            self.reloaders.append(
                PolicyReloader(
                    self.candidate_loader,
                    install_candidate,
                    lambda: pipeline.candidate,
                    lambda result: counted(result, "candidate"),
                    lambda _: None,  # never serves: nothing to refuse it for
                    self.candidate_status,
                    name="candidate policies",
                )
            )

    async def reload(self) -> bool:
        """SIGHUP: reload every set now; whether the serving one loaded."""
        results = await asyncio.gather(*(r.reload() for r in self.reloaders))
        return bool(results[0]) if results else False

    def follow(self) -> None:
        """Start following each set's source for changes (watcher or poll), as it allows."""
        from attrgate.rollout.follow import follow_changes

        for reloader in self.reloaders:
            self._spawn(follow_changes(reloader, self.settings))

    @property
    def set_names(self) -> tuple[str, ...]:
        """The sets this server follows, as attrgate_policy_reloads_total{set} names them."""
        return ("serving", "candidate") if self.candidate_source is not None else ("serving",)

    def server_status(self) -> ServerStatus:
        return ServerStatus(self.status, self.candidate_status, self.settings.shadow)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stopping: nothing is followed or reloaded any more."""
        await cancel_and_wait(self._tasks)
        for reloader in self.reloaders:
            await reloader.close()
