"""The quota governor's test kit, tested with real parts: the Cognito stub's rate limit over
boto3, `max_in_window`, and the open-loop driver (support/quota_load.py) against a real
`attrgate serve` over the stub."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import boto3
import botocore.config
import botocore.exceptions
import pytest

from support.cognito_stub import CognitoStub, Received, Reply, max_in_window
from support.fleet import Replica, replica_env
from support.quota_load import Flow, achieved_rps, run_flows, summary

LIMIT = 15


def stub_client(stub: CognitoStub) -> Any:
    return boto3.client(
        "cognito-idp",
        endpoint_url=stub.endpoint,
        region_name="us-east-1",
        aws_access_key_id="stub-key",
        aws_secret_access_key="stub-secret",
        # One attempt: every call is one arrival at the stub, its answer the stub's. (botocore's
        # `max_attempts` counts retries: {"max_attempts": 1} would send a throttled call twice.)
        config=botocore.config.Config(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def burst(stub: CognitoStub, count: int) -> list[str]:
    """`count` AdminUpdateUserAttributes one after another, as fast as one thread goes, from a
    thread of their own: each answer's error code, "" for success."""
    client = stub_client(stub)
    answers: list[str] = []
    throttles: list[tuple[int, str]] = []  # (HTTP status, message) of each TooManyRequests

    def send() -> None:
        for i in range(count):
            try:
                client.admin_update_user_attributes(
                    UserPoolId="us-east-1_Kit1",
                    Username=f"user-{i}",
                    UserAttributes=[{"Name": "given_name", "Value": "Ada"}],
                )
                answers.append("")
            except botocore.exceptions.ClientError as error:
                answers.append(error.response["Error"]["Code"])
                if answers[-1] == "TooManyRequestsException":
                    status = error.response["ResponseMetadata"]["HTTPStatusCode"]
                    throttles.append((status, error.response["Error"]["Message"]))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    sender.join(timeout=60)
    assert not sender.is_alive(), "the burst did not finish within 60 s"
    assert len(answers) == count, "a call raised something else than a ClientError"
    assert set(throttles) <= {(400, "Rate exceeded")}, "not what Cognito answers"
    return answers


def accepted_before(calls: list[Received], i: int) -> int:
    """Updates accepted before the i-th in the second before it (the stub's sliding window)."""
    return sum(1 for c in calls[:i] if not c.throttled and c.at > calls[i].at - 1.0)


# --- the stub's rate limit ------------------------------------------------------------------


def test_the_stub_throttles_updates_above_its_rate_like_cognito(stub: CognitoStub) -> None:
    stub.throttle_above = LIMIT
    answers = burst(stub, 40)
    calls = stub.calls()
    assert len(calls) == 40
    # The client saw what the stub recorded, call by call (one thread: arrivals in order).
    assert answers == ["TooManyRequestsException" if c.throttled else "" for c in calls]
    # The first LIMIT always pass: nothing was accepted before them.
    assert not any(c.throttled for c in calls[:LIMIT])
    accepted = [c.at for c in calls if not c.throttled]
    assert max_in_window(accepted) <= LIMIT
    # 40 calls go out in far less than a second: some were throttled. Each throttled one arrived
    # when LIMIT were accepted in the second before it; each accepted one when fewer were.
    assert any(c.throttled for c in calls), "40 updates took over a second"
    for i, c in enumerate(calls):
        before = accepted_before(calls, i)
        assert (before == LIMIT) if c.throttled else (before < LIMIT), (i, before)
    # Within the first second exactly LIMIT pass (all 40 normally arrive within it).
    first_second = [c for c in calls if c.at < calls[0].at + 1.0]
    assert sum(not c.throttled for c in first_second) == min(LIMIT, len(first_second))
    # DescribeUserPool is never throttled: the limit is the update's own.
    stub_client(stub).describe_user_pool(UserPoolId="us-east-1_Kit1")
    assert not stub.calls("DescribeUserPool")[0].throttled


def test_a_throttled_update_leaves_the_programmed_reply_for_the_next_accepted_one(
    stub: CognitoStub,
) -> None:
    stub.throttle_above = 0  # every update throttled, however slow the machine
    stub.program(Reply(400, {"__type": "UserNotFoundException", "message": "no such user"}))
    assert burst(stub, 2) == ["TooManyRequestsException"] * 2
    stub.throttle_above = None  # unset again: the stub answers as it always did
    assert burst(stub, 3) == ["UserNotFoundException", "", ""]
    assert [c.throttled for c in stub.calls()] == [True, True, False, False, False]


