"""Rows of the README's tables that no other test reaches: the order of the stages after the
policy (pool schema before the SMS guard), `denied_by` for the SMS country rule, allow entries
matching names exactly, and INTERNAL_ERROR for a failure attrgate did not foresee."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from attrgate.api.service import UserAttributesService, add_to_server, header_identity
from attrgate.domain import PoolDescription, UpstreamResult
from attrgate.lookups import LookupBudget
from attrgate.pipeline import Pipeline
from attrgate.policy.compile import compile_policy_set
from attrgate.policy.load import load_policy_set
from attrgate.pools import PoolCache
from attrgate.upstream.cognito import CognitoSettings, CognitoUpstream
from attrgate.users import UserSubs
from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.attrgate_server import RunningServer
from support.moto_cognito import MotoCognito
from support.policies import svc_policy
from support.rpc import as_caller, attrs_request, rich, update

CALLER = as_caller("svc")
US = "+14155550100"
GUARD = """
---
apiVersion: attrgate/v1
kind: SmsGuard
metadata: {name: sms}
spec:
  userPools: ["*"]
  countries: {allow: [US]}
  limits:
    - {per: phone_number, max: 1, window: 24h}
"""
# Built so that no source line a traceback shows contains it.
MARKER = "SECRET" + "VALUE"
PHONE_POLICY = svc_policy("[{attribute: phone_number}, {attribute: 'custom:*'}]")


@pytest.fixture
def phone_pool(moto: MotoCognito) -> str:
    pool = moto.create_pool(AutoVerifiedAttributes=["phone_number"])
    moto.create_user(pool, "ada", given_name="Ada")
    return pool


def send(server: RunningServer, pool: str, pairs: list[tuple[str, str]]) -> object:
    return update(server.target, attrs_request(pool, pairs))


def test_a_phone_write_the_pool_schema_refuses_reserves_nothing(
    serve: Callable[..., RunningServer], moto: MotoCognito, phone_pool: str, tmp_path: Path
) -> None:
    server = serve(PHONE_POLICY + GUARD, moto.endpoint, state=str(tmp_path / "state.sqlite"))
    refused = send(server, phone_pool, [("phone_number", US), ("custom:unknown", "x")])
    assert isinstance(refused, grpc.RpcError)
    assert rich(refused).info.reason == "POOL_SCHEMA_VIOLATION"
    # The limit holds one message per number: the refused write took no place in it.
    sent = send(server, phone_pool, [("phone_number", US)])
    assert isinstance(sent, pb.UpdateUserAttributesResponse), sent
    assert sent.decision.sms.triggers_sms
    assert moto.attributes(phone_pool, "ada")["phone_number"] == US
    full = send(server, phone_pool, [("phone_number", US)])
    assert isinstance(full, grpc.RpcError)
    assert rich(full).info.reason == "SMS_LIMIT_EXCEEDED"


def test_the_country_rule_denies_at_its_own_stage(
    serve: Callable[..., RunningServer], moto: MotoCognito, phone_pool: str, tmp_path: Path
) -> None:
    server = serve(PHONE_POLICY + GUARD, moto.endpoint, state=str(tmp_path / "state.sqlite"))
    with server.channel() as channel:
        decision = server.stub(channel).CheckUpdateUserAttributes(
            attrs_request(phone_pool, [("phone_number", "+442071838750")]), metadata=CALLER
        )
    assert not decision.allowed
    assert decision.denied_by == "sms_country"
    assert [(v.attribute, v.policy, v.reason) for v in decision.violations] == [
        ("phone_number", "sms", "SMS_COUNTRY_NOT_ALLOWED")
    ]
    assert "phone_number" not in moto.attributes(phone_pool, "ada")


def test_allow_entries_match_names_exactly(
    serve: Callable[..., RunningServer], moto: MotoCognito, pool: str
) -> None:
    server = serve(svc_policy(), moto.endpoint)
    denied = send(server, pool, [("Given_Name", "Augusta")])
    assert isinstance(denied, grpc.RpcError)
    found = rich(denied)
    assert found.info.reason == "POLICY_DENIED"
    assert [(v.field, v.reason) for v in found.field_violations] == [
        ("user_attributes[0]", "ATTRIBUTE_NOT_ALLOWED")
    ]
    assert moto.attributes(pool, "ada")["given_name"] == "Ada"
    allowed = send(server, pool, [("given_name", "Augusta")])
    assert isinstance(allowed, pb.UpdateUserAttributesResponse), allowed


def test_an_unforeseen_failure_is_internal_error_and_leaks_nothing(
    moto: MotoCognito, write_policies: Callable[[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    """A dependency failing in a way attrgate does not classify (here DescribeUserPool's caller
    raises) answers INTERNAL with INTERNAL_ERROR; the log keeps the frames, not the message."""
    loaded = load_policy_set(write_policies(svc_policy()))
    policy_set = compile_policy_set(loaded.policies, loaded.revision)

    async def describe(pool_id: str) -> PoolDescription | UpstreamResult:
        raise RuntimeError(f"describing failed for {MARKER}")

    async def user_sub(pool_id: str, username: str) -> str | UpstreamResult:
        raise AssertionError("not reached")

    async def scenario() -> grpc.aio.AioRpcError:
        upstream = CognitoUpstream(CognitoSettings("us-east-1", moto.endpoint))
        budget = LookupBudget(5, 10)
        pipeline = Pipeline(
            policy_set,
            upstream,
            PoolCache(describe, budget=budget, ttl=60),
            UserSubs(user_sub, budget=budget),
        )
        server = grpc.aio.server()
        add_to_server(UserAttributesService(pipeline, header_identity), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.UserAttributesStub(channel)
                try:
                    await stub.UpdateUserAttributes(
                        attrs_request("us-east-1_Pool1", [("given_name", MARKER)]),
                        metadata=CALLER,
                        timeout=10,
                    )
                except grpc.aio.AioRpcError as error:
                    return error
                raise AssertionError("the call succeeded")
        finally:
            await server.stop(0)
            await upstream.close()

    with caplog.at_level(logging.ERROR, logger="attrgate.api"):
        error = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.INTERNAL
    found = rich(error)
    assert found.info.reason == "INTERNAL_ERROR"
    assert MARKER not in (error.details() or "") + str(found.info)
    logged = [r for r in caplog.records if r.name == "attrgate.api"]
    assert len(logged) == 1
    text = logged[0].getMessage()
    assert found.info.metadata["decision_id"] in text
    assert "RuntimeError" in text
    assert MARKER not in text
