"""attrgate.v1.Admin on the admin listener: what serves and how it got there (`attrgate
status`). Nothing personal is in it: sources, revisions, times and reload errors (file:line)."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import grpc.aio

from attrgate import __version__
from attrgate.rollout.status import ServerStatus, SetStatus
from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc

ADMIN_SERVICE_NAME = "attrgate.v1.Admin"


class AdminService(pb_grpc.AdminServicer):
    def __init__(self, status: Callable[[], ServerStatus]) -> None:
        self._status = status

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.StatusResponse:
        return status_message(self._status())


def status_message(status: ServerStatus) -> pb.StatusResponse:
    reply = pb.StatusResponse(
        policies=_set_message(status.policies), shadow=status.shadow, version=__version__
    )
    if status.candidate is not None:
        reply.candidate.CopyFrom(_set_message(status.candidate))
    return reply


def _set_message(found: SetStatus) -> pb.PolicySetStatus:
    return pb.PolicySetStatus(
        source=found.source,
        follows=found.follows,
        revision=found.revision,
        loaded_at_unix_ms=int(found.loaded_at * 1000),
        documents=found.documents,
        last_result=found.last_result,
        last_attempt_unix_ms=int(found.last_attempt * 1000),
        last_error=found.last_error,
        fallback=found.fallback,
        source_error=found.source_error,
        source_error_since_unix_ms=int(found.source_error_since * 1000),
        source_errors=found.source_errors,
    )


def add_admin_to_server(servicer: AdminService, server: grpc.aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        ADMIN_SERVICE_NAME,
        {
            "Status": grpc.unary_unary_rpc_method_handler(
                servicer.Status,
                request_deserializer=pb.StatusRequest.FromString,
                response_serializer=pb.StatusResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
