"""The SMS guard across a fleet of real processes.

`attrgate serve` replicas run as subprocesses against moto's Cognito (signatures checked) or the
Cognito stub; client processes (multiprocessing, spawn) release their calls together through one
Barrier. What was forwarded is counted at the Cognito stand-in: the users whose phone number
changed, read back with the admin client.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import redis as redis_py

from support.cognito_stub import CognitoStub, Reply, describe_reply
from support.fleet import Call, ClientFleet, Outcome, Replica, replica_env, start_all
from support.moto_cognito import MotoCognito
from support.policies import sms_guard as support_sms_guard
from support.policies import svc_policy
from support.redis_server import RedisClusterServers, RedisServer
from support.rpc import Answer, attrs_request, outcome, update
from support.waiting import wait_for

USERS = 200
CLIENT_PROCESSES = 4  # x 50 calls each
LIMIT = 50
ROUNDS = 5
SQLITE_ROUNDS = 3
REFUSED = ("RESOURCE_EXHAUSTED", "SMS_LIMIT_EXCEEDED")

ALLOW_PHONES = svc_policy(
    "[{attribute: phone_number}, {attribute: phone_number_verified}, {attribute: given_name}]"
)


def sms_guard(body: str) -> str:
    return support_sms_guard(body, name="fleet")


LIMIT_GUARD = sms_guard(
    f"""
limits:
  - {{per: global, max: {LIMIT}, window: 1h}}
"""
)
# 50 x 0.00883 = 0.4415 exactly: binary floats, or a `>=` where `>` belongs, admit 49; a race
# between replicas admits 51.
BUDGET_GUARD = sms_guard(
    """
budget:
  currency: USD
  amount: 0.4415
  window: 1h
  pricePerMessage: {US: 0.00883, default: 0.10}
