"""Policy sets with every `attrgate analyze` finding seeded on purpose, and near misses that
must not be reported. A line ending in `# expect: CODE ...` is where a finding must be; every
other line must have none (the near misses say why in their comments)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from support.environment import clean_env

REPO = Path(__file__).resolve().parent.parent.parent
_SCRIPT = Path(sys.executable).parent / "attrgate"
ATTRGATE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "attrgate"]


def analyze_command(*args: str) -> subprocess.CompletedProcess[str]:
    """`attrgate analyze ARGS`, the installed command in a process of its own."""
    return attrgate_command("analyze", *args)


def attrgate_command(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`attrgate ARGS` in a process of its own, from the repository root unless told."""
    return subprocess.run(
        [*ATTRGATE, *args],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


NAMES = """\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: profile}
spec:
  callers: ["svc-*"]
  userPools: ["us-east-1_*"]
  allow:
    - {attribute: "custom:role", enum: [admin, user]}  # expect: ALLOW_ALWAYS_DENIED (own deny)
    - {attribute: "custom:*", maxLength: 5}  # near miss: custom:role is denied, custom:x is not
    - {attribute: "custom:audit_*"}  # expect: ALLOW_ALWAYS_DENIED (lockdown)
    - {attribute: "custom:team"}  # near miss: team-lock denies it for svc-a* callers only
    - {attribute: "sub"}  # expect: ALLOW_UNREACHABLE_NAME
  deny:
    - {attribute: "Custom:Role"}
    - {attribute: "cognito:*"}  # expect: DENY_UNREACHABLE_NAME
    - {attribute: "SUB*"}  # near miss: subscription
    - {attribute: "ßßßßßßßßßßßßßßßßß"}  # near miss: 17 characters, 34 once casefolded
    - {attribute: "custom:a_name_far_too_long_for_cognito"}  # expect: DENY_UNREACHABLE_NAME
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: lockdown}
spec:
  callers: ["svc-*"]
  userPools: ["*"]
  deny:
    - {attribute: "custom:audit_*"}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: team-lock}
spec:
  callers: ["svc-a*"]
  userPools: ["us-east-1_*"]
  deny:
    - {attribute: "custom:team"}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: regional}
spec:
  callers: ["batch-a*", "batch-b*"]
  userPools: ["us-east-1_*"]
  allow:
    - {attribute: "custom:region"}  # expect: ALLOW_ALWAYS_DENIED (lock-a and lock-b together)
    - {attribute: "custom:zone"}  # near miss: only lock-a denies it
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: lock-a}
spec:
  callers: ["batch-a*"]
  userPools: ["*"]
  deny:
    - {attribute: "custom:region"}
    - {attribute: "custom:zone"}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: lock-b}
spec:
  callers: ["batch-b*"]
  userPools: ["*"]
  deny:
    - {attribute: "custom:region"}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: verifier}
spec:
  callers: ["verify-*"]
  userPools: ["*"]
  allow:
    - {attribute: "*_verified", enum: ["true"]}  # expect: VERIFIED_FLAG_BY_GLOB (phone_number_)
    - {attribute: email_verified, enum: ["true"]}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: verifier-two}
spec:
  callers: ["verify2-*"]
  userPools: ["*"]
  allow:
    - {attribute: "*verified*", maxLength: 8}  # near miss: an entry below decides each flag
    - {attribute: email_verified}
  deny:
    - {attribute: phone_number_verified}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: freeze-role}  # expect: AUDIT_EQUALS_ENFORCE
spec:
  mode: audit
  callers: ["svc-*"]
  userPools: ["us-east-1_*"]
  deny:
    - {attribute: "custom:role"}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: freeze-tier}  # near miss: custom:* grants custom:tier
spec:
  mode: audit
  callers: ["svc-*"]
  userPools: ["us-east-1_*"]
  deny:
    - {attribute: "custom:tier"}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: night-audit}  # expect: POLICY_UNREACHABLE (no enforce policy for cron-*)
spec:
  mode: audit
  callers: ["cron-*"]
  userPools: ["*"]
  deny:
    - {attribute: given_name}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: typo-pools}
spec:
  callers: ["svc-*"]
  userPools:
    - "us-east-1:*"  # expect: POLICY_UNREACHABLE
  allow:
    - {attribute: given_name}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: mixed-pools}
spec:
  callers: ["ops-*"]
  userPools:
    - "eu-*"  # near miss: eu-_x is a pool id
    - "arn:aws:cognito-idp:*"  # expect: POOL_GLOB_UNREACHABLE
  allow:
    - {attribute: given_name}
"""

SHADOWS = """\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: editor}
spec:
  userPools: ["us-east-1_*"]
  callers: ["svc-*"]
  allow:
    - {attribute: given_name, maxLength: 64}
    - {attribute: given_name, maxLength: 32}  # expect: ALLOW_SHADOWED (a length range inside)
    - {attribute: family_name, maxLength: 32, allowEmpty: true}  # near miss: only it empties
    - {attribute: family_name, maxLength: 64}
    - {attribute: "custom:tier", enum: [free, pro, enterprise]}
    - {attribute: "custom:tier", enum: [free, pro]}  # expect: ALLOW_SHADOWED (an enum subset)
    - {attribute: nickname, pattern: '^[a-z]+$'}
    - {attribute: nickname, pattern: '^[a-z]{1,8}$'}  # near miss: patterns are not compared
    - {attribute: "custom:pref_*", maxLength: 10}  # near miss: tried first
    # (prefs covers it, but this entry decides first: redundant, not shadowed)
    - {attribute: "custom:flag_*", maxLength: 10}  # near miss: flags covers svc-a* only
    - {attribute: middle_name}
    - {attribute: middle_name}  # expect: ALLOW_SHADOWED (the same entry twice: the first stays)
    - {attribute: locale, maxLength: 32}  # near miss: tried before the wider one, it decides
    - {attribute: locale, maxLength: 64}  # near miss: decides what the narrower one refuses
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: prefs}
spec:
  callers: ["*"]
  userPools: ["*"]
  allow:
    - {attribute: "custom:pref_*"}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: prefs-again}  # expect: POLICY_UNREACHABLE (prefs again: the later one)
spec:
  callers: ["svc-*", "*"]  # the same callers as prefs, said otherwise
  userPools: ["*_*"]  # every pool id has a _
  allow:
    - {attribute: "custom:pref_*", allowEmpty: false}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: flags}
spec:
  callers: ["svc-a*"]
  userPools: ["*"]
  allow:
    - {attribute: "custom:*"}
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: profile-copy}  # expect: POLICY_UNREACHABLE (editor makes it irrelevant)
spec:
  callers: ["svc-billing"]
  userPools: ["us-east-1_*"]
  allow:
    - {attribute: given_name, maxLength: 10}
"""

POOLS = """\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: accounts}
spec:
  callers: ["svc-*"]
  userPools: ["us-east-1_*"]
  allow:
    - {attribute: "custom:tier", enum: [free, pro, enterprise]}  # expect: POOL_VALUE_REFUSED
    - {attribute: "custom:nickname"}  # expect: POOL_UNKNOWN_ATTRIBUTE
    - {attribute: "custom:employee_id"}  # expect: POOL_IMMUTABLE_ATTRIBUTE
    - {attribute: "custom:level", format: integer}  # expect: POOL_VALUE_REFUSED (above MaxValue)
    - {attribute: "custom:code", maxLength: 12}  # expect: POOL_VALUE_REFUSED (MaxLength 8)
    - {attribute: "custom:vip", format: boolean}  # near miss: every value it takes is a Boolean
    - {attribute: "custom:pref_*"}  # expect: POOL_UNKNOWN_ATTRIBUTE (the pool has none)
    - {attribute: "custom:*_id", maxLength: 20}  # expect: POOL_IMMUTABLE_ATTRIBUTE (employee_id)
    - {attribute: given_name, maxLength: 64}  # near miss: the pool takes 2048 characters
    - {attribute: "custom:band", enum: [a, b]}  # near miss: the pool takes both
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: elsewhere}  # near miss: its pools are not the described one
spec:
  callers: ["svc-*"]
  userPools: ["eu-west-1_*"]
  allow:
    - {attribute: "custom:unknown_here"}
"""

# The described pool of POOLS, as CreateUserPool's Schema (custom attributes).
POOL_SCHEMA: list[dict[str, Any]] = [
    {
        "Name": "tier",
        "AttributeDataType": "String",
        "Mutable": True,
        "StringAttributeConstraints": {"MaxLength": "5"},
    },
    {"Name": "employee_id", "AttributeDataType": "String", "Mutable": False},
    {
        "Name": "level",
        "AttributeDataType": "Number",
        "Mutable": True,
        "NumberAttributeConstraints": {"MinValue": "1", "MaxValue": "9"},
    },
    {
        "Name": "code",
        "AttributeDataType": "String",
        "Mutable": True,
        "StringAttributeConstraints": {"MaxLength": "8"},
    },
    {"Name": "vip", "AttributeDataType": "Boolean", "Mutable": True},
    {"Name": "band", "AttributeDataType": "String", "Mutable": True},
]
# The described pool of SHADOWS: the custom attributes its counterexamples write.
SHADOW_POOL_SCHEMA: list[dict[str, Any]] = [
    {"Name": "tier", "AttributeDataType": "String", "Mutable": True},
    {"Name": "pref_color", "AttributeDataType": "String", "Mutable": True},
]

_EXPECT = re.compile(r"# expect: ([A-Z_]+)")


def expected(text: str) -> set[tuple[str, int]]:
    """(code, line) of every `# expect:` marker."""
    return {
        (found[1], number)
        for number, line in enumerate(text.splitlines(), start=1)
        if (found := _EXPECT.search(line))
    }


def describe_answer(pool_id: str, schema: list[dict[str, Any]]) -> dict[str, Any]:
    """A DescribeUserPool answer for `schema` (custom attributes, as Cognito lists them)."""
    attributes = [{**a, "Name": f"custom:{a['Name']}"} for a in schema]
    return {"UserPool": {"Id": pool_id, "Name": "fixture", "SchemaAttributes": attributes}}