# --- max_in_window --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "width", "after", "most"),
    [
        ([], 1.0, None, 0),
        ([5.0], 1.0, None, 1),
        ([0.0, 0.5, 0.999], 1.0, None, 3),
        # The window is half-open: an arrival exactly `width` after another is in the next one.
        ([0.0, 1.0], 1.0, None, 1),
        ([0.0, 1.0, 1.5, 1.9, 2.0, 2.9], 1.0, None, 3),
        # Order does not matter; equal times all count.
        ([3.0, 0.1, 3.0, 0.2, 3.0], 1.0, None, 3),
        ([0.0, 0.1, 0.2, 0.25], 0.2, None, 3),
        # `after`: earlier arrivals are ignored, those at `after` counted.
        ([0.0, 0.1, 0.2, 0.9, 1.05], 1.0, None, 4),
        ([0.0, 0.1, 0.2, 0.9, 1.05], 1.0, 0.1, 4),
        ([0.0, 0.1, 0.2, 0.9, 1.05], 1.0, 0.15, 3),
        ([0.0, 0.1, 0.2, 0.9, 1.05], 1.0, 5.0, 0),
    ],
)
def test_max_in_window(times: list[float], width: float, after: float | None, most: int) -> None:
    assert max_in_window(times, width, after) == most


def test_max_in_window_of_a_steady_rate() -> None:
    times = [k / 100 for k in range(500)]  # 100 per second for 5 s
    assert max_in_window(times) in (100, 101)  # binary floats put the 100th a hair inside
    assert max_in_window(times, width=0.5, after=4.9) == 10


# --- the driver against a real attrgate -----------------------------------------------------

POOL = "us-east-1_Quota1"
POLICIES = f"""\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {{name: kit}}
spec:
  callers: [noisy, quiet]
  userPools: ["{POOL}"]
  allow: [{{attribute: given_name}}]
"""
DURATION = 3.0


@pytest.fixture
def replica(stub: CognitoStub, tmp_path: Path) -> Iterator[Replica]:
    policies = tmp_path / "policies.yaml"
    policies.write_text(POLICIES)
    server = Replica(
        "kit",
        [
            *("--policies", str(policies), "--region", "us-east-1"),
            *("--cognito-endpoint", stub.endpoint, "--log-level", "WARNING"),
            *("--decision-log", str(tmp_path / "decisions.jsonl")),
        ],
        replica_env("stub-key", "stub-secret"),
        tmp_path,
    )
    server.start()
    yield server
    server.stop()


def test_open_loop_flows_through_a_real_attrgate(stub: CognitoStub, replica: Replica) -> None:
    flows = [
        Flow("noisy", 100.0, (replica.target,), pool=POOL),
        Flow("quiet", 5.0, (replica.target,), pool=POOL, users=1),
    ]
    results = run_flows(flows, DURATION)
    found = summary(results, flows)
    rates = [achieved_rps(results, i, DURATION) for i in range(len(flows))]
    report = f"summary {found}, achieved rps {rates}, drivers {results.drivers}"
    print(report)  # the figures, for whoever tunes the driver (pytest -s)
    assert [s["sent"] for s in found.values()] == [300, 15], report
    assert [s["by"] for s in found.values()] == [{("OK", ""): 300}, {("OK", ""): 15}], report
    for flow, rate in zip(flows, rates, strict=True):
        assert abs(rate - flow.rps) <= 0.1 * flow.rps, report
    updates = stub.calls()
    assert len(updates) == sum(s["ok"] for s in found.values()), report
    # One clock for every process: the stub's arrivals come after the common start.
    assert min(c.at for c in updates) >= results.start
    by_user = {c.body["Username"] for c in updates}
    assert "user-0" in by_user
    assert "user-299" in by_user  # the noisy flow spreads over its users
    assert {r.index for r in results if r.flow == 1} == set(range(15))
    assert all(0 <= r.sent <= r.done for r in results), report


def test_a_failing_driver_fails_the_run_and_leaves_no_process() -> None:
    before = set(multiprocessing.active_children())
    # An attribute name protobuf refuses: the driver fails building its requests, before it
    # connects (nothing listens at the target).
    broken = Flow("noisy", 10.0, ("127.0.0.1:9",), attribute=cast(str, 5))
    fine = Flow("quiet", 10.0, ("127.0.0.1:9",))
    with pytest.raises(RuntimeError, match="TypeError"):
        run_flows([broken, fine], 1.0)
    assert set(multiprocessing.active_children()) <= before


@pytest.mark.parametrize(
    ("flows", "duration", "processes"),
    [
        ([], 1.0, 1),
        ([Flow("a", 10.0, ("127.0.0.1:9",))], 0.0, 1),
        ([Flow("a", 10.0, ("127.0.0.1:9",))], 1.0, 0),
        ([Flow("a", 0.0, ("127.0.0.1:9",))], 1.0, 1),
        ([Flow("a", 10.0, ())], 1.0, 1),
        ([Flow("a", 10.0, ("127.0.0.1:9",), users=0)], 1.0, 1),
    ],
)
def test_run_flows_refuses_what_it_cannot_run(
    flows: list[Flow], duration: float, processes: int
) -> None:
    with pytest.raises(ValueError, match="needs"):
        run_flows(flows, duration, processes)