"""
)


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def clients() -> Iterator[ClientFleet]:
    fleet = ClientFleet(CLIENT_PROCESSES, caller="svc")
    yield fleet
    fleet.close()


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    """Every replica a test starts; all stopped (SIGTERM, then SIGKILL) whatever happens."""
    started: list[Replica] = []
    yield started
    for replica in started:
        replica.stop()


def write_policies(tmp_path: Path, guard: str) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir(exist_ok=True)
    (folder / "policies.yaml").write_text(ALLOW_PHONES + guard)
    return folder


def pool_with_users(moto: MotoCognito) -> str:
    """A pool that auto-verifies phone numbers (so writing one sends an SMS), with USERS users
    without a phone number."""
    pool = moto.create_pool(name="fleet", AutoVerifiedAttributes=["phone_number"])
    with ThreadPoolExecutor(8) as pool_:
        list(pool_.map(lambda i: moto.create_user(pool, username(i)), range(USERS)))
    return pool


def username(i: int) -> str:
    return f"user{i:03d}"


def phones(moto: MotoCognito, pool: str) -> dict[str, str | None]:
    """Every user of the pool read back from Cognito: username -> phone_number (or None)."""
    found: dict[str, str | None] = {}
    token: dict[str, str] = {}
    while True:
        page = moto.admin.list_users(UserPoolId=pool, Limit=60, **token)
        for user in page["Users"]:
            attributes = {a["Name"]: a["Value"] for a in user.get("Attributes", [])}
            found[user["Username"]] = attributes.get("phone_number")
        if not page.get("PaginationToken"):
            break
        token = {"PaginationToken": page["PaginationToken"]}
    assert len(found) == USERS
    return found


def round_calls(pool: str, replicas: list[Replica], round_no: int) -> list[Call]:
    """One SMS-triggering update per user, each to a new valid US number, alternating
    replicas."""
    return [
        Call(
            index=i,
            target=replicas[i % len(replicas)].target,
            pool_id=pool,
            username=username(i),
            phone=f"+1415555{round_no * USERS + i:04d}",
        )
        for i in range(USERS)
    ]


def assert_exactly(
    limit: int,
    calls: list[Call],
    outcomes: list[Outcome],
    before: dict[str, str | None],
    after: dict[str, str | None],
    what: str,
) -> None:
    """`limit` users changed at Cognito, exactly the ones whose call succeeded, to the number
    their call asked for; every other call refused with SMS_LIMIT_EXCEEDED."""
    assert [o.index for o in outcomes] == list(range(len(calls)))
    kinds = Counter((o.code, o.reason) for o in outcomes)
    changed = {u: after[u] for u in after if after[u] != before[u]}
    summary = f"{what}: {len(changed)} users changed at Cognito; outcomes {dict(kinds)}"
    assert len(changed) == limit, summary
    succeeded = {calls[o.index].username: calls[o.index].phone for o in outcomes if o.code == "OK"}
    assert changed == succeeded, summary
    assert kinds == {("OK", ""): limit, REFUSED: len(calls) - limit}, summary


def one_round(
    moto: MotoCognito,
    clients: ClientFleet,
    pool: str,
    fleet: list[Replica],
    round_no: int,
    what: str,
) -> None:
    before = phones(moto, pool)
    calls = round_calls(pool, fleet, round_no)
    outcomes = clients.run_round(calls)
    after = phones(moto, pool)
    assert_exactly(LIMIT, calls, outcomes, before, after, f"{what}, round {round_no + 1}")


def moto_env(moto: MotoCognito) -> dict[str, str]:
    keys = moto.attrgate_keys
    return replica_env(keys.access_key_id, keys.secret_access_key)


def common_args(policies: Path, endpoint: str) -> list[str]:
    return ["--policies", str(policies), "--cognito-endpoint", endpoint, "--region", "us-east-1"]


# --- 1. two replicas, one redis-server (or one Redis Cluster) -----------------------------------


@pytest.mark.parametrize(
    ("redis_kind", "guard"),
    [("server", LIMIT_GUARD), ("server", BUDGET_GUARD), ("cluster", LIMIT_GUARD)],
    ids=["limit", "budget", "cluster-limit"],
)
def test_two_replicas_on_one_redis_forward_exactly_the_limit(
    moto: MotoCognito,
    clients: ClientFleet,
    replicas: list[Replica],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    redis_kind: str,
    guard: str,
) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_text(secrets.token_hex(32))
    if redis_kind == "cluster":
        cluster: RedisClusterServers = request.getfixturevalue("redis_cluster")
        url, nodes, flags = cluster.url, [n.url for n in cluster.nodes], ["--redis-cluster"]
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url, nodes, flags = server.url, [server.url], []
    args = [
        *common_args(write_policies(tmp_path, guard), moto.endpoint),
        *("--redis-url", url, "--hmac-key-file", str(key_file), *flags),
    ]
    env = moto_env(moto)
    controls = [redis_py.Redis.from_url(node) for node in nodes]
    for control in controls:
        control.flushall()
    replicas.extend(Replica(f"redis-{n}", args, env, tmp_path) for n in "ab")
    pool = pool_with_users(moto)
    start_all(replicas)
    try:
        for round_no in range(ROUNDS):
            # The guard's counters are keyed per guard, not per pool: start each round empty
            # (the key's fingerprint stays: the replicas checked it at start).
            for control in controls:
                for name in control.scan_iter(match="{attrgate}:*"):
                    if not name.endswith(b":secret:key-fingerprint"):
                        control.delete(name)
            one_round(moto, clients, pool, replicas, round_no, f"redis {redis_kind}")
    finally:
        for control in controls:
            control.close()


# --- 2. two replicas, one SQLite file -----------------------------------------------------------


@pytest.mark.parametrize("guard", [LIMIT_GUARD, BUDGET_GUARD], ids=["limit", "budget"])
def test_two_replicas_on_one_sqlite_file_forward_exactly_the_limit(
    moto: MotoCognito,
    clients: ClientFleet,
    replicas: list[Replica],
    tmp_path: Path,
    guard: str,
) -> None:
    policies = write_policies(tmp_path, guard)
    env = moto_env(moto)
    pool = pool_with_users(moto)
    # A race between the processes shows as one message too many in some rounds, not all: run
    # a few, each on a new state file that the two replicas create together.
    for round_no in range(SQLITE_ROUNDS):
        state = str(tmp_path / f"state-{round_no}.sqlite")
        args = [*common_args(policies, moto.endpoint), "--state", state]
        fleet = [Replica(f"sqlite-{round_no}{n}", args, env, tmp_path) for n in "ab"]
        replicas.extend(fleet)
        start_all(fleet)
        one_round(moto, clients, pool, fleet, round_no, "sqlite")
        for replica in fleet:
            replica.stop()


# --- 3. a reservation held by a replica that dies ------------------------------------------------

POOL = "us-east-1_Pool1"


def send(replica: Replica, pairs: list[tuple[str, str]], timeout: float = 10) -> Answer:
    return update(replica.target, attrs_request(POOL, pairs), timeout=timeout)


def test_a_reservation_held_by_a_killed_replica_still_counts_after_restart(
    stub: CognitoStub, replicas: list[Replica], tmp_path: Path
) -> None:
    stub.describe = describe_reply(auto_verified=("phone_number",))
    stub.program(Reply(delay=30))  # the first update hangs: Cognito has not answered yet
    policies = write_policies(tmp_path, sms_guard("limits:\n  - {per: global, max: 1, window: 1h}"))

    def args(state: str) -> list[str]:
        # attrgate must still be waiting for Cognito when it is killed: a long read timeout
        return [
            *common_args(policies, stub.endpoint),
            *("--state", str(tmp_path / state), "--cognito-read-timeout", "120"),
        ]

    env = replica_env("stub-key", "stub-secret")
    first = Replica("doomed", args("state.sqlite"), env, tmp_path)
    replicas.append(first)
    first.start()

    hanging: list[object] = []
    sender = threading.Thread(
        target=lambda: hanging.append(send(first, [("phone_number", "+14155550100")], 60)),
        daemon=True,
    )
    sender.start()
    wait_for(lambda: len(stub.calls()) == 1, "the stub to receive the SMS-triggering update", 10)
    # While it hangs, its reservation already counts on this replica.
    assert outcome(send(first, [("phone_number", "+14155550101")])) == REFUSED
    first.kill()
    sender.join(timeout=10)
    assert not sender.is_alive()
    # The caller never saw an answer: the connection died with the replica.
    assert isinstance(hanging[0], grpc.RpcError), hanging[0]
    assert hanging[0].code() == grpc.StatusCode.UNAVAILABLE

    # Restarted on the same state file, with a Cognito that answers at once.
    stub.default = Reply()
    restarted = Replica("restarted", args("state.sqlite"), env, tmp_path)
    # Control: the same policy on an empty state file lets an SMS through.
    fresh = Replica("fresh", args("fresh.sqlite"), env, tmp_path)
    replicas.extend([restarted, fresh])
    start_all([restarted, fresh])
    assert len(stub.calls()) == 1

    refused = send(restarted, [("phone_number", "+14155550102")])
    assert outcome(refused) == REFUSED, "the reservation of the killed replica was lost"
    assert len(stub.calls()) == 1, "a refused SMS-triggering update was forwarded"
    # Writes that send no SMS go on.
    for pairs in (
        [("given_name", "Ada")],
        [("phone_number", "+14155550103"), ("phone_number_verified", "true")],
    ):
        assert outcome(send(restarted, pairs)) == ("OK", "")
    assert len(stub.calls()) == 3

    assert outcome(send(fresh, [("phone_number", "+14155550104")])) == ("OK", "")
    assert len(stub.calls()) == 4
