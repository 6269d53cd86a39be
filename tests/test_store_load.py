"""The embedded store keeps up: 256 and then 512 SMS-triggering writes at once through a real
`attrgate serve`, over a Cognito answering each after 100 ms, get no SMS_STORE_UNAVAILABLE on a
healthy disk, and the store holds exactly what Cognito received (before group commit: up to 74 %
refused, and over-counting). Figures beside a baseline: `make bench` (bench_sms_store.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cognito_stub import CognitoStub, Reply, describe_reply
from support.fleet import Replica, replica_env
from support.sms_load import POLICIES, POOL, STORE_UNAVAILABLE, counted, one_round


@pytest.fixture
def slow_cognito() -> Iterator[CognitoStub]:
    # A backlog for a burst of new connections (a dropped one has an unknown outcome, counted).
    stub = CognitoStub(backlog=1024)
    stub.describe = describe_reply(auto_verified=("phone_number",))
    stub.default = Reply(delay=0.1)
    yield stub
    stub.stop()


def test_hundreds_of_concurrent_sms_writes_are_all_counted_exactly(
    slow_cognito: CognitoStub, tmp_path: Path
) -> None:
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    state = ["--state", str(tmp_path / "state.sqlite")]
    replica = Replica(
        "load",
        [
            *("--policies", str(policies), "--region", "us-east-1", *state),
            *("--cognito-endpoint", slow_cognito.endpoint),
            *("--decision-log", str(tmp_path / "decisions.jsonl"), "--log-level", "WARNING"),
        ],
        replica_env("stub-key", "stub-secret"),
        tmp_path,
    )
    replica.start()
    try:
        first = 0
        for concurrent in (256, 512):
            _, _, outcomes = asyncio.run(one_round(replica.target, concurrent, first))
            first += concurrent
            assert outcomes[STORE_UNAVAILABLE] == 0, outcomes
            assert sum(outcomes.values()) == concurrent
    finally:
        replica.stop()
    sent = [c for c in slow_cognito.calls() if c.body["UserPoolId"] == POOL]
    assert len(sent) >= 256, outcomes  # most went through: the test measured something
    assert counted(policies, state) == len(sent), "the store's count differs from what was sent"
