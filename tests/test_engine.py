"""The pure policy engine: semantics of allow, deny, audit, verified flags and metadata."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attrgate.domain import Attribute, UpdateRequest, Verdict
from attrgate.policy.compile import PolicySet, compile_policy_set
from attrgate.policy.engine import evaluate
from attrgate.policy.globs import GlobIndex
from attrgate.policy.load import load_policy_set

POOL = "us-east-1_Demo1"


def policy(
    name: str,
    body: str,
    callers: str = "[svc]",
    pools: str = '["*"]',
    mode: str = "enforce",
) -> str:
    indented = "\n".join("  " + line for line in body.strip("\n").splitlines())
    return (
        f"apiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata:\n  name: {name}\n"
        f"spec:\n  mode: {mode}\n  callers: {callers}\n  userPools: {pools}\n{indented}\n"
    )


def compile_set(tmp_path: Path, *documents: str) -> PolicySet:
    path = tmp_path / "set.yaml"
    path.write_text("---\n".join(documents))
    result = load_policy_set(path)
    assert result.ok, [str(e) for e in result.errors]
    return compile_policy_set(result.policies, result.revision)


def decide(
    policy_set: PolicySet,
    *attributes: tuple[str, str],
    caller: str = "svc",
    pool: str = POOL,
    metadata: dict[str, str] | None = None,
) -> Verdict:
    request = UpdateRequest(
        pool, "ada", tuple(Attribute(n, v) for n, v in attributes), metadata or {}
    )
    return evaluate(policy_set, caller, request)


def reasons(verdict: Verdict) -> list[tuple[str, str, str, str]]:
    return [(v.attribute, v.policy, v.entry, v.reason) for v in verdict.violations]


PROFILE = policy(
    "profile",
    """
allow:
  - attribute: given_name
    maxLength: 5
  - attribute: "custom:tier"
    enum: [free, pro]
  - attribute: email
    format: email
  - attribute: "custom:nickname"
    pattern: '^[a-z]{3,5}$'
    allowEmpty: true
  - attribute: "custom:pref_*"
deny:
  - attribute: "custom:role"
clientMetadata:
  allowKeys: [source]
