"""The gRPC side of a running attrgate: the main listener (the API, health, reflection) and the
admin one (health, attrgate.v1.Admin), their credentials, the health status, and the drain that
closes them without cancelling a call that is owed an answer (README, "Stopping")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from attrgate.api.admin import AdminService, add_admin_to_server
from attrgate.api.admission import Admission, calls_received, channelz_server_ids
from attrgate.api.service import SERVICE_NAME, UserAttributesService, add_to_server
from attrgate.config import ConfigError, Settings
from attrgate.tls import TlsFiles, TlsFilesError

log = logging.getLogger("attrgate")
# A health service name of its own: it turns NOT_SERVING while the SMS store fails, while the
# server's own ("") stays SERVING (writes that send no SMS never depend on the store).
SMS_STORE_HEALTH = "attrgate.SmsStore"


# Calls accepted by gRPC's core and not yet handed to attrgate (see bind).
MAX_PENDING_CALLS = 65536


class Listeners:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.admission = Admission()
        self.health = health.aio.HealthServicer()
        self.port = 0
        self.admin_port = 0
        self._server: grpc.aio.Server | None = None
        self._admin: grpc.aio.Server | None = None
        self._server_id: int | None = None  # the main server in channelz, for the hand-over
        self._tls: TlsFiles | None = None
        self._hurry = asyncio.Event()  # a second SIGTERM: skip the rest of the drain delay

    def bind(self, servicer: UserAttributesService, admin: AdminService) -> None:
        """Build both servers and bind their ports, or raise ConfigError. `admin` serves on the
        admin listener only."""
        settings = self._settings
        options = [
            ("grpc.max_receive_message_length", settings.max_receive_bytes),
            # gRPC shares ports by default: a second attrgate on a busy port would silently split
            # traffic with the first (and its older policies). Refuse to start instead. Workers
            # of `serve --workers` share theirs, which their parent made sure nobody else holds
            # (attrgate.workers.ports).
            ("grpc.so_reuseport", int(settings.workers > 1)),
            # Calls gRPC's core holds until Python takes them: past its default (1,000) it
            # cancels newcomers at once, a hidden cap far below what the bulkheads allow.
            ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS),
        ]
        known = channelz_server_ids()
        self._server = grpc.aio.server(options=options, interceptors=[self.admission.interceptor()])
        created = channelz_server_ids() - known
        self._server_id = created.pop() if len(created) == 1 else None
        add_to_server(servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        self.port = _bind(self._server, settings.listen, self._credentials())
        if settings.admin_listen:
            self._admin = grpc.aio.server(options=options)
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self._admin)
            add_admin_to_server(admin, self._admin)
            self.admin_port = _bind(self._admin, settings.admin_listen, None)

    async def start(self, healthy: bool = True) -> None:
        """Serve; health turns SERVING last (not `healthy`: NOT_SERVING until report_serving)."""
        if self._admin is not None:
            await self._admin.start()
        if self._server is not None:
            await self._server.start()
        if healthy:
            await self.report_serving()
        else:
            for service in ("", SERVICE_NAME):
                await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)

    async def report_serving(self) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    @property
    def follows_tls(self) -> bool:
        """Whether there are mTLS files to re-read."""
        return self._tls is not None

    async def report_sms_store(self, up: bool) -> None:
        """Health service `attrgate.SmsStore`: whether SMS-triggering writes can be counted."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if up
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        await self.health.set(SMS_STORE_HEALTH, status)

    def reload_tls(self) -> None:
        """Re-read the mTLS files now (SIGHUP); a set that does not load keeps the current one."""
        if self._tls is not None:
            self._tls.reload()

    def hurry(self) -> None:
        """A second SIGTERM/SIGINT: end the drain delay now (calls in flight keep their grace)."""
        self._hurry.set()

    async def drain(
        self, grace: float, drain_delay: float, serving: bool, closing: Callable[[], None]
    ) -> None:
        """Health turns NOT_SERVING on both listeners at once; calls are still taken for
        `drain_delay` seconds; then new calls are refused (UNAVAILABLE, ATTRGATE_SHUTTING_DOWN),
        `closing` runs (no retry may start after it), and the calls in flight get `grace`
        seconds to finish. Calls still running then are cancelled. Both servers are stopped on
        return."""
        await self.health.enter_graceful_shutdown()
        if serving and drain_delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), drain_delay)
        # gRPC's own shutdown would kill the calls it has received but not yet handed over:
        # serve those, refuse later ones here, and shut gRPC down once nothing is owed.
        admission = self.admission
        received = calls_received(self._server_id)
        if received is None and serving:
            log.warning(
                "gRPC's channelz cannot say how many calls it has received: calls still queued "
                "in gRPC now are refused UNAVAILABLE (ATTRGATE_SHUTTING_DOWN) instead of served"
            )
        admission.close(received)
        closing()
        idle = True
        if serving:
            log.info(
                "taking no new calls; %d in flight (%d more received, not yet handed over) get "
                "up to %.1fs (--grace)",
                admission.active,
                admission.owed,
                grace,
            )
            idle = await admission.wait_idle(grace)
            if not idle:
                log.warning(
                    "grace ended with %d calls still running: cancelling them (their Cognito "
                    "outcome is logged when it arrives)",
                    admission.active,
                )
        if not idle:
            # Answered by attrgate, not cut by gRPC's shutdown (which clients see as a
            # retryable UNAVAILABLE, though the update may have reached Cognito).
            admission.cut_off()
            await admission.wait_idle(2.0)
        if self._server is not None:
            await self._server.stop(1.0)  # only refusals, and what the cut did not end, remain
        if self._admin is not None:
            await self._admin.stop(0)

    def _credentials(self) -> grpc.ServerCredentials | None:
        """mTLS credentials that follow the files (see tls.py), or None for --insecure."""
        files = self._settings.tls_files()
        if files is None:
            return None
        try:
            self._tls = TlsFiles(*files)
        except TlsFilesError as exc:
            raise ConfigError(f"cannot use the TLS files: {exc}") from None
        return self._tls.credentials()


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
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
