"""The CognitoQuota kind: what it accepts, what it refuses (at file and line), and what it
compiles to."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from attrgate.policy.compile import load_and_compile
from attrgate.policy.load import load_policy_set
from attrgate.policy.model import OTHERS

EXAMPLE = Path(__file__).resolve().parent.parent / "policies" / "cognito-quota.yaml"


def quota(spec: str, name: str = "q") -> str:
    body = "\n".join("  " + line for line in spec.strip().splitlines())
    return (
        f"apiVersion: attrgate/v1\nkind: CognitoQuota\nmetadata: {{name: {name}}}\nspec:\n{body}\n"
    )


def errors(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "quota.yaml"
    path.write_text(text)
    return [str(e) for e in load_policy_set(path).errors]


def test_the_example_compiles_with_its_shares_in_order() -> None:
    result, compiled = load_and_compile(EXAMPLE)
    assert result.ok
    assert compiled is not None
    assert compiled.quota is not None
    q = compiled.quota
    assert (q.rate, q.burst, q.max_wait) == (25.0, 25, 2.0)
    assert [s.name for s in q.shares] == ["verification", "batch", OTHERS]
    verification, batch, others = (s.spec for s in q.shares)
    assert (verification.weight, verification.floor, verification.ceiling) == (4, 5.0, math.inf)
    assert (batch.weight, batch.ceiling) == (1, 5)
    assert others.weight == 1
    assert q.per_user is not None
    assert (q.per_user.rate, q.per_user.burst) == (10.0, 1)


def test_callers_belong_to_the_first_share_that_names_them_else_to_others(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(
        quota(
            """
rate: 25
shares:
  - {name: a, callers: ["svc-*"]}
  - {name: b, callers: ["svc-batch", "batch-*"]}
"""
        )
    )
    _, compiled = load_and_compile(path)
    assert compiled is not None
    assert compiled.quota is not None
    q = compiled.quota
    names = [s.name for s in q.shares]
    assert names[q.share_of("svc-batch")] == "a"  # first share wins
    assert names[q.share_of("batch-7")] == "b"
    assert names[q.share_of("profile-api")] == OTHERS
    assert q.burst == 25  # default: the rate, rounded up
    assert q.max_wait == 2.0


def test_an_unnamed_share_is_named_by_its_first_caller(tmp_path: Path) -> None:
    path = tmp_path / "q.yaml"
    path.write_text(quota('rate: 2.5\nshares: [{callers: ["batch-*"]}]\nqueue: {maxWait: 500ms}'))
    _, compiled = load_and_compile(path)
    assert compiled is not None
    assert compiled.quota is not None
    assert compiled.quota.shares[0].name == "batch-*"
    assert compiled.quota.burst == 3
    assert compiled.quota.max_wait == 0.5


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("rate: 0", "quota.yaml:5: spec.rate:"),
        ("rate: -1", "quota.yaml:5: spec.rate:"),
        ("rate: 25\nburst: 0", "quota.yaml:6: spec.burst:"),
        (
            "rate: 25\nqueue: {maxWait: 2 s}",
            "quota.yaml:6: spec.queue.maxWait: '2 s' is not a wait",
        ),
        ("rate: 25\nqueue: {maxWait: 61s}", "spec.queue.maxWait: '61s' is not a wait"),
        ("rate: 25\nqueue: {maxWait: 2}", "spec.queue.maxWait: expected a string"),
        ("rate: 25\nperUser: {rate: 0}", "quota.yaml:6: spec.perUser.rate:"),
        ("rate: 25\nshares: [{callers: []}]", "spec.shares[0].callers: needs at least 1 item"),
        ("rate: 25\nshares: [{callers: [a], weight: 0}]", "spec.shares[0].weight:"),
        ("rate: 25\nshares: [{callers: [a], reserved: 1.5}]", "spec.shares[0].reserved:"),
        ("rate: 25\nshares: [{callers: [a], maxRat: 5}]", "unknown key (did you mean maxRate?)"),
        (
            "rate: 25\nshares: [{callers: [a], reserved: 0.6}, {callers: [b], reserved: 0.5}]",
            "the reserved fractions of all shares add up to more than 1",
        ),
        (
            "rate: 25\nshares: [{callers: [a], reserved: 0.4, maxRate: 5}]",
            "maxRate 5 is below its reserved 0.4 x rate 25",
        ),
        (
            "rate: 25\nshares: [{name: x, callers: [a]}, {name: x, callers: [b]}]",
            "two shares are named 'x'",
        ),
        ("rate: 25\nshares: [{name: others, callers: [a]}]", "two shares are named 'others'"),
    ],
)
def test_refusals_point_at_file_line_and_key(tmp_path: Path, spec: str, expected: str) -> None:
    found = errors(tmp_path, quota(spec))
    assert found, spec
    assert any(expected in e for e in found), found


def test_a_second_cognito_quota_is_refused_at_its_kind(tmp_path: Path) -> None:
    text = quota("rate: 25", name="one") + "---\n" + quota("rate: 10", name="two")
    found = errors(tmp_path, text)
    assert len(found) == 1
    assert "quota.yaml:8: kind: a second CognitoQuota (the first is at" in found[0]