""",
)


def test_allowed_request(tmp_path: Path) -> None:
    verdict = decide(
        compile_set(tmp_path, PROFILE),
        ("given_name", "Ada"),
        ("custom:tier", "pro"),
        ("email", "ada@example.com"),
        ("custom:pref_color", "blue"),
        metadata={"source": "web"},
    )
    assert verdict.allowed
    assert verdict.violations == ()
    assert verdict.matched_policies == ("profile",)


def test_default_deny_without_policy(tmp_path: Path) -> None:
    verdict = decide(compile_set(tmp_path, PROFILE), ("given_name", "Ada"), caller="stranger")
    assert not verdict.allowed
    assert reasons(verdict) == [("", "", "", "NO_APPLICABLE_POLICY")]
    assert verdict.matched_policies == ()


def test_pool_globs_are_case_sensitive(tmp_path: Path) -> None:
    policy_set = compile_set(
        tmp_path, policy("p", "allow: [{attribute: x}]", pools='["us-east-1_*"]')
    )
    assert decide(policy_set, ("x", "1"), pool="us-east-1_A").allowed
    assert not decide(policy_set, ("x", "1"), pool="US-EAST-1_A").allowed
    assert not decide(policy_set, ("x", "1"), pool="eu-west-1_A").allowed


def test_every_failing_attribute_is_listed(tmp_path: Path) -> None:
    verdict = decide(
        compile_set(tmp_path, PROFILE),
        ("given_name", "Adelaide"),
        ("custom:tier", "gold"),
        ("email", "not-an-email"),
        ("custom:role", "admin"),
        ("family_name", "X"),
        ("custom:nickname", "abc\n"),
        ("custom:pref_x", "ok"),
    )
    assert not verdict.allowed
    assert reasons(verdict) == [
        ("given_name", "profile", "allow[0]", "MAX_LENGTH"),
        ("custom:tier", "profile", "allow[1]", "ENUM"),
        ("email", "profile", "allow[2]", "FORMAT"),
        ("custom:role", "profile", "deny[0]", "ATTRIBUTE_DENIED"),
        ("family_name", "", "", "ATTRIBUTE_NOT_ALLOWED"),
        # fullmatch: a trailing newline does not sneak past `$`.
        ("custom:nickname", "profile", "allow[3]", "PATTERN"),
    ]


def test_messages_never_echo_values(tmp_path: Path) -> None:
    marker = "zzMARKERzz"
    verdict = decide(
        compile_set(tmp_path, PROFILE),
        ("given_name", marker),
        ("custom:tier", marker),
        ("email", marker),
        ("custom:nickname", marker),
    )
    assert len(verdict.violations) == 4
    assert all(marker not in v.message for v in verdict.violations)


def test_min_length(tmp_path: Path) -> None:
    policy_set = compile_set(tmp_path, policy("m", "allow: [{attribute: a, minLength: 3}]"))
    assert decide(policy_set, ("a", "abc")).allowed
    assert reasons(decide(policy_set, ("a", "ab"))) == [("a", "m", "allow[0]", "MIN_LENGTH")]


def test_empty_values_need_allow_empty(tmp_path: Path) -> None:
    policy_set = compile_set(tmp_path, PROFILE)
    # The entry's pattern applies to non-empty values only.
    assert decide(policy_set, ("custom:nickname", "")).allowed
    assert reasons(decide(policy_set, ("given_name", ""))) == [
        ("given_name", "profile", "allow[0]", "EMPTY_VALUE_NOT_ALLOWED")
    ]


@pytest.mark.parametrize(
    ("fmt", "good", "bad"),
    [
        (
            "email",
            ["a@b.co", "first.last+tag@example.org"],
            [
                "a@b",
                "@b.co",
                "a b@c.de",
                "a@@b.co",
                "ada\x00@example.com",
                "\u202eada@example.com",
                "ada@example.com\u200b",
                "a<script>@example.com",
                "a@" + "b" * 1900 + ".com",
                ".a@b.co",
                "a..b@c.co",
                "a" * 65 + "@b.co",
            ],
        ),
        (
            "e164",
            ["+14155550100", "+442071838750"],
            ["14155550100", "+0123", "+1 415", "+1234567890123456"],
        ),
        ("boolean", ["true", "false"], ["True", "1", "yes"]),
        ("integer", ["0", "-12", "42"], ["1.5", "x", "", "٣"]),
        (
            "url",
            ["https://example.com/p", "http://a.b"],
            ["ftp://x.y", "example.com", "https://", "javascript:alert(1)"],
        ),
    ],
)
def test_formats(tmp_path: Path, fmt: str, good: list[str], bad: list[str]) -> None:
    policy_set = compile_set(tmp_path, policy("f", f"allow: [{{attribute: a, format: {fmt}}}]"))
    for value in good:
        assert decide(policy_set, ("a", value)).allowed, value
    for value in bad:
        assert not decide(policy_set, ("a", value)).allowed, value


def test_allows_add_up_across_policies(tmp_path: Path) -> None:
    policy_set = compile_set(
        tmp_path,
        PROFILE,
        policy("anything", 'allow: [{attribute: "*"}]', callers="[svc]"),
    )
    # profile constrains given_name to 5 chars; anything's unconstrained "*" accepts it anyway.
    assert decide(policy_set, ("given_name", "Adelaide"), ("family_name", "X")).allowed


def test_deny_wins_over_any_allow(tmp_path: Path) -> None:
    policy_set = compile_set(
        tmp_path,
        policy("open", 'allow: [{attribute: "*"}, {attribute: email_verified}]'),
        policy("guard", 'deny: [{attribute: "*_verified"}, {attribute: "custom:role"}]'),
    )
    verdict = decide(policy_set, ("email_verified", "true"), ("custom:role", "x"), ("name", "n"))
    assert reasons(verdict) == [
        ("email_verified", "guard", "deny[0]", "ATTRIBUTE_DENIED"),
        ("custom:role", "guard", "deny[1]", "ATTRIBUTE_DENIED"),
    ]


@pytest.mark.parametrize("flag", ["email_verified", "phone_number_verified"])
def test_verified_flags_need_an_exact_allow_entry(tmp_path: Path, flag: str) -> None:
    globbed = compile_set(
        tmp_path, policy("g", 'allow: [{attribute: "*"}, {attribute: "*_verified"}]')
    )
    assert reasons(decide(globbed, (flag, "true"))) == [(flag, "", "", "VERIFIED_FLAG_NOT_GRANTED")]
    exact = compile_set(tmp_path, policy("e", f'allow: [{{attribute: {flag}, enum: ["true"]}}]'))
    assert decide(exact, (flag, "true")).allowed
    assert reasons(decide(exact, (flag, "false"))) == [(flag, "e", "allow[0]", "ENUM")]


def test_audit_reports_would_deny_without_changing_the_outcome(tmp_path: Path) -> None:
    policy_set = compile_set(
        tmp_path,
        PROFILE,
        policy(
            "freeze", 'deny: [{attribute: "given_name"}, {attribute: "custom:*"}]', mode="audit"
        ),
        policy("elsewhere", 'deny: [{attribute: "*"}]', mode="audit", callers="[other]"),
    )
    verdict = decide(policy_set, ("given_name", "Ada"), ("custom:tier", "pro"), ("email", "a@b.co"))
    assert verdict.allowed
    assert verdict.matched_policies == ("profile", "freeze")
    assert [(v.attribute, v.policy, v.entry, v.reason) for v in verdict.would_deny] == [
        ("given_name", "freeze", "deny[0]", "ATTRIBUTE_DENIED"),
        ("custom:tier", "freeze", "deny[1]", "ATTRIBUTE_DENIED"),
    ]
    # An attribute already denied is a violation, not a would-deny.
    denied = decide(policy_set, ("given_name", "Adelaide"))
    assert not denied.allowed
    assert denied.would_deny == ()


def test_audit_never_grants(tmp_path: Path) -> None:
    policy_set = compile_set(
        tmp_path,
        policy("audit-only", 'allow: [{attribute: "*"}]', mode="audit"),
        policy("narrow", "allow: [{attribute: given_name}]", callers="[narrow]"),
        policy("wide-audit", 'allow: [{attribute: "*"}]', mode="audit", callers="[narrow]"),
    )
    only_audit = decide(policy_set, ("given_name", "Ada"))
    assert not only_audit.allowed
    assert reasons(only_audit) == [("", "", "", "NO_APPLICABLE_POLICY")]
    assert only_audit.matched_policies == ("audit-only",)
    assert not decide(policy_set, ("family_name", "X"), caller="narrow").allowed


def test_client_metadata_keys_must_be_allowed(tmp_path: Path) -> None:
    policy_set = compile_set(tmp_path, PROFILE)
    assert decide(policy_set, ("given_name", "Ada"), metadata={"source": "x"}).allowed
    verdict = decide(policy_set, ("given_name", "Ada"), metadata={"source": "x", "debug": "1"})
    assert reasons(verdict) == [("", "", "clientMetadata.allowKeys", "METADATA_KEY_NOT_ALLOWED")]
    assert verdict.violations[0].client_metadata_key == "debug"


def test_client_metadata_findings_come_in_key_order_whatever_order_the_keys_came_in(
    tmp_path: Path,
) -> None:
    """A protobuf map has no order: the same request gets the same answer."""
    policy_set = compile_set(tmp_path, PROFILE)
    keys = ["zeta", "alpha", "mid"]
    for order in (keys, keys[::-1]):
        verdict = decide(policy_set, ("given_name", "Ada"), metadata=dict.fromkeys(order, "x"))
        assert [v.client_metadata_key for v in verdict.violations] == ["alpha", "mid", "zeta"]


def test_patterns_run_in_linear_time(tmp_path: Path) -> None:
    # (x+x+)+y backtracks exponentially in a backtracking engine: 2,000 characters would never
    # finish. RE2 answers at once, so a bad pattern cannot stall the event loop.
    policy_set = compile_set(
        tmp_path, policy("slow", "allow: [{attribute: a, pattern: '(x+x+)+y'}]")
    )
    started = time.perf_counter()
    for _ in range(100):
        verdict = decide(policy_set, ("a", "x" * 2000))
    assert reasons(verdict) == [("a", "slow", "allow[0]", "PATTERN")]
    assert time.perf_counter() - started < 5  # exponential backtracking: ~forever


def test_look_alike_names_do_not_dodge_denies_or_the_verified_rule(tmp_path: Path) -> None:
    policy_set = compile_set(
        tmp_path, policy("open", 'allow: [{attribute: "*"}]\ndeny: [{attribute: "custom:role"}]')
    )
    verdict = decide(
        policy_set, ("custom:Role", "x"), ("CUSTOM:ROLE", "x"), ("Email_Verified", "true")
    )
    assert reasons(verdict) == [
        ("custom:Role", "open", "deny[0]", "ATTRIBUTE_DENIED"),
        ("CUSTOM:ROLE", "open", "deny[0]", "ATTRIBUTE_DENIED"),
        ("Email_Verified", "", "", "VERIFIED_FLAG_NOT_GRANTED"),
    ]


def test_lookup_does_not_scan_unrelated_policies(tmp_path: Path) -> None:
    documents = []
    for i in range(5000):
        documents.append(policy(f"exact-{i}", "allow: [{attribute: x}]", callers=f"[svc-{i}]"))
        documents.append(policy(f"glob-{i}", "allow: [{attribute: x}]", callers=f'["team-{i}-*"]'))
    documents.append(policy("mine", "allow: [{attribute: x}]", callers='["profile-*"]'))
    policy_set = compile_set(tmp_path, *documents)
    assert len(policy_set.policies) == 10_001

    # Every policy here applies to any pool ("*"): only the caller index can rule them out.
    unrelated = policy_set.lookup("spiffe://example.org/ns/prod/sa/billing", POOL)
    assert (unrelated.names, unrelated.examined) == ((), 0)

    mine = policy_set.lookup("profile-api", POOL)
    assert (mine.names, mine.examined) == (("mine",), 1)

    team = policy_set.lookup("team-42-api", POOL)
    assert (team.names, team.examined) == (("glob-42",), 1)
    assert decide(policy_set, ("x", "1"), caller="svc-4999").allowed


def test_glob_index_tries_only_globs_sharing_the_text_prefix() -> None:
    index: GlobIndex[int] = GlobIndex((f"team-{i}-*", i) for i in range(10_000))
    index.add("*-admin", -1)
    assert index.match("billing-api") == ([], 1)  # only the "*-admin" glob has a fitting prefix
    assert index.match("team-42-api") == ([42], 2)
    assert index.match("team-42-admin") == ([-1, 42], 2)  # shorter prefixes first


ALLOWED = ["given_name", "family_name", "custom:a", "custom:b"]
NAMES = [*ALLOWED, "custom:c", "email_verified", "locale"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(NAMES), min_size=1, max_size=7, unique=True))
def test_a_denial_lists_exactly_the_failing_attributes(names: list[str]) -> None:
    documents = [
        policy("a", "allow: [{attribute: given_name}, {attribute: family_name}]"),
        policy("b", 'allow: [{attribute: "custom:a"}, {attribute: "custom:b"}]'),
    ]
    result_set = _cached_set(tuple(documents))
    verdict = decide(result_set, *((n, "v") for n in names))
    failing = [n for n in names if n not in ALLOWED]
    assert verdict.allowed == (not failing)
    assert [v.attribute for v in verdict.violations] == failing


_SETS: dict[tuple[str, ...], PolicySet] = {}


def _cached_set(documents: tuple[str, ...]) -> PolicySet:
    if documents not in _SETS:
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            _SETS[documents] = compile_set(Path(directory), *documents)
    return _SETS[documents]
