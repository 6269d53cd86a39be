"""The published JSON Schemas (schemas/v1/) and `attrgate check` agree.

The shipped examples and a corpus of documents, each one edit away from a valid one, are judged
by the `jsonschema` package against the committed schemas and by `attrgate check`: both accept the
valid ones and both reject each broken one. What a JSON Schema cannot say is listed in EXCLUDED,
each with its reason, and asserted the other way round (the loader rejects, the schema accepts),
so the list stays true. Documents are read as the loader reads them (yamlsource: YAML 1.2 core
typing, decimals exact) before either judges them.

Every YAML file shipped under policies/ names its schema in a modeline, per document, as
yaml-language-server (VS Code's YAML extension) reads it. server/attrgate/local/seed.yaml is not
a policy document (the demo pool's seed: no apiVersion, no kind), so it has neither.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jsonschema import Draft202012Validator
from jsonschema.protocols import Validator

from attrgate.cli import main
from attrgate.policy.load import ALL_KINDS, load_policy_set
from attrgate.policy.patterns import MAX_PATTERN_PROGRAM, MAX_SET_PROGRAM
from attrgate.policy.yamlsource import read_documents

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "schemas" / "v1"
POLICIES = REPO / "policies"


def _integer(checker: object, instance: object) -> bool:
    # The JSON data model: 64.0 is the integer 64 (draft 2020-12, and every YAML editor, which
    # reads `64.0` as the number 64). yamlsource keeps it a Decimal; jsonschema would call that no
    # integer at all.
    if isinstance(instance, bool):
        return False
    return isinstance(instance, int) or (
        isinstance(instance, Decimal)
        and instance.is_finite()
        and instance == instance.to_integral_value()
    )


_JsonValidator = jsonschema.validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _integer),
)


def _validator(name: str) -> Validator:
    schema = json.loads((SCHEMAS / name).read_text())
    Draft202012Validator.check_schema(schema)  # a valid 2020-12 schema itself
    validator: Validator = _JsonValidator(schema)
    return validator


ANY_DOCUMENT = _validator("attrgate.json")
BY_KIND = {kind: _validator(f"{kind.lower()}.json") for kind in ALL_KINDS}


def schema_errors(text: str) -> list[str]:
    """Why the schema for any document rejects `text` (each document of it), or nothing."""
    found = []
    for document in read_documents(text):
        errors = list(ANY_DOCUMENT.iter_errors(document.value))
        # The kind's own schema says the same as the one for any document.
        kind = document.value.get("kind") if isinstance(document.value, dict) else None
        if isinstance(kind, str) and kind in BY_KIND:
            assert BY_KIND[kind].is_valid(document.value) == (not errors), text
        for error in errors:
            best = jsonschema.exceptions.best_match([error])
            where = ".".join(str(p) for p in best.absolute_path)
            found.append(f"{where}: {best.message}"[:300])
    return found


# A policy beside every case, so that a file holding only a PolicyTest is still a policy set.
BESIDE = """\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {name: agreement-beside}
spec: {callers: [beside], userPools: ["*"]}
"""


def check_errors(text: str, folder: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What `attrgate check` says against `text` (written as case.yaml beside BESIDE)."""
    folder.mkdir()
    (folder / "beside.yaml").write_text(BESIDE)
    (folder / "case.yaml").write_text(text)
    code = main(["check", str(folder)])
    captured = capsys.readouterr()
    assert code in (0, 1), captured
    return captured.err.splitlines() if code else []


# --- The corpus --------------------------------------------------------------------------------

POLICY = """\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata:
  name: agreement-policy
  description: Every key the kind has.
  labels: {team: platform}
spec:
  mode: enforce
  callers: ["spiffe://example.org/ns/prod/sa/profile-api", "profile-*"]
  userPools: ["us-east-1_*"]
  allow:
    - attribute: given_name
      maxLength: 64
      minLength: 1
    - attribute: "custom:tier"
      enum: [free, pro]
    - attribute: email
      format: email
    - attribute: "custom:handle"
      pattern: '^[A-Za-z0-9_]{3,20}$'
      allowEmpty: true
  deny:
    - attribute: "custom:role"
  clientMetadata:
    allowKeys: [source]
"""

GUARD = """\
apiVersion: attrgate/v1
kind: SmsGuard
metadata: {name: agreement-guard}
spec:
  mode: audit
  userPools: ["*"]
  countries:
    deny: [KP, "001"]
  limits:
    - {per: phone_number, max: 3, window: 24h}
  budget:
    currency: USD
    amount: 50.00
    window: 30d
    pricePerMessage: {US: 0.00883, default: 0.10}
"""

