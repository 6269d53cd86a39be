"""Wiring and lifecycle: load policies, build the Cognito client and the request path, start,
reload on SIGHUP, drain and stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from attrgate.api.admin import AdminService
from attrgate.api.record import UsernameHash, late_entry
from attrgate.api.service import UserAttributesService, header_identity, mtls_identity
from attrgate.config import ConfigError, Settings, check, split_host_port
from attrgate.decisionlog import DecisionLog
from attrgate.domain import PoolDescription, UpstreamResult
from attrgate.guards.sms import Hasher
from attrgate.guards.state import SmsState
from attrgate.listeners import Listeners
from attrgate.local.emulator import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, LocalCognito, print_help
from attrgate.lookups import LookupBudget
from attrgate.metrics import Metrics
from attrgate.pipeline import Pipeline
from attrgate.policy.compile import PolicySet
from attrgate.pools import PoolCache
from attrgate.quota.governor import DEFAULT_MAX_IN_FLIGHT, RESULTS, Governor
from attrgate.quota.leases import LEASE_TIMEOUT, LeaseKeeper
from attrgate.reloading import PolicyReloader
from attrgate.rollout.rollout import PolicyRollout
from attrgate.rollout.status import RELOAD_RESULTS
from attrgate.shadow import REMIND_EVERY, remind, warn
from attrgate.store.base import REASONS, StoreUnavailable
from attrgate.store.breaker import Breaker
from attrgate.tasks import cancel_and_wait
from attrgate.upstream.cognito import (
    CognitoSettings,
    CognitoUpstream,
    UpstreamConfigError,
    quiet_botocore_bodies,
)
from attrgate.users import UserSubs

if TYPE_CHECKING:
    from attrgate.store.redis import RedisStore

log = logging.getLogger("attrgate")
LOCAL_DEFAULT_REGION = "us-east-1"
NO_STORE_FOR_GUARDS = (
    "SmsGuards need a counting store: restart with --state PATH or --redis-url URL"
)


@dataclass
class App:
    settings: Settings
    out: TextIO = field(default_factory=lambda: sys.stdout)
    local: LocalCognito | None = None
    pipeline: Pipeline | None = None
    rollout: PolicyRollout | None = None
    decision_log: DecisionLog | None = None
    metrics: Metrics | None = None
    metrics_port: int = 0
    worker: int | None = None  # `serve --workers`: this process's index among them
    _listeners: Listeners | None = None
    _upstream: CognitoUpstream | None = None
    _sms_state: SmsState | None = None
    _governor: Governor | None = None
    _quota_stores: list[RedisStore] = field(default_factory=list)
    _reload_tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _serving: bool = False
    _stopping: bool = False
    _reload_pending: bool = False  # a SIGHUP arrived while starting
    # --shadow: how often the warning repeats while serving (a test shortens it).
    shadow_reminder_period: float = REMIND_EVERY
    _shadow_reminder: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._listeners.port if self._listeners else 0

    @property
    def admin_port(self) -> int:
        return self._listeners.admin_port if self._listeners else 0

    @property
    def policy_revision(self) -> str:
        """The revision of the set serving now."""
        return self.pipeline.policy_set.revision if self.pipeline else ""

    async def start(self) -> None:
        """Bind and serve, or raise ConfigError. Health turns SERVING last."""
        settings = self.settings
        check(settings)
        quiet_botocore_bodies()  # before anything calls AWS, the local emulator's seeding too
        rollout = self.rollout = PolicyRollout(settings)
        policy_set, candidate = await rollout.load_initial()
        if settings.shadow:
            warn()  # before anything serves: no log of a start in shadow mode lacks it
        if settings.local_cognito:
            from attrgate.local.emulator import start_local_cognito

            self.local = start_local_cognito(self._region(), settings.local_seed)
        if settings.executor_threads is not None:
            log.warning(
                "--executor-threads is ignored: Cognito calls run on the event loop, bounded "
                "only by the CognitoQuota bulkheads (maxInFlight)"
            )
        metrics = self.metrics = Metrics()
        try:
            upstream = self._upstream = CognitoUpstream(
                self._cognito_settings(), metrics.cognito_call
            )
        except UpstreamConfigError as exc:
            raise ConfigError(str(exc)) from None
        sms_state = self._sms_state = await SmsState.open(
            settings, bool(policy_set.guards), metrics, self.out
        )
        governor = self._governor = self._quota_governor(metrics, sms_state)
        pipeline = self.pipeline = self._pipeline(
            policy_set, upstream, sms_state, metrics, governor
        )
        pipeline.candidate = candidate
        governor.serving = lambda: pipeline.policy_set.quota
        await governor.renew()  # the shares' rates before the first call (bounded: timeout)
        governor.start()
        rollout.attach(
            pipeline,
            metrics.policy_reload,
            lambda fresh: NO_STORE_FOR_GUARDS if fresh.guards and not sms_state.counting else None,
        )
        metrics.reload_series(rollout.set_names, RELOAD_RESULTS)
        if settings.metrics_listen:
            try:
                self.metrics_port = metrics.serve(settings.metrics_listen)
                host = split_host_port(settings.metrics_listen)[0]
                log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {settings.metrics_listen}: {exc.strerror}"
                ) from None
        decision_log = self.decision_log = DecisionLog(
            None if settings.decision_log == "-" else settings.decision_log,
            settings.decision_log_queue,
            on_drop=metrics.decision_log_dropped,
            fields=None if self.worker is None else {"worker": self.worker},
        )
        try:
            decision_log.start()
        except OSError as exc:
            raise ConfigError(f"cannot open the decision log: {exc.strerror}") from None

        def record(entry: dict[str, Any]) -> None:
            metrics.observe(entry)
            decision_log.record(entry)

        metrics.watch_policy_set(lambda: pipeline.policy_set, lambda: pipeline.candidate)
        metrics.watch_shadow(settings.shadow)
        listeners = self._listeners = Listeners(settings)
        listeners.bind(
            UserAttributesService(
                pipeline,
                header_identity if settings.insecure else mtls_identity,
                record,
                self._username_hash(),
                metrics.in_flight,
                listeners.admission,
            ),
            AdminService(rollout.server_status),
        )
        # A worker of `serve --workers` reports SERVING once all do (report_serving): a load
        # balancer connecting earlier would pin its connections to the first.
        await listeners.start(healthy=self.worker is None)
        rollout.follow()
        sms_state.follow(listeners.report_sms_store)
        self._serving = True
        if settings.shadow:
            self._shadow_reminder = asyncio.ensure_future(remind(self.shadow_reminder_period))
        if self._reload_pending:
            self.reopen_and_reload()
        mode = "insecure, caller from x-attrgate-caller" if settings.insecure else "mTLS"
        log.info(
            "%s on port %d (%s); policies %s revision %s (%d documents)",
            "serving" if self.worker is None else "ready",
            self.port,
            mode,
            rollout.source.source,
            policy_set.revision,
            policy_set.size,
        )
        if candidate is not None:
            log.info(
                "candidate policies %s revision %s (%d documents): evaluated beside, never "
                "enforced",
                rollout.candidate_source.source if rollout.candidate_source else "",
                candidate.revision,
                candidate.size,
            )

    def _pipeline(
        self,
        policy_set: PolicySet,
        upstream: CognitoUpstream,
        sms_state: SmsState,
        metrics: Metrics,
        governor: Governor,
    ) -> Pipeline:
        settings = self.settings

        async def describe(pool_id: str) -> PoolDescription | UpstreamResult:
            return await upstream.describe_user_pool(pool_id)

        async def user_sub(pool_id: str, username: str) -> str | UpstreamResult:
            return await upstream.user_sub(pool_id, username)

        # One budget for both lookups: a caller's made-up pools and users spend the same tokens.
        budget = LookupBudget(settings.metadata_lookup_rate, settings.metadata_lookup_burst)
        pools = PoolCache(
            describe,
            budget=budget,
            ttl=settings.pool_cache_ttl,
            negative_ttl=settings.pool_negative_ttl,
            stale=settings.pool_cache_stale,
            observe=metrics.metadata_lookup,
        )
        users = UserSubs(user_sub, budget=budget, observe=metrics.metadata_lookup)

        def late(decision_id: str, result: UpstreamResult) -> None:
            if self.decision_log is not None:  # thread-safe: a queue
                self.decision_log.record(late_entry("UpdateUserAttributes", decision_id, result))

        return Pipeline(
            policy_set,
            upstream,
            pools,
            users,
            sms_state.counting,
            settings.pool_metadata_fail_open,
            sms_events=metrics,
            late=late,
            shadow=settings.shadow,
            governor=governor,
        )

    def _quota_governor(self, metrics: Metrics, sms_state: SmsState) -> Governor:
        """The CognitoQuota governor: with --redis-url its leases and per-user pacing are the
        fleet's, in that Redis (own connections, own short timeout); else this replica's."""
        settings = self.settings
        leases = pacing = None
        if settings.redis_url:
            from attrgate.store.redis import RedisStore  # not imported without Redis

            # Two clients: the lease exchange (off the request path, every 0.25 s) never waits
            # behind requests' pacing calls for a connection, and may take longer to answer.
            leases = RedisStore(
                settings.redis_url,
                max(settings.quota_store_timeout, LEASE_TIMEOUT),
                cluster=settings.redis_cluster,
                max_connections=2,
            )
            pacing = RedisStore(
                settings.redis_url,
                settings.quota_store_timeout,
                cluster=settings.redis_cluster,
                max_connections=8,
            )
            self._quota_stores = [leases, pacing]

        def failed(exc: StoreUnavailable) -> None:
            metrics.quota_store_failure(exc.reason)

        user_key = None
        if sms_state.key is not None:  # the fleet's key: one user, one pacing key everywhere
            hasher = Hasher(sms_state.key)

            def user_key(pool_id: str, username: str) -> str:
                return hasher("quota-user", f"{pool_id}\0{username}")

        def breaker() -> Breaker:  # --store-breaker-*: as for the SMS store
            return Breaker(settings.store_breaker_failures, settings.store_breaker_cooldown)

        governor = Governor(
            LeaseKeeper(
                leases,
                settings.quota_replicas,
                breaker(),
                on_failure=failed,
                workers=settings.workers,
            ),
            default_in_flight=DEFAULT_MAX_IN_FLIGHT,
            user_key=user_key,
            pacing_store=pacing,
            pacing_breaker=breaker(),
            events=metrics,
            on_store_failure=failed,
        )
        metrics.watch_quota(governor, RESULTS, REASONS)
        return governor

    @property
    def reloader(self) -> PolicyReloader | None:
        """The serving set's reloader (None before start)."""
        return self.rollout.reloaders[0] if self.rollout and self.rollout.reloaders else None

    async def reload(self) -> bool:
        """Reload the policies now (what SIGHUP does, without the rest): whether the serving
        set loaded."""
        if self.rollout is None or not self.rollout.reloaders:
            raise RuntimeError("reload() before start()")
        return await self.rollout.reload()

    def reopen_and_reload(self) -> None:
        """SIGHUP: reopen the decision log (logrotate), re-read the TLS files and reload the
        policies. One arriving while starting is acted on once serving; one arriving while
        stopping is ignored."""
        if self._stopping:
            return
        if not self._serving:
            self._reload_pending = True
            return
        if self.decision_log is not None:
            self.decision_log.reopen()
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Any]] = [loop.create_task(self.reload())]
        if self._listeners is not None and self._listeners.follows_tls:
            tasks.append(loop.create_task(asyncio.to_thread(self._listeners.reload_tls)))
        for task in tasks:
            self._reload_tasks.add(task)
            task.add_done_callback(self._reload_tasks.discard)

    async def report_serving(self) -> None:
        """Health SERVING now, unless stopping (a worker's, once every worker serves)."""
        if self._serving and self._listeners is not None:
            await self._listeners.report_serving()

    def _username_hash(self) -> UsernameHash | None:
        """Usernames reach the decision log only as keyed hashes (the SMS guard's key); without
        a key, not at all."""
        key = self._sms_state.key if self._sms_state is not None else None
        if key is None:
            return None
        hasher = Hasher(key)
        return lambda pool_id, username: hasher("username", f"{pool_id}\0{username}")

    def _region(self) -> str:
        return self.settings.region or LOCAL_DEFAULT_REGION

    def _cognito_settings(self) -> CognitoSettings:
        settings = self.settings
        endpoint = settings.cognito_endpoint
        key_id = secret = None
        if self.local is not None:
            endpoint, key_id, secret = self.local.endpoint, LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY
        return CognitoSettings(
            region=self._region(),
            endpoint_url=endpoint,
            connect_timeout=settings.cognito_connect_timeout,
            read_timeout=settings.cognito_read_timeout,
            max_attempts=settings.cognito_max_attempts,
            access_key_id=key_id,
            secret_access_key=secret,
        )

    async def stop(self, grace: float | None = None, drain_delay: float | None = None) -> None:
        """The drain (README, "Stopping"; see Listeners.drain), then everything closes in the
        order that loses nothing: the Cognito calls still under way (their late outcomes), the
        SMS reservations still being given back, the store, the decision log."""
        settings = self.settings
        grace = settings.grace if grace is None else grace
        drain_delay = settings.drain_delay if drain_delay is None else drain_delay
        serving = self._serving
        self._serving, self._stopping = False, True
        await cancel_and_wait(self._reload_tasks)
        if self._shadow_reminder is not None:
            await cancel_and_wait([self._shadow_reminder])
        if self.rollout is not None:
            await self.rollout.close()
        upstream = self._upstream
        if self._listeners is not None:
            await self._listeners.drain(
                grace,
                drain_delay,
                serving,
                closing=lambda: self._closing(upstream),
            )
        if upstream is not None:
            # Calls cancelled at the grace's end may still be at Cognito: their outcomes reach
            # the decision log, and give their reservations back, before either closes.
            await upstream.close()
        if self.pipeline is not None:
            await self.pipeline.settle(2.0)  # reservations given back before the store closes
        if self._governor is not None:
            await self._governor.close()
        for store in self._quota_stores:
            await store.close()
        if self._sms_state is not None:
            await self._sms_state.close()
        if self.decision_log is not None:
            await asyncio.to_thread(self.decision_log.close)
        if self.metrics is not None:
            self.metrics.close()
        if self.local is not None:
            self.local.stop()

    def _closing(self, upstream: CognitoUpstream | None) -> None:
        """The grace begins: no retry starts, and no call waits on for a quota token."""
        if upstream is not None:
            upstream.retries.stop()
        if self._governor is not None:
            self._governor.stop_waiting()

    def hurry(self) -> None:
        """A second SIGTERM/SIGINT: end the drain delay now (calls in flight keep their grace)."""
        if self._listeners is not None:
            self._listeners.hurry()


