"""Deciding without Cognito or a store: the server's own pipeline, with DescribeUserPool answers
read from fixture files. `attrgate test` and `attrgate explain` decide through this, so what
they report is what CheckUpdateUserAttributes answers for the same policies and pool.

What needs I/O is left out: counted SMS limits and budgets (they need a store), and pools
without a fixture (the pool stage is skipped, as a server with --pool-metadata-fail-open would:
no schema check, no pending verification, and a phone_number write is assumed to send an SMS).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any

from attrgate.domain import (
    Caller,
    Decision,
    Invalid,
    LookupLimited,
    PendingCall,
    PoolDescription,
    Unavailable,
    UpdateRequest,
    UpstreamError,
    UpstreamResult,
)
from attrgate.files import FileRefused, read_small_file
from attrgate.lookups import OverBudget
from attrgate.pipeline import Pipeline
from attrgate.policy.compile import PolicySet
from attrgate.policy.trace import Trace
from attrgate.policy.yamlsource import YamlError, read_documents
from attrgate.upstream.describe import pool_description

MAX_FIXTURE_BYTES = 1024 * 1024
_NO_FIXTURE = UpstreamResult(ok=False, error=UpstreamError.UNAVAILABLE, error_code="NoFixture")


class FixtureError(Exception):
    """A pool fixture that cannot be read or is not a DescribeUserPool answer."""


def read_pool_fixture(path: str, pool_id: str | None = None) -> PoolDescription:
    """A DescribeUserPool answer from a JSON or YAML file: `{"UserPool": {...}}` as Cognito
    returns it (the bare UserPool object is accepted too). `pool_id`: the pool it describes;
    None for the answer's own `Id`."""
    try:
        data = read_small_file(path, MAX_FIXTURE_BYTES)
    except FileRefused as exc:
        raise FixtureError(str(exc)) from None
    try:
        text = data.decode("utf-8")
        answer: Any = json.loads(text) if path.endswith(".json") else _yaml(text)
    except UnicodeDecodeError:
        raise FixtureError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise FixtureError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from None
    # Nesting deeper than the parsers recurse is a RecursionError.
    except (ValueError, RecursionError) as exc:
        raise FixtureError(f"{path}: not JSON or YAML ({type(exc).__name__})") from None
    except YamlError as exc:
        raise FixtureError(f"{path}:{exc.line}: {exc.message}") from None
    if isinstance(answer, dict) and isinstance(answer.get("UserPool"), dict):
        answer = answer["UserPool"]
    elif not (isinstance(answer, dict) and "Id" in answer):
        raise FixtureError(f"{path}: not a DescribeUserPool answer (a mapping with UserPool)")
    problem = _answer_problem(answer)
    if problem is not None:
        raise FixtureError(f"{path}: UserPool.{problem}")
    own = answer.get("Id")
    if pool_id is not None and isinstance(own, str) and own and own != pool_id:
        # One pool's schema judging another's writes would explain (or test) the wrong pool.
        raise FixtureError(f"{path}: describes user pool {own}, not {pool_id}")
    pool_id = pool_id if pool_id is not None else own
    if not isinstance(pool_id, str) or not pool_id:
        raise FixtureError(f"{path}: the DescribeUserPool answer has no UserPool.Id")
    try:
        return pool_description(pool_id, answer)
    except (TypeError, AttributeError, ValueError) as exc:
        raise FixtureError(f"{path}: not a DescribeUserPool answer ({exc})") from None


_DATA_TYPES = ("String", "Number", "DateTime", "Boolean")
_BOUNDS = {
    "StringAttributeConstraints": ("MinLength", "MaxLength"),
    "NumberAttributeConstraints": ("MinValue", "MaxValue"),
}


def _answer_problem(pool: dict[str, Any]) -> str | None:
    """What in the keys attrgate reads is not as DescribeUserPool gives it (a typo such as
    `"Strin"` would otherwise be read as no constraint at all), or None."""
    attributes = pool.get("SchemaAttributes", [])
    if not isinstance(attributes, list):
        return "SchemaAttributes: expected a list"
    for index, raw in enumerate(attributes):
        at = f"SchemaAttributes[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("Name"), str) or not raw["Name"]:
            return f"{at}: expected a mapping with a Name"
        kind = raw.get("AttributeDataType", "String")
        if kind not in _DATA_TYPES:
            return f"{at}.AttributeDataType: {kind!r} is not one of {', '.join(_DATA_TYPES)}"
        if not isinstance(raw.get("Mutable", True), bool):
            return f"{at}.Mutable: expected true or false"
        for group, keys in _BOUNDS.items():
            bounds = raw.get(group, {})
            if not isinstance(bounds, dict):
                return f"{at}.{group}: expected a mapping"
            for key in keys:
                value = bounds.get(key)
                # At most 18 digits: Python's int() refuses thousands, read as no bound at all.
                if value is not None and not re.fullmatch(r"-?[0-9]{1,18}", str(value)):
                    shown = repr(value) if len(str(value)) <= 24 else f"{str(value)[:20]!r}..."
                    return f"{at}.{group}.{key}: {shown} is not an integer of at most 18 digits"
    for key in ("AutoVerifiedAttributes",):
        listed = pool.get(key, [])
        if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
            return f"{key}: expected a list of attribute names"
    settings = pool.get("UserAttributeUpdateSettings", {})
    listed = (
        settings.get("AttributesRequireVerificationBeforeUpdate", [])
        if isinstance(settings, dict)
        else None
    )
    if not isinstance(listed, list) or not all(isinstance(v, str) for v in listed):
        return (
            "UserAttributeUpdateSettings.AttributesRequireVerificationBeforeUpdate: expected a "
            "list of attribute names"
        )
    return None


def _yaml(text: str) -> Any:
    """One YAML document, read as policies are (YAML 1.2 core schema; no anchors, so no
    exponential expansion)."""
    documents = list(read_documents(text))
    if len(documents) != 1:
        raise YamlError(1, f"expected one YAML document, found {len(documents)}")
    return documents[0].value


class FixturePools:
    """The pipeline's pool source: fixtures by pool id; any other pool has no description."""

    def __init__(self, pools: Mapping[str, PoolDescription]) -> None:
        self._pools = dict(pools)

    async def get(self, pool_id: str, caller: str) -> PoolDescription | UpstreamResult | OverBudget:
        return self._pools.get(pool_id, _NO_FIXTURE)


class _NoUpstream:
    def submit(
        self, request: UpdateRequest, deadline: float | None, call: PendingCall, sms_write: bool
    ) -> asyncio.Future[UpstreamResult]:
        raise RuntimeError("an offline pipeline never forwards")


def offline_pipeline(
    policy_set: PolicySet, pools: Mapping[str, PoolDescription] | None = None
) -> Pipeline:
    """The server's pipeline over `policy_set`, deciding only (Pipeline.check)."""
    return Pipeline(
        policy_set,
        _NoUpstream(),
        FixturePools(pools or {}),
        users=None,
        sms=None,
        pool_metadata_fail_open=True,
        new_id=lambda: "offline",
    )


async def decide(
    pipeline: Pipeline, caller: str, request: UpdateRequest, trace: Trace | None = None
) -> Invalid | Decision:
    """What CheckUpdateUserAttributes answers (offline, nothing is ever unavailable)."""
    found = await pipeline.check(Caller(caller, "offline"), request, trace)
    if isinstance(found, Unavailable | LookupLimited):
        raise RuntimeError(f"an offline decision needed {type(found).__name__}")  # never
    return found