SUITE = """\
apiVersion: attrgate/v1
kind: PolicyTest
metadata: {name: agreement-suite}
spec:
  pools:
    us-east-1_Example1: {file: fixtures/example-pool.json}
  cases:
    - name: profile api may set its fields
      caller: profile-api
      userPool: us-east-1_Example1
      attributes: {given_name: Ada}
      clientMetadata: {source: web}
      expect: allow
      wouldDeny: [{attribute: family_name, policy: freeze}]
      sms: {triggersSms: false}
    - name: role is never writable
      caller: profile-api
      userPool: us-east-1_Example1
      attributes: {"custom:role": admin}
      expect: deny
      deniedBy: policy
      violations: [{attribute: "custom:role", reason: ATTRIBUTE_DENIED}]
    - name: verified flags for other callers
      matrix:
        caller: [svc-a, svc-b]
        attributes: [{email_verified: "true"}, {phone_number_verified: "true"}]
      userPool: us-east-1_Example1
      expect: deny
    - name: an empty email is malformed
      skip: not yet
      caller: profile-api
      userPool: us-east-1_Example1
      attributes: {email: ""}
      expect: invalid
      invalid: [{field: email}]
"""

DROP = object()


@dataclass(frozen=True)
class Case:
    name: str
    text: str


def case(name: str, base: str, edits: dict[str, object]) -> Case:
    """`base` with each dotted path set to its value (dropped for DROP), written back as flow
    YAML (JSON syntax with exact decimals), which the loader reads like any other YAML."""
    document = next(read_documents(base)).value
    for path, value in edits.items():
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node = document
        for part in parents:
            node = node[part]
        if value is DROP:
            del node[last]
        else:
            node[last] = value
    return Case(name, _flow(document) + "\n")


def _flow(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_flow(k)}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | Decimal):
        return str(value)
    assert isinstance(value, str)
    return json.dumps(value, ensure_ascii=False)


VALID = [
    Case("policy: every key", POLICY),
    case(
        "policy: only the required keys",
        POLICY,
        {"metadata": {"name": "p"}, "spec": {"callers": ["a"], "userPools": ["b"]}},
    ),
    Case(
        "policy: YAML 1.1 booleans stay strings", POLICY.replace("[free, pro]", "[yes, no, on, NO]")
    ),
    case("policy: a name of 128 characters", POLICY, {"metadata.name": "p" * 128}),
    case(
        "policy: null where a key is optional",
        POLICY,
        {"metadata.description": None, "spec.allow.0.maxLength": None},
    ),
    Case("policy and guard in one file", POLICY + "---\n" + GUARD),
    Case("guard: every key", GUARD),
    case(
        "guard: allow list, a null deny",
        GUARD,
        {"spec.countries": {"allow": ["US", "NO", "001"], "deny": None}},
    ),
    case("guard: an empty deny list", GUARD, {"spec.countries.deny": []}),
    case("guard: a null allow, a deny list", GUARD, {"spec.countries.allow": None}),
    case(
        "guard: a calendar month, whole amounts",
        GUARD,
        {
            "spec.budget.window": "month",
            "spec.budget.amount": 50,
            "spec.budget.pricePerMessage.default": 1,
        },
    ),
    case(
        "guard: six decimal places", GUARD, {"spec.budget.pricePerMessage.GB": Decimal("0.041501")}
    ),
    case("guard: the largest amount", GUARD, {"spec.budget.amount": 10**12}),
    case("guard: only userPools", GUARD, {"spec": {"userPools": ["*"]}}),
    case(
        "guard: the longest durations",
        GUARD,
        {"spec.limits.0.window": "999999d", "spec.budget.window": "1s"},
    ),
    Case("suite: every key", SUITE),
    case("suite: a null caller, the matrix lists callers", SUITE, {"spec.cases.2.caller": None}),
    case(
        "suite: client metadata only in the matrix",
        SUITE,
        {"spec.cases.2.matrix.clientMetadata": [{"source": "web"}]},
    ),
    case(
        "suite: an empty clientMetadata beside the matrix's",
        SUITE,
        {"spec.cases.2.clientMetadata": {}, "spec.cases.2.matrix.clientMetadata": [{"a": "b"}]},
    ),
    case("suite: null violations on an allow case", SUITE, {"spec.cases.0.violations": None}),
    case(
        "suite: every key listed in the matrix",
        SUITE,
        {
            "spec.cases.2.userPool": DROP,
            "spec.cases.2.matrix.userPool": ["us-east-1_Example1", "us-east-1_Example2"],
            "spec.cases.2.matrix.clientMetadata": [{}, {"source": "web"}],
        },
    ),
    case("suite: a skipped suite", SUITE, {"spec.skip": "the pool fixture is being rewritten"}),
    case(
        "suite: triggersSms and country on the case itself",
        SUITE,
        {"spec.cases.0.sms": DROP, "spec.cases.0.triggersSms": False, "spec.cases.0.country": "US"},
    ),
]