async def serve(
    settings: Settings,
    out: TextIO,
    sighup_received: Callable[[], bool] = lambda: False,
    worker: int | None = None,
    on_serving: Callable[[App], None] = lambda app: None,
) -> None:
    """Run until SIGTERM or SIGINT, then drain. `sighup_received`: whether a SIGHUP arrived
    before this took the signal over (it is acted on once serving). `worker`, `on_serving`: a
    process of `serve --workers` (attrgate.workers), and how it tells its parent it serves."""
    app = App(settings, out, worker=worker)
    loop = asyncio.get_running_loop()
    # Installed before start: SIGHUP's default action would kill a server still starting.
    loop.add_signal_handler(signal.SIGHUP, app.reopen_and_reload)
    if sighup_received():
        app.reopen_and_reload()
    stop = asyncio.Event()

    def stop_or_hurry() -> None:
        if stop.is_set():
            app.hurry()
        stop.set()

    # Also before start: SIGTERM's default action, between the listener opening and these
    # handlers, would leave --local-cognito's temporary state behind and exit -15.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_or_hurry)
    starting = asyncio.ensure_future(app.start())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("stopping before serving: a signal arrived while starting")
            await cancel_and_wait([starting])
            await app.stop(0)
            return
        starting.result()  # start's error
    except BaseException:
        await cancel_and_wait([starting, stopped])
        await app.stop(0)
        raise
    on_serving(app)
    if app.local is not None:
        host = settings.listen.rpartition(":")[0]
        print_help(app.local, host, app.port, app.admin_port, out)
    await stopped
    log.info(
        "shutting down: NOT_SERVING now; taking calls for %.1fs more (--drain-delay; a second "
        "signal ends it), then up to %.1fs (--grace) for the calls in flight",
        settings.drain_delay,
        settings.grace,
    )
    await app.stop()
