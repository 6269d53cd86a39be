"""What a case expects, what the decision was, whether they agree, and, when not, a readable
diff of the two.

Both sides use the test file's key names. `expected` holds the keys the case gives (and
`outcome`, its `expect`); `actual` holds every key for its outcome. Findings (violations,
wouldDeny, invalid) compare as sets where each expected item names only the keys it cares
about: every expected item must match its own actual item, and no actual item may be left
over. Nothing here holds an attribute value: findings carry names and codes, the SMS
assessment a country.
"""

from __future__ import annotations

import difflib
from typing import Any

from attrgate.domain import Decision, Invalid, Stage, Violation
from attrgate.policy.testmodel import TestCase
from attrgate.policytest.expand import render_value

Result = dict[str, Any]
_LISTS = ("violations", "wouldDeny", "invalid")
# The order keys are shown in.
_ORDER = ("outcome", "deniedBy", "violations", "wouldDeny", "invalid", "pendingVerification", "sms")
_FINDING_KEYS = ("field", "attribute", "clientMetadataKey", "policy", "entry", "reason")


def expected_of(spec: TestCase) -> Result:
    out: Result = {"outcome": spec.expect}
    if spec.denied_by is not None:
        out["deniedBy"] = spec.denied_by
    for key, items in (
        ("violations", spec.violations),
        ("wouldDeny", spec.would_deny),
        ("invalid", spec.invalid),
    ):
        if items is not None:
            out[key] = [i.model_dump(by_alias=True, exclude_none=True) for i in items]
    if spec.pending_verification is not None:
        out["pendingVerification"] = list(spec.pending_verification)
    sms = spec.expected_sms
    if sms is not None:
        out["sms"] = sms.model_dump(by_alias=True, exclude_none=True)
    return out


def actual_of(outcome: Invalid | Decision) -> Result:
    if isinstance(outcome, Invalid):
        invalid = [{"field": v.field, "reason": v.reason} for v in outcome.violations]
        return {"outcome": "invalid", "invalid": invalid}
    sms = outcome.sms
    return {
        "outcome": "allow" if outcome.allowed else "deny",
        "deniedBy": outcome.denied_by or None,
        "violations": [_finding(v) for v in outcome.violations],
        "wouldDeny": [_finding(v) for v in outcome.would_deny],
        "pendingVerification": list(outcome.pending_verification),
        "sms": {
            "triggersSms": bool(sms and sms.triggers_sms),
            "country": sms.country if sms is not None and sms.country else None,
            "refused": outcome.denied_by == Stage.SMS_COUNTRY,
        },
    }


def _finding(v: Violation) -> dict[str, str]:
    found = {"attribute": v.attribute, "policy": v.policy, "entry": v.entry, "reason": v.reason}
    if v.client_metadata_key:
        found["clientMetadataKey"] = v.client_metadata_key
    return found


def agrees(expected: Result, actual: Result) -> bool:
    for key, want in expected.items():
        got = actual.get(key)
        if key in _LISTS:
            pairs = _pairs(want, got or [])
            if None in pairs or len(pairs) != len(got or []):
                return False
        elif key == "pendingVerification":
            if sorted(want) != sorted(got or []):
                return False
        elif key == "sms":
            if not _fits(want, got or {}):
                return False
        elif want != got:
            return False
    return True


def _fits(want: dict[str, Any], got: dict[str, Any]) -> bool:
    return all(got.get(k) == v for k, v in want.items())


def _pairs(want: list[dict[str, Any]], got: list[dict[str, Any]]) -> list[int | None]:
    """For each expected item, the actual item it is paired with (None: none is left that fits
    it): a maximum bipartite matching, so an item that fits several never steals the only one
    another fits."""
    owner: dict[int, int] = {}

    def place(i: int, seen: set[int]) -> bool:
        for j, item in enumerate(got):
            if j in seen or not _fits(want[i], item):
                continue
            seen.add(j)
            if j not in owner or place(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(want)):
        place(i, set())
    paired: list[int | None] = [None] * len(want)
    for j, i in owner.items():
        paired[i] = j
    return paired


def diff(expected: Result, actual: Result) -> list[str]:
    """Expected against actual, a line per key and per finding: `  ` both, `- ` expected only,
    `+ ` actual only. Shows the keys the case gives, and, when the outcome differs, what
    explains the actual one (its stage and findings)."""
    shown = [k for k in _ORDER if k in expected]
    if expected["outcome"] != actual["outcome"]:
        explain = {
            "deny": ("deniedBy", "violations"),
            "invalid": ("invalid",),
            "allow": ("wouldDeny",) if actual.get("wouldDeny") else (),
        }
        shown += [k for k in explain.get(actual["outcome"], ()) if k not in shown]
        shown.sort(key=_ORDER.index)
    left: list[str] = []
    right: list[str] = []
    for key in shown:
        want, got = expected.get(key), actual.get(key)
        if key in _LISTS:
            _list_lines(key, want, got, left, right)
            continue
        if key == "sms" and isinstance(want, dict):
            got = {k: (got or {}).get(k) for k in want} if key in actual else None
        if key in expected:
            left.append(_line(key, want))
        if key in actual:
            right.append(_line(key, got))
    lines = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(
        None, left, right, autojunk=False
    ).get_opcodes():
        if tag == "equal":
            lines += ["  " + line for line in left[i1:i2]]
            continue
        lines += ["- " + line for line in left[i1:i2]]
        lines += ["+ " + line for line in right[j1:j2]]
    return lines


def _list_lines(key: str, want: Any, got: Any, left: list[str], right: list[str]) -> None:
    """Paired items line up (the actual one shown with the expected one's keys); expected items
    left unpaired and actual items left over (without their empty keys) follow."""
    if want is not None:
        left.extend(_items(key, want))
    if got is None:
        return
    pairs = _pairs(want, got) if want is not None else []
    shown = [{k: got[j].get(k) for k in want[i]} for i, j in enumerate(pairs) if j is not None]
    used = set(pairs)
    shown += [{k: v for k, v in g.items() if v != ""} for j, g in enumerate(got) if j not in used]
    right.extend(_items(key, shown))


def _items(key: str, items: list[dict[str, Any]]) -> list[str]:
    if not items:
        return [f"{key}: []"]
    return [f"{key}:"] + [f"  - {_flow(item)}" for item in items]


def _line(key: str, value: Any) -> str:
    if isinstance(value, dict):
        return f"{key}: {_flow(value)}"
    if isinstance(value, list):
        return f"{key}: [{', '.join(render_value(v) for v in sorted(value))}]"
    return f"{key}: {_scalar(value)}"


def _flow(item: dict[str, Any]) -> str:
    """A mapping on one line, findings' keys in a fixed order."""
    keys = sorted(item, key=lambda k: (*_FINDING_KEYS, *item).index(k))
    return "{" + ", ".join(f"{k}: {_scalar(item[k])}" for k in keys) + "}"


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return render_value(value)


def failure_message(expected: Result, actual: Result) -> str:
    """One line saying how a failed case failed."""
    if expected["outcome"] != actual["outcome"]:
        return f"expected {expected['outcome']}, got {actual['outcome']}"
    differ = [k for k in _ORDER[1:] if k in expected and not agrees({k: expected[k]}, actual)]
    return f"{actual['outcome']} as expected, but {' and '.join(differ)} not"
