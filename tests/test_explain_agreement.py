"""`attrgate explain` answers what the server answers: random policy sets (hypothesis), one real
attrgate server each on loopback, and hundreds of random requests sent to its
CheckUpdateUserAttributes and explained offline. The final decisions must be equal: outcome,
deniedBy, every violation and would-deny finding, the SMS assessment, invalid fields, revision.

Two ways a pool is known: not at all (explain without --pool-file; the server's DescribeUserPool
fails and it fails open), and from moto (the server describes the pool itself; explain reads the
same DescribeUserPool answer from a file).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from attrgate.config import Settings
from attrgate.domain import Attribute, PoolDescription, UpdateRequest
from attrgate.explain.collect import LoadedSet, explain, load
from attrgate.explain.render_json import to_json
from attrgate.offline import read_pool_fixture
from attrgate.v1 import attrgate_pb2 as pb
from support.attrgate_server import RunningServer, settings_for
from support.moto_cognito import MotoCognito, free_port
from support.rpc import as_caller, rich

CALLERS = ("svc-a", "svc-b", "profile-api", "spiffe://example.org/ns/prod/sa/profile-api")
CALLER_GLOBS = ("svc-a", "svc-*", "*", "profile-*", "spiffe://example.org/*", "*-b", "nobody")
NAMES = (
    *("given_name", "family_name", "email", "email_verified", "Email_Verified", "phone_number"),
    *("phone_number_verified", "custom:tier", "custom:role", "custom:Role", "custom:level"),
    *("custom:frozen", "nickname"),
)
FLAGS = ("email_verified", "phone_number_verified")
# phone_number more often than the rest: the SMS guard's stage is reached only past all others.
ALLOW_NAMES = (*NAMES, "phone_number", "phone_number", "custom:*", "*", "*_verified", "email*")
DENY_NAMES = ("custom:role", "CUSTOM:ROLE", "custom:*", "*name", "email_verified", "nickname")
PHONES = ("+14155550100", "+15145550100", "+33612345678", "+61412345678", "+80012345678")
VALUES = (
    *("", "Ada", "Bartholomew", "free", "pro", "true", "false", "ada@example.com"),
    *("not an email", "12", "-3", "1e3", "https://example.org/a", "x" * 13, "+1415"),
    *PHONES,
)
ENUMS = (("free", "pro"), ("true",), ("Ada", "12"), ("false", "true"))
PATTERNS = ("^[A-Za-z]{2,5}$", "[0-9-]+", ".*@example\\.com", "f.*")
FORMATS = ("email", "e164", "boolean", "integer", "url")
# Values an entry with this format or pattern accepts (or one without: LIKELY), to aim requests
# at what a policy allows.
FITTING: dict[str, Sequence[str]] = {
    "email": ("ada@example.com",),
    "e164": PHONES,
    "boolean": ("true", "false"),
    "integer": ("12", "-3"),
    "url": ("https://example.org/a",),
    PATTERNS[0]: ("Ada",),
    PATTERNS[1]: ("12",),
    PATTERNS[2]: ("ada@example.com",),
    PATTERNS[3]: ("free",),
}
LIKELY = ("Ada", "true", "12", "ada@example.com", "https://example.org/a")
COUNTRIES = ("US", "CA", "FR", "AU", "001")
KEYS = ("source", "ticket", "debug")

SETTINGS = settings(
    deadline=None,
    database=None,
    # A mismatch is reported with its policy set and request; shrinking would start a server
    # per attempt.
    phases=(Phase.explicit, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _drop_none(**items: Any) -> dict[str, Any]:
    return {k: v for k, v in items.items() if v is not None and v != []}


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly nothing: an entry with few constraints allows something now and then."""
    return st.one_of(st.none(), st.none(), st.none(), strategy)


