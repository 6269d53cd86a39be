"""Counterexample requests, and their confirmation by the server's own pipeline.

Every counterexample a finding carries is decided before it is printed, by the same
Pipeline.check that answers CheckUpdateUserAttributes (offline: the pools given with --pool-file
are its DescribeUserPool answers, other pools are not described, as a server with
--pool-metadata-fail-open would treat them). A counterexample that is not a valid request, or
whose decision does not show what its finding claims, is a bug in the analysis: the finding is
left out and the discrepancy reported on stderr, never printed as a claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from attrgate.domain import Attribute, Decision, Invalid, PoolDescription, UpdateRequest
from attrgate.offline import decide, offline_pipeline
from attrgate.policy.compile import PolicySet
from attrgate.policy.trace import Trace

# The username of every counterexample: the JSON carries none, any valid one decides the same.
USERNAME = "ada"


@dataclass(frozen=True)
class Counterexample:
    caller: str
    user_pool: str
    attributes: tuple[tuple[str, str], ...]
    client_metadata: tuple[tuple[str, str], ...] = ()

    def request(self) -> UpdateRequest:
        return UpdateRequest(
            self.user_pool,
            USERNAME,
            tuple(Attribute(name, value) for name, value in self.attributes),
            dict(self.client_metadata),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "caller": self.caller,
            "userPool": self.user_pool,
            "attributes": dict(self.attributes),
            "clientMetadata": dict(self.client_metadata),
        }


# What a finding claims its counterexample shows, as a test of the decision.
@dataclass(frozen=True)
class NotDecidedBy:
    """The policy stage lets `name` through, and (the engine's trace says) an entry other than
    `entry` of `policy` decided it: the flagged entry accepts the value, yet never decides."""

    name: str
    policy: str
    entry: str

    def __call__(self, decision: Decision, trace: Trace) -> bool:
        return policy_allows(decision) and any(
            a.name == self.name
            and a.allowed
            and (self.policy, self.entry) not in [(e.policy, e.entry) for e in a.determining]
            for a in trace.attributes
        )


# What a finding claims of its counterexample's decision (NotDecidedBy: and of the engine's trace).
DecisionClaim = Callable[[Decision], bool]
Claim = DecisionClaim | NotDecidedBy


class Confirmer:
    """Decides counterexamples with the pipeline over the analysed set."""

    def __init__(self, policy_set: PolicySet, pools: Mapping[str, PoolDescription]) -> None:
        self._pipeline = offline_pipeline(policy_set, pools)
        self._loop = asyncio.new_event_loop()

    def decide(self, example: Counterexample, trace: Trace | None = None) -> Decision | Invalid:
        return self._loop.run_until_complete(
            decide(self._pipeline, example.caller, example.request(), trace)
        )

    def confirms(self, example: Counterexample, claim: Claim) -> bool:
        trace = Trace(record_policies=False)
        decision = self.decide(example, trace)
        if not isinstance(decision, Decision):
            return False
        return claim(decision, trace) if isinstance(claim, NotDecidedBy) else claim(decision)

    def close(self) -> None:
        self._loop.close()


def denied_by_entries(name: str, entries: set[tuple[str, str]]) -> DecisionClaim:
    """`name` is denied, only ATTRIBUTE_DENIED, each by one of `entries` (policy, entry)."""

    def claim(decision: Decision) -> bool:
        found = [v for v in decision.violations if v.attribute == name]
        return bool(found) and all(
            v.reason == "ATTRIBUTE_DENIED" and (v.policy, v.entry) in entries for v in found
        )

    return claim


def refused_for(name: str, reasons: set[str]) -> DecisionClaim:
    """`name` is refused (by the policy stage or the pool's schema) for one of `reasons` and
    for no other."""

    def claim(decision: Decision) -> bool:
        found = [v for v in decision.violations if v.attribute == name]
        return bool(found) and all(v.reason in reasons for v in found)

    return claim


def policy_allows(decision: Decision) -> bool:
    """The policy stage lets the request through (a later stage may still refuse it)."""
    return decision.allowed or decision.denied_by not in ("", "policy")


def nothing_found_by(policy: str, applies: bool = True) -> DecisionClaim:
    """`policy` applies and has no audit finding in the decision."""

    def claim(decision: Decision) -> bool:
        return (policy in decision.matched_policies) == applies and not any(
            v.policy == policy for v in decision.would_deny
        )

    return claim
