"""Wiring and lifecycle: load policies, build the Cognito client, start, drain, stop."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from attrgate.admission import Admission, calls_received, channelz_server_ids
from attrgate.api.record import UsernameHash
from attrgate.api.service import (
    SERVICE_NAME,
    UserAttributesService,
    add_to_server,
    header_identity,
    mtls_identity,
)
from attrgate.config import ConfigError, Settings, check, split_host_port
from attrgate.decisionlog import DecisionLog
from attrgate.domain import PoolDescription, UpstreamResult
from attrgate.guards.counting import SmsCounting
from attrgate.guards.sms import Hasher
from attrgate.guards.state import SmsState
from attrgate.local.emulator import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, LocalCognito
from attrgate.lookups import LookupBudget
from attrgate.metrics import Metrics
from attrgate.pipeline import Pipeline
from attrgate.policy.compile import PolicySet, compile_policy_set
from attrgate.policy.load import load_policy_set
from attrgate.policy.snapshot import DEFAULT_MAX_BYTES
from attrgate.pools import PoolCache
from attrgate.tls import TlsFiles, TlsFilesError
from attrgate.upstream.cognito import (
    CognitoSettings,
    CognitoUpstream,
    UpstreamConfigError,
    quiet_botocore_bodies,
)
from attrgate.users import UserSubs

log = logging.getLogger("attrgate")
LOCAL_DEFAULT_REGION = "us-east-1"
# A set at --policy-max-bytes loads in a second or two; a reload taking far longer is rejected.
RELOAD_TIMEOUT = 30.0


def load_policies(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> PolicySet:
    """Load one consistent snapshot and compile it, or raise ConfigError with the first error in
    one line."""
    # Loading builds many small objects and collects none: the cyclic GC's passes would only
    # add time (a 2 MiB set: ~2x). Paused for the load, whatever thread runs it.
    with _gc_paused():
        result = load_policy_set(path, max_bytes)
        if not result.ok:
            more = len(result.errors) - 1
            suffix = f" (and {more} more; run `attrgate check {path}`)" if more else ""
            raise ConfigError(f"invalid policy set: {result.errors[0]}{suffix}")
        return compile_policy_set(result.policies, result.revision)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass
class App:
    settings: Settings
    out: TextIO = field(default_factory=lambda: sys.stdout)
    port: int = 0
    admin_port: int = 0
    local: LocalCognito | None = None
    _server: grpc.aio.Server | None = None
    _admin: grpc.aio.Server | None = None
    _upstream: CognitoUpstream | None = None
    _health: health.aio.HealthServicer | None = None
    _sms: SmsCounting | None = None
    _sms_state: SmsState | None = None
    decision_log: DecisionLog | None = None
    metrics: Metrics | None = None
    metrics_port: int = 0
    _pipeline: Pipeline | None = None
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)
    _reload_tasks: set[asyncio.Task[bool]] = field(default_factory=set)
    _tls: TlsFiles | None = None
    _server_id: int | None = None  # the main server in channelz, for the drain's hand-over
    _admission: Admission = field(default_factory=Admission)
    _hurry: asyncio.Event = field(default_factory=asyncio.Event)  # a second SIGTERM: skip the delay
    _serving: bool = False
    _stopping: bool = False
    _reload_pending: bool = False  # a SIGHUP arrived while starting
    reload_timeout: float = RELOAD_TIMEOUT

    async def start(self) -> None:
        """Bind and serve, or raise ConfigError. Health turns SERVING last."""
        settings = self.settings
        check(settings)
        quiet_botocore_bodies()  # before anything calls AWS, the local emulator's seeding too
        assert settings.policies is not None
        policy_set = load_policies(settings.policies, settings.policy_max_bytes)
        if settings.local_cognito:
            from attrgate.local.emulator import start_local_cognito

            self.local = start_local_cognito(self._region(), settings.local_seed)
        self.metrics = Metrics()
        try:
            self._upstream = CognitoUpstream(self._cognito_settings(), self.metrics.cognito_call)
        except UpstreamConfigError as exc:
            raise ConfigError(str(exc)) from None
        upstream = self._upstream
        self._sms_state = await SmsState.open(
            settings, bool(policy_set.guards), self.metrics, self.out
        )
        self._sms = self._sms_state.counting

        async def describe(pool_id: str) -> PoolDescription | UpstreamResult:
            return await upstream.run(upstream.describe_user_pool_blocking, pool_id)

        async def user_sub(pool_id: str, username: str) -> str | UpstreamResult:
            return await upstream.run(upstream.user_sub_blocking, pool_id, username)

        # One budget for both lookups: a caller's made-up pools and users spend the same tokens.
        budget = LookupBudget(settings.metadata_lookup_rate, settings.metadata_lookup_burst)
        pools = PoolCache(
            describe,
            budget=budget,
            ttl=settings.pool_cache_ttl,
            negative_ttl=settings.pool_negative_ttl,
            stale=settings.pool_cache_stale,
            observe=self.metrics.metadata_lookup,
        )
        users = UserSubs(user_sub, budget=budget, observe=self.metrics.metadata_lookup)
        pipeline = self._pipeline = Pipeline(
            policy_set,
            upstream,
            pools,
            users,
            self._sms,
            settings.pool_metadata_fail_open,
            sms_events=self.metrics,
        )
        self._health = health.aio.HealthServicer()
        options = [
            ("grpc.max_receive_message_length", settings.max_receive_bytes),
            # gRPC shares ports by default: a second attrgate on a busy port would silently split
            # traffic with the first (and its older policies). Refuse to start instead.
            ("grpc.so_reuseport", 0),
        ]
        known = channelz_server_ids()
        self._server = grpc.aio.server(
            options=options, interceptors=[self._admission.interceptor()]
        )
        created = channelz_server_ids() - known
        self._server_id = created.pop() if len(created) == 1 else None
        identify = header_identity if settings.insecure else mtls_identity
        if settings.metrics_listen:
            try:
                self.metrics_port = self.metrics.serve(settings.metrics_listen)
                host = split_host_port(settings.metrics_listen)[0]
                log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot serve metrics on {settings.metrics_listen}: {exc.strerror}"
                ) from None
        self.decision_log = DecisionLog(
            None if settings.decision_log == "-" else settings.decision_log,
            settings.decision_log_queue,
            on_drop=self.metrics.decision_log_dropped,
        )
        try:
            self.decision_log.start()
        except OSError as exc:
            raise ConfigError(f"cannot open the decision log: {exc.strerror}") from None
        decision_log, metrics = self.decision_log, self.metrics

        def record(entry: dict[str, Any]) -> None:
            metrics.observe(entry)
            decision_log.record(entry)

        metrics.watch_policy_set(lambda: pipeline.policy_set)
        servicer = UserAttributesService(
            pipeline, identify, record, self._username_hash(), metrics.in_flight, self._admission
        )
        add_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = self._bind(self._server, settings.listen, self._credentials())
        if settings.admin_listen:
            self._admin = grpc.aio.server(options=options)
            health_pb2_grpc.add_HealthServicer_to_server(self._health, self._admin)
            self.admin_port = self._bind(self._admin, settings.admin_listen, None)
            await self._admin.start()
        await self._server.start()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._sms_state.follow(self._health)
        self._serving = True
        if self._reload_pending:
            self.reopen_and_reload()
        mode = "insecure, caller from x-attrgate-caller" if settings.insecure else "mTLS"
        log.info(
            "serving on port %d (%s); policies %s revision %s (%d documents)",
            self.port,
            mode,
            settings.policies,
            policy_set.revision,
            policy_set.size,
        )

    async def reload(self) -> bool:
        """Load the policy files again and swap the new set in whole; or, when they do not load,
        keep serving the current set and say why in one line. Requests already deciding finish
        under the set they started with."""
        pipeline, metrics, path = self._pipeline, self.metrics, self.settings.policies
        if pipeline is None or metrics is None or path is None:
            raise RuntimeError("reload() before start()")
        async with self._reloading:
            serving = pipeline.policy_set
            try:
                # Off the event loop: a large set takes a while to parse and compile. The thread
                # cannot be stopped, but the snapshot reader opens nothing that blocks and reads
                # at most --policy-max-bytes, so it ends; a reload still never waits past this.
                loading = asyncio.to_thread(load_policies, path, self.settings.policy_max_bytes)
                try:
                    fresh = await asyncio.wait_for(loading, self.reload_timeout)
                except TimeoutError:
                    raise ConfigError(
                        f"loading {path} took longer than {self.reload_timeout:g}s"
                    ) from None
                if fresh.guards and self._sms is None:
                    raise ConfigError(
                        "SmsGuards need a counting store: restart with --state PATH or "
                        "--redis-url URL"
                    )
            except Exception as exc:  # whatever the files hold, the server keeps serving
                metrics.policy_reload("rejected")
                log.error(
                    "policy reload rejected; still serving revision %s: %s",
                    serving.revision,
                    exc,
                    # A ConfigError says all; anything else is a bug worth its traceback.
                    exc_info=not isinstance(exc, ConfigError),
                )
                return False
            pipeline.policy_set = fresh
            metrics.policy_reload("loaded")
            log.info(
                "policies reloaded: revision %s (%d documents); was %s",
                fresh.revision,
                fresh.size,
                serving.revision,
            )
            return True

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
        tasks = [loop.create_task(self.reload())]
        if self._tls is not None:
            tasks.append(loop.create_task(asyncio.to_thread(self._tls.reload)))
        for task in tasks:
            self._reload_tasks.add(task)
            task.add_done_callback(self._reload_tasks.discard)

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
            threads=settings.executor_threads,
            connect_timeout=settings.cognito_connect_timeout,
            read_timeout=settings.cognito_read_timeout,
            max_attempts=settings.cognito_max_attempts,
            access_key_id=key_id,
            secret_access_key=secret,
        )

    def _credentials(self) -> grpc.ServerCredentials | None:
        """mTLS credentials that follow the files (see tls.py), or None for --insecure."""
        files = self.settings.tls_files()
        if files is None:
            return None
        try:
            self._tls = TlsFiles(*files)
        except TlsFilesError as exc:
            raise ConfigError(f"cannot use the TLS files: {exc}") from None
        return self._tls.credentials()

    @staticmethod
    def _bind(
        server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
    ) -> int:
        try:
            if credentials is None:
                port = server.add_insecure_port(address)
            else:
                port = server.add_secure_port(address, credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            raise ConfigError(f"cannot listen on {address} (in use or not a local address?)")
        return port

    async def stop(self, grace: float | None = None, drain_delay: float | None = None) -> None:
        """The drain (README, "Stopping"): health turns NOT_SERVING on both listeners at once;
        calls are still taken for `drain_delay` seconds (a second SIGTERM/SIGINT ends the delay);
        then new calls are refused (UNAVAILABLE, ATTRGATE_SHUTTING_DOWN) and the calls in flight
        get `grace` seconds to finish normally. Calls still running then are cancelled (their
        Cognito outcome is logged when it arrives; no retry starts any more) and all closes."""
        settings = self.settings
        grace = settings.grace if grace is None else grace
        drain_delay = settings.drain_delay if drain_delay is None else drain_delay
        serving = self._serving
        self._serving, self._stopping = False, True
        for task in list(self._reload_tasks):
            task.cancel()
        await asyncio.gather(*self._reload_tasks, return_exceptions=True)
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if serving and drain_delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), drain_delay)
        # gRPC's own shutdown would kill the calls it has received but not yet handed over:
        # serve those, refuse later ones here, and shut gRPC down once nothing is owed.
        self._admission.close(calls_received(self._server_id))
        idle = True
        if serving:
            log.info(
                "taking no new calls; %d in flight (%d more received, not yet handed over) get "
                "up to %.1fs (--grace)",
                self._admission.active,
                self._admission.owed,
                grace,
            )
            idle = await self._admission.wait_idle(grace)
            if not idle:
                log.warning(
                    "grace ended with %d calls still running: cancelling them (their Cognito "
                    "outcome is logged when it arrives)",
                    self._admission.active,
                )
        if self._upstream is not None:
            self._upstream.retries.stop()
        if self._server is not None:
            # Idle: only refusals may still be answering. Else the grace is over: cancel.
            await self._server.stop(1.0 if idle else 0)
            await self._admission.wait_idle(1.0)  # cancelled handlers log their decision
        if self._admin is not None:
            await self._admin.stop(0)
        if self._upstream is not None:
            self._upstream.close()
        if self._pipeline is not None:
            await self._pipeline.settle(2.0)  # reservations given back before the store closes
        if self._sms_state is not None:
            await self._sms_state.close()
        if self.decision_log is not None:
            await asyncio.to_thread(self.decision_log.close)
        if self.metrics is not None:
            self.metrics.close()
        if self.local is not None:
            self.local.stop()

    def hurry(self) -> None:
        """A second SIGTERM/SIGINT: end the drain delay now (calls in flight keep their grace)."""
        self._hurry.set()


async def serve(
    settings: Settings, out: TextIO, sighup_received: Callable[[], bool] = lambda: False
) -> None:
    """Run until SIGTERM or SIGINT, then drain. `sighup_received`: whether a SIGHUP arrived
    before this took the signal over (it is acted on once serving)."""
    app = App(settings, out)
    loop = asyncio.get_running_loop()
    # Installed before start: SIGHUP's default action would kill a server still starting.
    loop.add_signal_handler(signal.SIGHUP, app.reopen_and_reload)
    if sighup_received():
        app.reopen_and_reload()
    try:
        await app.start()
    except BaseException:
        await app.stop(0)
        raise
    if app.local is not None:
        _print_local_help(app, out)
    stop = asyncio.Event()

    def stop_or_hurry() -> None:
        if stop.is_set():
            app.hurry()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_or_hurry)
    await stop.wait()
    log.info(
        "shutting down: NOT_SERVING now; taking calls for %.1fs more (--drain-delay; a second "
        "signal ends it), then up to %.1fs (--grace) for the calls in flight",
        settings.drain_delay,
        settings.grace,
    )
    await app.stop()


def _print_local_help(app: App, out: TextIO) -> None:
    local = app.local
    assert local is not None
    host = app.settings.listen.rpartition(":")[0]
    target = f"{host}:{app.port}"
    # The command as the user can run it from here, e.g. .venv/bin/attrgate under `make run`.
    program = sys.argv[0] if Path(sys.argv[0]).name == "attrgate" else "attrgate"
    user = local.users[0] if local.users else "USER"
    print(
        f"local Cognito (moto) at {local.endpoint}, region {local.region}\n"
        f"  user pool: {local.pool_id}\n"
        f"  users:     {', '.join(local.users)}\n"
        f"attrgate listening on {target} (plaintext; the caller names itself)"
        + (f", health on {host}:{app.admin_port}" if app.admin_port else "")
        + "\n"
        "try:\n"
        f"  {program} call --target {target} --caller profile-api --pool {local.pool_id} "
        f"--user {user} given_name=Augusta\n"
        f"  {program} call --target {target} --caller profile-api --pool {local.pool_id} "
        f"--user {user} custom:role=admin email_verified=true\n"
        "read a user back (the emulator takes any credentials):\n"
        f"  AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local aws --endpoint-url "
        f"{local.endpoint} --region {local.region} cognito-idp admin-get-user "
        f"--user-pool-id {local.pool_id} --username {user}\n",
        file=out,
        flush=True,
    )