allow_entries = st.builds(
    lambda attribute, high, low, enum, fmt, pattern, empty: _drop_none(
        attribute=attribute,
        maxLength=high,
        minLength=low,
        enum=list(enum) if enum else None,
        format=fmt,
        pattern=pattern,
        allowEmpty=empty or None,
    ),
    st.sampled_from(ALLOW_NAMES),
    _maybe(st.integers(0, 20)),
    _maybe(st.integers(0, 4)),
    _maybe(st.sampled_from(ENUMS)),
    _maybe(st.sampled_from(FORMATS)),
    _maybe(st.sampled_from(PATTERNS)),
    st.booleans(),
)


def attribute_policies(pool_globs: Sequence[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(
        lambda mode, callers, pools, allow, deny, keys: {
            "mode": mode,
            "callers": callers,
            "userPools": pools,
            "allow": allow,
            "deny": [{"attribute": name} for name in deny],
            "clientMetadata": {"allowKeys": keys},
        },
        st.sampled_from(("enforce", "enforce", "enforce", "audit")),
        st.lists(st.sampled_from(CALLER_GLOBS), min_size=1, max_size=2),
        st.lists(st.sampled_from(pool_globs), min_size=1, max_size=2),
        st.lists(allow_entries, max_size=4),
        st.lists(st.sampled_from(DENY_NAMES), max_size=1),
        st.lists(st.sampled_from(KEYS), max_size=2, unique=True),
    )


# SmsGuards: country rules, and limits and budgets that a store with nothing counted never
# refuses (explain does not count; per-user limits would need AdminGetUser).
sms_guards = st.builds(
    lambda mode, pools, rule, countries, limited: _drop_none(
        mode=mode,
        userPools=pools,
        countries={rule: countries} if rule else None,
        limits=[{"per": "phone_number", "max": 3, "window": "24h"}] if limited else None,
        budget={
            "currency": "USD",
            "amount": 5,
            "window": "month",
            "pricePerMessage": {"default": 0.1},
        }
        if limited
        else None,
    ),
    st.sampled_from(("enforce", "audit")),
    st.lists(st.sampled_from(("*", "us-east-1_*", "eu-*")), min_size=1, max_size=2),
    st.sampled_from(("allow", "deny", None)),
    st.lists(st.sampled_from(COUNTRIES), min_size=1, max_size=3, unique=True),
    st.booleans(),
)


@dataclass(frozen=True)
class PolicySetSpec:
    policies: list[dict[str, Any]]
    guards: list[dict[str, Any]]

    def yaml(self) -> str:
        """JSON documents: JSON is YAML 1.2."""
        documents = [
            {
                "apiVersion": "attrgate/v1",
                "kind": kind,
                "metadata": {"name": f"{prefix}{index}"},
                "spec": spec,
            }
            for kind, prefix, specs in (
                ("AttributePolicy", "policy-", self.policies),
                ("SmsGuard", "guard-", self.guards),
            )
            for index, spec in enumerate(specs)
        ]
        return "---\n".join(json.dumps(d) + "\n" for d in documents)


def policy_sets(pool_globs: Sequence[str]) -> st.SearchStrategy[PolicySetSpec]:
    return st.builds(
        PolicySetSpec,
        st.lists(attribute_policies(pool_globs), min_size=1, max_size=4),
        st.lists(sms_guards, max_size=2),
    )


@dataclass(frozen=True)
class Request:
    caller: str
    pool: str
    attributes: list[tuple[str, str]]
    metadata: dict[str, str] = field(default_factory=dict)

    def proto(self) -> pb.UpdateUserAttributesRequest:
        return pb.UpdateUserAttributesRequest(
            user_pool_id=self.pool,
            username="ada",
            user_attributes=[pb.AttributeType(name=n, value=v) for n, v in self.attributes],
            client_metadata=self.metadata,
        )

    def domain(self) -> UpdateRequest:
        return UpdateRequest(
            self.pool,
            "ada",
            tuple(Attribute(n, v) for n, v in self.attributes),
            dict(self.metadata),
        )


values = st.one_of(
    st.sampled_from(VALUES),
    st.sampled_from(VALUES),
    st.text(st.characters(exclude_categories=("Cs",)), max_size=4),
)


def _likely_allowed(spec: PolicySetSpec) -> list[tuple[str, str]]:
    """Attributes some allow entry of `spec` matches, with values it may accept: so that
    requests get past the policy to the later stages often enough."""
    found = []
    for policy in spec.policies:
        if policy["mode"] != "enforce":
            continue
        for entry in policy["allow"]:
            glob = entry["attribute"]
            # Only an entry naming a verified flag exactly grants it.
            matching = (n for n in NAMES if fnmatchcase(n, glob) and (n == glob or n not in FLAGS))
            for name in matching:
                fitting = (
                    PHONES  # anything else is an invalid request
                    if name == "phone_number"
                    else entry.get("enum")
                    or FITTING.get(entry.get("format") or entry.get("pattern") or "")
                    or LIKELY
                )
                found += [(name, value) for value in fitting]
    return found


def _applicable_pairs(spec: PolicySetSpec, pools: Sequence[str]) -> list[tuple[str, str]]:
    """(caller, pool) pairs some enforce policy of `spec` applies to (fnmatch reads `*` as the
    policies do; the globs here have no other special character)."""
    return [
        (caller, pool)
        for caller in CALLERS
        for pool in pools
        if any(
            policy["mode"] == "enforce"
            and any(fnmatchcase(caller, glob) for glob in policy["callers"])
            and any(fnmatchcase(pool, glob) for glob in policy["userPools"])
            for policy in spec.policies
        )
    ]


def requests(spec: PolicySetSpec, pools: Sequence[str]) -> st.SearchStrategy[Request]:
    """Anything (names the policies may not know, odd values, "sub", a pool id or a phone
    number that fails validation, duplicate names, metadata keys), or, as often, a request aimed
    at what an enforce policy allows: a (caller, pool) it applies to, attributes it names."""
    metadata = st.dictionaries(st.sampled_from(KEYS), st.just("x"), max_size=2)
    anything = st.builds(
        Request,
        st.sampled_from(CALLERS),
        st.sampled_from((*pools, *pools, *pools, "bad pool")),
        st.lists(st.tuples(st.sampled_from((*NAMES, "sub")), values), min_size=1, max_size=3),
        st.one_of(st.just({}), metadata),
    )
    likely, applicable = _likely_allowed(spec), _applicable_pairs(spec, pools)
    if not likely or not applicable:
        return anything
    phones = [pair for pair in likely if pair[0] == "phone_number"]
    aimed = st.builds(
        lambda at, attributes, metadata: Request(at[0], at[1], attributes, metadata),
        st.sampled_from(applicable),
        # Phone numbers as often as the rest: the SMS guard's stage comes after all others.
        st.one_of(
            st.lists(st.sampled_from(likely), min_size=1, max_size=2, unique_by=lambda a: a[0]),
            st.lists(st.sampled_from(phones or likely), min_size=1, max_size=1),
        ),
        st.one_of(st.just({}), st.just({}), st.just({}), metadata),
    )
    return st.one_of(anything, aimed)


# --- the two answers, in one comparable shape ---------------------------------------------


def _violations(items: Any) -> list[tuple[str, str, str, str, str, str]]:
    return [
        (v["attribute"], v["policy"], v["entry"], v["reason"], v["message"], v["clientMetadataKey"])
        for v in items
    ]


def _refusals(items: Any) -> list[tuple[str, str, str]]:
    return [(r["guard"], r["rule"], r["description"]) for r in items]


def explained(answer: dict[str, Any]) -> dict[str, Any]:
    if answer["outcome"] == "invalid":
        invalid = [(f["field"], f["reason"], f["description"]) for f in answer["invalid"]]
        return {"outcome": "invalid", "revision": answer["policyRevision"], "invalid": invalid}
    sms = answer["sms"]
    return {
        "outcome": answer["outcome"],
        "revision": answer["policyRevision"],
        "deniedBy": answer["deniedBy"] or "",
        "violations": _violations(answer["violations"]),
        "wouldDeny": _violations(answer["wouldDeny"]),
        "sms": None
        if sms is None
        else (
            sms["triggersSms"],
            sms["country"],
            _refusals(sms["refusals"]),
            _refusals(sms["wouldRefuse"]),
        ),
    }


def _proto_violations(items: Any) -> list[tuple[str, str, str, str, str, str]]:
    return [
        (v.attribute, v.policy, v.entry, v.reason, v.message, v.client_metadata_key) for v in items
    ]


def _proto_refusals(items: Any) -> list[tuple[str, str, str]]:
    return [(r.guard, r.rule, r.description) for r in items]


def served(stub: Any, batch: Sequence[Request]) -> list[dict[str, Any]]:
    """The server's answers to `batch`, all sent at once."""
    calls = [
        stub.CheckUpdateUserAttributes.future(
            request.proto(), metadata=as_caller(request.caller), timeout=60
        )
        for request in batch
    ]
    return [_answer(call) for call in calls]


def _answer(call: Any) -> dict[str, Any]:
    try:
        decision = call.result()
    except grpc.RpcError as error:
        failed = error
    else:
        sms = decision.sms if decision.HasField("sms") else None
        return {
            "outcome": "allowed" if decision.allowed else "denied",
            "revision": decision.policy_revision,
            "deniedBy": decision.denied_by,
            "violations": _proto_violations(decision.violations),
            "wouldDeny": _proto_violations(decision.would_deny),
            "sms": None
            if sms is None
            else (
                sms.triggers_sms,
                sms.country,
                _proto_refusals(sms.refusals),
                _proto_refusals(sms.would_refuse),
            ),
        }
    # Only a malformed request is an error status for CheckUpdateUserAttributes here.
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT, (failed.code(), failed.details())
    found = rich(failed)
    return {
        "outcome": "invalid",
        "revision": found.info.metadata["policy_revision"],
        "invalid": [(f.field, f.reason, f.description) for f in found.field_violations],
    }


@dataclass
class Tally:
    sets: int = 0
    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    denied_by: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    sms_assessed: int = 0  # answers with an SMS assessment (the SMS stage was reached)

    def add(self, answer: dict[str, Any]) -> None:
        self.requests += 1
        outcome = answer["outcome"]
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        stage = answer.get("deniedBy") or ""
        if stage:
            self.denied_by[stage] = self.denied_by.get(stage, 0) + 1
        self.sms_assessed += answer.get("sms") is not None
        for v in answer.get("violations", ()):
            self.reasons[v[3]] = self.reasons.get(v[3], 0) + 1


def compare(
    server: RunningServer,
    folder: Path,
    spec: PolicySetSpec,
    batch: list[Request],
    pools: dict[str, PoolDescription],
    tally: Tally,
) -> None:
    loaded = load(str(folder))
    assert isinstance(loaded, LoadedSet), loaded

    async def explain_all() -> list[dict[str, Any]]:
        found = []
        for request in batch:
            pool = pools.get(request.pool)
            explanation = await explain(
                loaded.policy_set, request.caller, request.domain(), pool, None, loaded.lines
            )
            found.append(explained(to_json(explanation)))
        return found

    offline = asyncio.run(explain_all())
    with server.channel() as channel:
        answers = served(server.stub(channel), batch)
    for request, mine, theirs in zip(batch, offline, answers, strict=True):
        assert mine == theirs, (
            f"explain and the server disagree\npolicies:\n{spec.yaml()}\nrequest: {request}"
        )
        tally.add(theirs)
    tally.sets += 1


# --- the tests ---------------------------------------------------------------------------------

UNDESCRIBED = ("us-east-1_AAA", "us-east-1_BBB", "eu-west-1_CCC")
SETS_UNDESCRIBED, REQUESTS_UNDESCRIBED = 18, 150
SETS_DESCRIBED, REQUESTS_DESCRIBED = 4, 100

# Run first, before the generated sets: every stage and outcome, whatever hypothesis draws.
EXAMPLE_SET = PolicySetSpec(
    policies=[
        {
            "mode": "enforce",
            "callers": ["profile-*"],
            "userPools": ["*"],
            "allow": [
                {"attribute": "phone_number", "format": "e164"},
                {"attribute": "given_name", "maxLength": 5},
                {"attribute": "custom:*"},
                {"attribute": "email", "format": "email"},
            ],
            "deny": [{"attribute": "custom:role"}],
            "clientMetadata": {"allowKeys": ["source"]},
        },
        {
            "mode": "audit",
            "callers": ["*"],
            "userPools": ["*"],
            "allow": [],
            "deny": [{"attribute": "given_name"}],
            "clientMetadata": {"allowKeys": []},
        },
    ],
    guards=[
        {"mode": "enforce", "userPools": ["*"], "countries": {"allow": ["US", "CA"]}},
        {
            "mode": "audit",
            "userPools": ["*"],
            "countries": {"deny": ["CA"]},
            "limits": [{"per": "caller", "max": 5, "window": "1h"}],
        },
    ],
)


def example_requests(pools: Sequence[str]) -> list[Request]:
    first, last, caller = pools[0], pools[-1], "profile-api"
    return [
        Request(caller, first, [("phone_number", "+14155550100")]),
        Request(caller, last, [("phone_number", "+15145550100")]),  # the audit guard: CA
        Request(caller, first, [("phone_number", "+33612345678")]),  # refused: FR
        Request(caller, first, [("phone_number", "+80012345678")]),  # refused: non-geographic
        Request(
            caller, first, [("phone_number", "+14155550100"), ("phone_number_verified", "true")]
        ),
        Request(caller, first, [("given_name", "Ada"), ("custom:tier", "pro")], {"source": "x"}),
        Request(
            caller, first, [("given_name", "Bartholomew"), ("custom:role", "x")], {"debug": "x"}
        ),
        # Allowed by the policy; with a pool file, refused by its schema.
        Request(
            caller, first, [("custom:level", "abc"), ("custom:frozen", "x"), ("custom:no", "x")]
        ),
        Request(caller, first, [("email", "ada@example.com"), ("custom:tier", "enterprise")]),
        Request(caller, first, [("phone_number", "+1415")]),  # invalid
        Request("stranger", first, [("given_name", "Ada")]),  # no policy applies
    ]


def _pool_globs(pools: Sequence[str]) -> tuple[str, ...]:
    return (*pools, pools[0][:11] + "*", "us-east-1_*", "*", "eu-*", "*B")


def _write(spec: PolicySetSpec, root: Path) -> tuple[Path, Path]:
    """The set in a folder of its own under `root`, and a state file beside (not in) it."""
    home = Path(tempfile.mkdtemp(dir=root))
    (home / "policies").mkdir()
    (home / "policies" / "set.yaml").write_text(spec.yaml())
    return home / "policies", home / "state.sqlite"


def agree(
    what: str,
    root: Path,
    pools: tuple[str, ...],
    described: dict[str, PoolDescription],
    server_settings: Callable[[Path, Path | None], Settings],
    sets: int,
    per_set: int,
) -> Tally:
    """`sets` generated policy sets (and the example set) with `per_set` requests each."""
    tally, started = Tally(), time.monotonic()
    generated = policy_sets(_pool_globs(pools)).flatmap(
        lambda spec: st.tuples(
            st.just(spec), st.lists(requests(spec, pools), min_size=per_set, max_size=per_set)
        )
    )

    @settings(SETTINGS, max_examples=sets)
    @example((EXAMPLE_SET, example_requests(pools)))
    @given(generated)
    def one_set(case: tuple[PolicySetSpec, list[Request]]) -> None:
        spec, batch = case
        folder, state = _write(spec, root)
        server = RunningServer(server_settings(folder, state if spec.guards else None))
        try:
            compare(server, folder, spec, batch, described, tally)
        finally:
            server.stop()

    one_set()
    print(
        f"\n{what}: {tally.requests} requests against {tally.sets} policy sets in "
        f"{time.monotonic() - started:.1f} s; outcomes {tally.outcomes}, "
        f"denied by {tally.denied_by}, reasons {tally.reasons}, "
        f"{tally.sms_assessed} reached the SMS guard"
    )
    assert tally.sets == sets + 1
    assert set(tally.outcomes) == {"allowed", "denied", "invalid"}, tally.outcomes
    return tally


def test_explain_decides_as_the_server_without_a_pool_file(
    stub_credentials: None, tmp_path: Path
) -> None:
    """The server cannot describe the pool (its Cognito is a closed port) and fails open; explain
    has no pool file and skips the pool stage."""

    def server_settings(policies: Path, state: Path | None) -> Settings:
        return settings_for(
            policies=str(policies),
            cognito_endpoint=f"http://127.0.0.1:{free_port()}",
            pool_metadata_fail_open=True,
            cognito_max_attempts=1,
            metadata_lookup_rate=1e9,
            metadata_lookup_burst=10**9,
            state=str(state) if state else None,
        )

    tally = agree(
        "without a pool file",
        tmp_path,
        UNDESCRIBED,
        {},
        server_settings,
        SETS_UNDESCRIBED,
        REQUESTS_UNDESCRIBED,
    )
    assert {"policy", "sms_country"} <= set(tally.denied_by), tally.denied_by


@pytest.fixture
def described_pools(moto: MotoCognito, tmp_path: Path) -> Iterator[dict[str, PoolDescription]]:
    """Two pools in moto (one with custom attributes, an immutable one, phone numbers verified
    by SMS and emails held back until verified; one plain), each with its DescribeUserPool
    answer in a file, read as explain reads --pool-file."""
    rich_pool = moto.create_pool(
        "described",
        Schema=[
            {
                "Name": "tier",
                "AttributeDataType": "String",
                "Mutable": True,
                "StringAttributeConstraints": {"MinLength": "2", "MaxLength": "5"},
            },
            {
                "Name": "level",
                "AttributeDataType": "Number",
                "Mutable": True,
                "NumberAttributeConstraints": {"MinValue": "0", "MaxValue": "10"},
            },
            {"Name": "frozen", "AttributeDataType": "String", "Mutable": False},
            {"Name": "role", "AttributeDataType": "String", "Mutable": True},
        ],
        AutoVerifiedAttributes=["phone_number", "email"],
        UserAttributeUpdateSettings={"AttributesRequireVerificationBeforeUpdate": ["email"]},
    )
    plain_pool = moto.create_pool("plain")
    found = {}
    for pool_id in (rich_pool, plain_pool):
        answer = moto.admin.describe_user_pool(UserPoolId=pool_id)
        answer.pop("ResponseMetadata", None)
        path = tmp_path / f"{pool_id}.json"
        path.write_text(json.dumps(answer, default=str))
        found[pool_id] = read_pool_fixture(str(path), pool_id)
    yield found
    for pool_id in found:
        moto.admin.delete_user_pool(UserPoolId=pool_id)


def test_explain_with_a_pool_file_decides_as_the_server_describing_the_pool(
    moto: MotoCognito, described_pools: dict[str, PoolDescription], tmp_path: Path
) -> None:
    """The server describes the pool in moto; explain reads the same DescribeUserPool answer."""
    pool_ids = tuple(described_pools)
    rich_pool = described_pools[pool_ids[0]]
    assert "custom:frozen" in rich_pool.attributes  # moto kept what the test relies on
    assert "phone_number" in rich_pool.auto_verified

    def server_settings(policies: Path, state: Path | None) -> Settings:
        return settings_for(
            policies=str(policies),
            cognito_endpoint=moto.endpoint,
            state=str(state) if state else None,
        )

    tally = agree(
        "with pool files",
        tmp_path,
        pool_ids,
        described_pools,
        server_settings,
        SETS_DESCRIBED,
        REQUESTS_DESCRIBED,
    )
    assert {"policy", "pool_schema", "sms_country"} <= set(tally.denied_by), tally.denied_by