BROKEN = [
    # AttributePolicy: unknown keys at each level
    case("policy: unknown top-level key", POLICY, {"status": "active"}),
    case("policy: unknown key in metadata", POLICY, {"metadata.owner": "platform"}),
    case("policy: unknown key in spec", POLICY, {"spec.callerz": ["a"]}),
    case("policy: misspelt key in an allow entry", POLICY, {"spec.allow.0.maxLenght": 64}),
    case("policy: unknown key in a deny entry", POLICY, {"spec.deny.0.reason": "no"}),
    case("policy: unknown key in clientMetadata", POLICY, {"spec.clientMetadata.denyKeys": ["x"]}),
    # AttributePolicy: the document
    case("policy: no apiVersion", POLICY, {"apiVersion": DROP}),
    case("policy: another apiVersion", POLICY, {"apiVersion": "attrgate/v2"}),
    case("policy: no kind", POLICY, {"kind": DROP}),
    case("policy: unknown kind", POLICY, {"kind": "AttributePolicies"}),
    case("policy: kind in lower case", POLICY, {"kind": "attributepolicy"}),
    case("policy: no metadata", POLICY, {"metadata": DROP}),
    case("policy: no name", POLICY, {"metadata.name": DROP}),
    case("policy: a name with a space", POLICY, {"metadata.name": "profile service"}),
    case("policy: a name starting with a dash", POLICY, {"metadata.name": "-profile"}),
    case("policy: a name of 129 characters", POLICY, {"metadata.name": "p" * 129}),
    case("policy: a numeric description", POLICY, {"metadata.description": 3}),
    case("policy: a numeric label", POLICY, {"metadata.labels.tier": 1}),
    case("policy: no spec", POLICY, {"spec": DROP}),
    Case("policy: a list, not a mapping", "- apiVersion: attrgate/v1\n- kind: AttributePolicy\n"),
    Case("policy: a string, not a mapping", "attrgate/v1 AttributePolicy\n"),
    # AttributePolicy: callers and pools
    case("policy: no callers", POLICY, {"spec.callers": DROP}),
    case("policy: empty callers", POLICY, {"spec.callers": []}),
    case("policy: callers as a string", POLICY, {"spec.callers": "profile-*"}),
    case("policy: an empty caller glob", POLICY, {"spec.callers.0": ""}),
    case("policy: a caller glob of 513 characters", POLICY, {"spec.callers.0": "c" * 513}),
    case("policy: no userPools", POLICY, {"spec.userPools": DROP}),
    case("policy: empty userPools", POLICY, {"spec.userPools": []}),
    case("policy: unknown mode", POLICY, {"spec.mode": "dry-run"}),
    # AttributePolicy: entries
    case("policy: allow as a mapping", POLICY, {"spec.allow": {"attribute": "x"}}),
    case("policy: an allow entry without attribute", POLICY, {"spec.allow.0.attribute": DROP}),
    case("policy: an attribute of 65 characters", POLICY, {"spec.allow.0.attribute": "a" * 65}),
    case("policy: an empty deny attribute", POLICY, {"spec.deny.0.attribute": ""}),
    case("policy: maxLength as a string", POLICY, {"spec.allow.0.maxLength": "64"}),
    case("policy: maxLength past 2048", POLICY, {"spec.allow.0.maxLength": 4096}),
    case("policy: maxLength true", POLICY, {"spec.allow.0.maxLength": True}),
    case("policy: negative minLength", POLICY, {"spec.allow.0.minLength": -1}),
    case("policy: an empty enum", POLICY, {"spec.allow.1.enum": []}),
    case("policy: numbers in an enum", POLICY, {"spec.allow.1.enum": [1, 2]}),
    case("policy: unknown format", POLICY, {"spec.allow.2.format": "phone"}),
    case("policy: a numeric pattern", POLICY, {"spec.allow.3.pattern": 12}),
    case("policy: allowEmpty as a string", POLICY, {"spec.allow.3.allowEmpty": "yes"}),
    case("policy: an empty allowKeys item", POLICY, {"spec.clientMetadata.allowKeys.0": ""}),
    # SmsGuard
    case("guard: unknown key in a limit", GUARD, {"spec.limits.0.burst": 2}),
    case("guard: unknown key in the budget", GUARD, {"spec.budget.cap": 3}),
    case("guard: no userPools", GUARD, {"spec.userPools": DROP}),
    case("guard: an unknown country", GUARD, {"spec.countries.deny.0": "XX"}),
    case("guard: a country in lower case", GUARD, {"spec.countries.deny.0": "us"}),
    Case("guard: a YAML 1.1 boolean word as a country", GUARD.replace('[KP, "001"]', "[KP, on]")),
    case("guard: a three-letter country", GUARD, {"spec.countries.deny.0": "USA"}),
    case("guard: both allow and deny", GUARD, {"spec.countries.allow": ["US"]}),
    case("guard: neither allow nor deny", GUARD, {"spec.countries": {}}),
    case(
        "guard: allow and deny both null", GUARD, {"spec.countries": {"allow": None, "deny": None}}
    ),
    case("guard: a duration in words", GUARD, {"spec.limits.0.window": "24 hours"}),
    case("guard: a zero duration", GUARD, {"spec.limits.0.window": "0h"}),
    case("guard: a duration in weeks", GUARD, {"spec.limits.0.window": "2w"}),
    case("guard: a duration of seven digits", GUARD, {"spec.limits.0.window": "1000000s"}),
    case("guard: a duration in upper case", GUARD, {"spec.limits.0.window": "24H"}),
    case("guard: a limit without window", GUARD, {"spec.limits.0.window": DROP}),
    case("guard: a limit of 0", GUARD, {"spec.limits.0.max": 0}),
    case("guard: a limit past 10,000,000", GUARD, {"spec.limits.0.max": 10_000_001}),
    case("guard: a fractional limit", GUARD, {"spec.limits.0.max": Decimal("2.5")}),
    case("guard: unknown per", GUARD, {"spec.limits.0.per": "device"}),
    case("guard: a negative amount", GUARD, {"spec.budget.amount": Decimal("-1")}),
    case("guard: an amount past 10^12", GUARD, {"spec.budget.amount": Decimal("1E+13")}),
    case("guard: an amount as a string", GUARD, {"spec.budget.amount": "50.00"}),
    case("guard: an amount true", GUARD, {"spec.budget.amount": True}),
    case("guard: a currency in lower case", GUARD, {"spec.budget.currency": "usd"}),
    case("guard: a budget window of a year", GUARD, {"spec.budget.window": "year"}),
    case("guard: no default price", GUARD, {"spec.budget.pricePerMessage.default": DROP}),
    case(
        "guard: a price for an unknown country",
        GUARD,
        {"spec.budget.pricePerMessage.XX": Decimal("0.1")},
    ),
    case("guard: a negative price", GUARD, {"spec.budget.pricePerMessage.US": Decimal("-0.01")}),
    # PolicyTest
    case("suite: unknown key in a case", SUITE, {"spec.cases.0.expected": "allow"}),
    case(
        "suite: unknown key in an expected finding", SUITE, {"spec.cases.1.violations.0.rule": "x"}
    ),
    case(
        "suite: unknown key in a pool fixture", SUITE, {"spec.pools.us-east-1_Example1.path": "p"}
    ),
    case("suite: a pool fixture without file", SUITE, {"spec.pools.us-east-1_Example1.file": DROP}),
    case("suite: no cases", SUITE, {"spec.cases": []}),
    case("suite: a case without expect", SUITE, {"spec.cases.0.expect": DROP}),
    case("suite: an unknown expectation", SUITE, {"spec.cases.0.expect": "allowed"}),
    case("suite: an empty case name", SUITE, {"spec.cases.0.name": ""}),
    case("suite: a case without caller or matrix", SUITE, {"spec.cases.0.caller": DROP}),
    case("suite: a null caller and no matrix", SUITE, {"spec.cases.0.caller": None}),
    case("suite: caller in the case and in its matrix", SUITE, {"spec.cases.2.caller": "svc-c"}),
    case("suite: an empty matrix list", SUITE, {"spec.cases.2.matrix.caller": []}),
    case(
        "suite: an empty matrix",
        SUITE,
        {
            "spec.cases.2.matrix": {},
            "spec.cases.2.caller": "a",
            "spec.cases.2.attributes": {"a": "b"},
        },
    ),
    case(
        "suite: clientMetadata in the case and in its matrix",
        SUITE,
        {
            "spec.cases.2.clientMetadata": {"a": "b"},
            "spec.cases.2.matrix.clientMetadata": [{"a": "c"}],
        },
    ),
    case(
        "suite: violations on a case that expects allow",
        SUITE,
        {"spec.cases.0.violations": [{"attribute": "x"}]},
    ),
    case(
        "suite: deniedBy on a case that expects allow", SUITE, {"spec.cases.0.deniedBy": "policy"}
    ),
    case(
        "suite: invalid on a case that expects deny",
        SUITE,
        {"spec.cases.1.invalid": [{"field": "x"}]},
    ),
    case("suite: an unknown deniedBy", SUITE, {"spec.cases.1.deniedBy": "engine"}),
    case("suite: a boolean attribute value", SUITE, {"spec.cases.0.attributes.given_name": True}),
    case("suite: triggersSms as a string", SUITE, {"spec.cases.0.sms.triggersSms": "no"}),
    case("suite: triggersSms in the case and in sms", SUITE, {"spec.cases.0.triggersSms": False}),
    case("suite: a country in the case and sms", SUITE, {"spec.cases.0.country": "US"}),
    case("suite: a country that is no code", SUITE, {"spec.cases.0.country": "usa"}),
    case("suite: another apiVersion", SUITE, {"apiVersion": "attrgate/v1beta1"}),
]


