"""The gRPC hop's reference: a bare grpc.aio server for attrgate.v1.UserAttributes/
UpdateUserAttributes with no interceptor, no pipeline and no logging. It reads the caller header
and the request, answers an empty response to the allowed caller writing the allowed attribute,
and aborts anything else PERMISSION_DENIED with a google.rpc.Status built per call like attrgate's
own denial (an ErrorInfo with a fresh decision id, then the other details), sent the way attrgate
sends it (context.abort with the rich-status trailers and x-attrgate-decision-id).

    python -m perf.baseline_grpc [--denial-status BASE64]

--denial-status: a serialized google.rpc.Status (base64), normally the one attrgate answered for
the same denied request in the same run, so both answers are the same size; without it, a
stand-in of the same shape. --latency: allowed calls wait that long before their answer (an
upstream's latency, without the upstream). Prints {"port": N} once serving; serves until
SIGTERM or stdin closes.

--forward URL makes it the floor of any proxy built on attrgate's stack: each allowed call goes
to the Cognito (stub) at URL the way attrgate's upstream sends it, with nothing else: botocore's
validation and serializer, botocore's SigV4Auth, one aiohttp POST on a kept-alive connection,
and the HTTP status checked (no retries, no response parsing, no span, metric or log).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import urllib.parse
import uuid

import aiohttp
import botocore.session
import grpc
import grpc.aio
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.serialize import create_serializer
from botocore.validate import validate_parameters
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from attrgate.v1 import attrgate_pb2 as pb
from perf.lifetime import until_stopped
from perf.procstat import raise_nofile

SERVICE = "attrgate.v1.UserAttributes"
CALLER_HEADER = "x-attrgate-caller"
DECISION_ID_METADATA = "x-attrgate-decision-id"


def stand_in_status() -> status_pb2.Status:
    """The shape of attrgate's policy denial of one attribute."""
    info = error_details_pb2.ErrorInfo(
        reason="POLICY_DENIED",
        domain="attrgate",
        metadata={"decision_id": str(uuid.uuid4()), "policy_revision": "sha256:" + "0" * 16},
    )
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="user_attributes[0]",
                description="family_name: ATTRIBUTE_NOT_ALLOWED (policy bench-writer allow): no "
                "allow entry of the policies that apply names this attribute",
                reason="ATTRIBUTE_NOT_ALLOWED",
            )
        ]
    )
    status = status_pb2.Status(
        code=code_pb2.PERMISSION_DENIED,
        message="denied by policy: family_name (ATTRIBUTE_NOT_ALLOWED)",
    )
    for detail in (info, bad):
        packed = status.details.add()
        packed.Pack(detail)
    return status


class Forward:
    """One AdminUpdateUserAttributes per allowed call, serialised and signed by botocore and sent
    with aiohttp: the upstream half of a proxy, with nothing of attrgate's."""

    OPERATION = "AdminUpdateUserAttributes"

    def __init__(self, url: str) -> None:
        session = botocore.session.get_session()
        self.credentials = session.get_credentials().get_frozen_credentials()
        model = session.get_service_model("cognito-idp")
        self.operation = model.operation_model(self.OPERATION)
        self.serializer = create_serializer(model.metadata["protocol"])
        self.url = url
        self.host = urllib.parse.urlsplit(url).netloc
        self.http: aiohttp.ClientSession | None = None

    async def call(self, request: pb.UpdateUserAttributesRequest) -> bool:
        if self.http is None:  # made on the serving loop
            # As attrgate's transport: only botocore's headers, no cookies, no decompression.
            self.http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        params = {
            "UserPoolId": request.user_pool_id,
            "Username": request.username,
            "UserAttributes": [{"Name": a.name, "Value": a.value} for a in request.user_attributes],
        }
        validate_parameters(params, self.operation.input_shape)
        serialized = self.serializer.serialize_to_request(params, self.operation)
        signed = AWSRequest(
            method="POST",
            url=self.url,
            headers={**serialized["headers"], "Host": self.host},  # as attrgate's signer does
            data=serialized["body"],
        )
        SigV4Auth(self.credentials, "cognito-idp", "us-east-1").add_auth(signed)
        async with self.http.post(
            self.url, data=serialized["body"], headers=dict(signed.headers.items())
        ) as answer:
            await answer.read()
            return answer.status == 200


class Bare:
    def __init__(
        self,
        template: status_pb2.Status,
        caller: str,
        attribute: str,
        latency: float,
        forward: Forward | None = None,
    ) -> None:
        self.latency = latency
        self.forward = forward
        self.caller = caller
        self.attribute = attribute
        self.code = template.code
        self.message = template.message
        self.info = error_details_pb2.ErrorInfo()
        self.rest: list[any_pb2.Any] = []
        for detail in template.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR) and not self.info.reason:
                detail.Unpack(self.info)
            else:
                self.rest.append(detail)
        self.id_length = len(self.info.metadata.get("decision_id", "")) or 36

    async def update(
        self,
        request: pb.UpdateUserAttributesRequest,
        context: grpc.aio.ServicerContext[object, object],
    ) -> pb.UpdateUserAttributesResponse:
        caller = ""
        for key, value in context.invocation_metadata() or ():
            if key == CALLER_HEADER:
                caller = str(value)
        if (
            caller == self.caller
            and request.user_attributes
            and all(a.name == self.attribute for a in request.user_attributes)
        ):
            if self.latency:
                await asyncio.sleep(self.latency)
            if self.forward is not None and not await self.forward.call(request):
                await context.abort(grpc.StatusCode.UNAVAILABLE, "Cognito refused")
            return pb.UpdateUserAttributesResponse()
        decision_id = (uuid.uuid4().hex * 2)[: self.id_length]
        info = error_details_pb2.ErrorInfo()
        info.CopyFrom(self.info)
        info.metadata["decision_id"] = decision_id
        status = status_pb2.Status(code=self.code, message=self.message)
        status.details.add().Pack(info)
        status.details.extend(self.rest)
        answer = rpc_status.to_status(status)
        await context.abort(
            answer.code,
            answer.details,
            (*answer.trailing_metadata, (DECISION_ID_METADATA, decision_id)),
        )
        raise AssertionError("unreachable: abort raises")


async def serve(bare: Bare, port: int, until_stdin_closes: bool) -> None:
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        bare.update,
        request_deserializer=pb.UpdateUserAttributesRequest.FromString,
        response_serializer=pb.UpdateUserAttributesResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"UpdateUserAttributes": handler}),)
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(json.dumps({"port": bound}), flush=True)
    await until_stopped(until_stdin_closes)
    await server.stop(0)
    if bare.forward is not None and bare.forward.http is not None:
        await bare.forward.http.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bare grpc.aio answer/abort server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--denial-status", default="", help="google.rpc.Status, base64")
    parser.add_argument("--caller", default="bench-writer")
    parser.add_argument("--attribute", default="given_name")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds before an allowed call's answer"
    )
    parser.add_argument("--forward", default="", help="send allowed calls to this Cognito URL")
    parser.add_argument("--until-stdin-closes", action="store_true")
    args = parser.parse_args(argv)
    raise_nofile()
    if args.denial_status:
        template = status_pb2.Status.FromString(base64.b64decode(args.denial_status))
    else:
        template = stand_in_status()
    forward = Forward(args.forward) if args.forward else None
    bare = Bare(template, args.caller, args.attribute, args.latency, forward)
    asyncio.run(serve(bare, args.port, args.until_stdin_closes))


if __name__ == "__main__":
    main()