@dataclass(frozen=True)
class Excluded:
    case: Case
    loader_says: str  # part of the loader's error: it rejects for the reason given


def _many_patterns() -> Case:
    # Distinct patterns (a set compiles each once) that pass one by one and not together.
    size = 76_611  # \p{L}{1,64}: RE2 instructions
    count = MAX_SET_PROGRAM // size + 1
    assert size < MAX_PATTERN_PROGRAM
    allow = [{"attribute": f"custom:a{i}", "pattern": rf"\p{{L}}{{1,64}}{i}"} for i in range(count)]
    return case("a set of patterns too large together", POLICY, {"spec.allow": allow})


# What a JSON Schema cannot say (or what the jsonschema package reads otherwise than JSON Schema
# says): each judged the other way round, the loader rejects and the schema accepts.
EXCLUDED = [
    # Uniqueness across documents: a schema sees one document at a time, never the set.
    Excluded(Case("duplicate policy names", POLICY + "---\n" + POLICY), "duplicate policy name"),
    Excluded(Case("duplicate test names", SUITE + "---\n" + SUITE), "duplicate test name"),
    # Patterns are RE2; a JSON Schema's `format: regex` means ECMA-262, and no validator runs RE2.
    Excluded(
        case("a lookahead, not RE2", POLICY, {"spec.allow.3.pattern": "^(?=a)[a-z]+$"}),
        "invalid regular expression (RE2 syntax)",
    ),
    Excluded(
        case("a backreference, not RE2", POLICY, {"spec.allow.3.pattern": r"^(a)\1$"}),
        "invalid regular expression (RE2 syntax)",
    ),
    # Compiled program sizes: known only by compiling with RE2.
    Excluded(
        case("a pattern too large", POLICY, {"spec.allow.3.pattern": r"\p{L}{1,100}"}),
        "pattern too large",
    ),
    Excluded(_many_patterns(), "patterns compile to"),
    # Money is exact to 6 decimal places. `multipleOf: 0.000001` would say it, but validators
    # compute it in binary floating point: 0.00883 would fail in editors, and jsonschema cannot
    # divide a decimal by a float at all.
    Excluded(
        case("an amount with 7 decimals", GUARD, {"spec.budget.amount": Decimal("0.1234567")}),
        "more than 6 decimal places",
    ),
    Excluded(
        case(
            "a price with 8 decimals",
            GUARD,
            {"spec.budget.pricePerMessage.US": Decimal("0.00883001")},
        ),
        "more than 6 decimal places",
    ),
    # JSON has one number type: 64.0 is the integer 64 to a JSON Schema (and to an editor, which
    # reads the YAML as JSON numbers); the loader wants an integer written as one.
    Excluded(
        case("maxLength written 64.0", POLICY, {"spec.allow.0.maxLength": Decimal("64.0")}),
        "expected an integer",
    ),
    # The jsonschema package runs patterns with Python's `re`, where `$` also matches before a
    # final newline; JSON Schema's ECMA-262 (editors) and the loader do not.
    Excluded(
        case("a name ending in a newline", POLICY, {"metadata.name": "agreement-policy\n"}),
        "metadata.name: String should match pattern",
    ),
    Excluded(
        case("a duration ending in a newline", GUARD, {"spec.limits.0.window": "24h\n"}),
        "is not a duration",
    ),
]


def test_the_corpus_is_what_it_says() -> None:
    names = [c.name for c in (*VALID, *BROKEN, *(e.case for e in EXCLUDED))]
    assert len(names) == len(set(names))
    assert len(BROKEN) >= 40


def _shipped() -> Iterator[Path]:
    """Every YAML file under policies/ but test fixtures (`testdata/` folders)."""
    for path in sorted(POLICIES.rglob("*")):
        if path.suffix in (".yaml", ".yml") and "testdata" not in path.relative_to(POLICIES).parts:
            yield path


def _by_name(cases: list[Case]) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[c.name for c in cases])


@pytest.mark.parametrize("path", list(_shipped()), ids=lambda p: str(p.relative_to(REPO)))
def test_both_accept_the_shipped_examples(
    path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = path.read_text()
    assert schema_errors(text) == []
    assert check_errors(text, tmp_path / "set", capsys) == []


@_by_name(VALID)
def test_both_accept(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schema_errors(case.text) == []
    assert check_errors(case.text, tmp_path / "set", capsys) == []


@_by_name(BROKEN)
def test_both_reject(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checked = check_errors(case.text, tmp_path / "set", capsys)
    assert schema_errors(case.text), f"the schema accepts it; attrgate check says {checked}"
    assert checked, f"attrgate check accepts it; the schema says {schema_errors(case.text)}"


@pytest.mark.parametrize("excluded", EXCLUDED, ids=[e.case.name for e in EXCLUDED])
def test_what_only_the_loader_rejects(
    excluded: Excluded, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert schema_errors(excluded.case.text) == []
    checked = check_errors(excluded.case.text, tmp_path / "set", capsys)
    assert any(excluded.loader_says in line for line in checked), checked


# --- Modelines ---------------------------------------------------------------------------------

MODELINE = re.compile(r"# yaml-language-server: \$schema=(\S+)")


def _document_heads(lines: list[str]) -> Iterator[int]:
    """The first line of each document: the file's, and the one after each `---`."""
    yield 0
    for number, line in enumerate(lines):
        if line.startswith("---"):
            yield number + 1


def test_every_shipped_document_names_its_schema() -> None:
    """yaml-language-server reads a modeline from each document's leading comments: the file's
    first line, and the first line after every `---`. A *_test.yaml file holds PolicyTests only,
    so it names that kind's schema; every other file, the schema for any document."""
    shipped = list(_shipped())
    assert {p.name for p in shipped} >= {"profile-service.yaml", "sms-guard.yaml"}
    for path in shipped:
        text = path.read_text()
        lines = text.splitlines()
        is_test = path.name.endswith(("_test.yaml", "_test.yml"))
        expected = SCHEMAS / ("policytest.json" if is_test else "attrgate.json")
        for head in _document_heads(lines):
            found = MODELINE.fullmatch(lines[head]) if head < len(lines) else None
            assert found, f"{path}:{head + 1}: start the document with a modeline"
            assert (path.parent / found[1]).resolve() == expected, f"{path}:{head + 1}"
        # and the schema it names accepts every document of the file
        named = _validator(expected.name)
        for document in read_documents(text):
            assert named.is_valid(document.value), f"{path}:{document.line}"


def test_modelines_leave_the_set_and_its_revision_as_they_were(tmp_path: Path) -> None:
    loaded = load_policy_set(POLICIES)
    assert loaded.ok, loaded.errors
    assert load_policy_set(POLICIES).revision == loaded.revision
    # Without their modelines the same policies load the same (only the bytes, so the revision,
    # differ).
    for path in _shipped():
        target = tmp_path / path.relative_to(POLICIES)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            "".join(line for line in path.read_text().splitlines(True) if not MODELINE.match(line))
        )
    bare = load_policy_set(tmp_path)
    assert bare.ok, bare.errors
    assert [p.document for p in bare.policies] == [p.document for p in loaded.policies]
