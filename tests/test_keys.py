"""Keys apart from hashes: the HMAC key that hashes phone numbers, users and callers is never in
the state file or in Redis (with both, every counter key reverses by enumeration); the store keeps
its fingerprint, so a start with another key is refused; an older state file gives its key up;
and the Redis durability and cluster checks at start. Through the real server (moto's Cognito,
a real redis-server and Redis Cluster)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from attrgate.config import ConfigError
from support.attrgate_server import RunningServer
from support.moto_cognito import MotoCognito
from support.policies import sms_guard, svc_policy
from support.redis_server import RedisClusterServers, RedisServer
from support.rpc import attrs_request, outcome
from support.rpc import update as send
from support.waiting import wait_until

Serve = Callable[..., RunningServer]
POLICIES = svc_policy("[{attribute: phone_number}]") + sms_guard(
    """
limits:
  - {per: phone_number, max: 1, window: 1h}
  - {per: global, max: 2, window: 1h}
"""
)
PHONE = "+14155550100"
OK = ("OK", "")
FULL = ("RESOURCE_EXHAUSTED", "SMS_LIMIT_EXCEEDED")


def keyed(key: bytes, kind: str, value: str) -> str:
    """attrgate's keyed hash, written out here so the test pins it."""
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:32]


def fingerprint(key: bytes) -> str:
    return hmac.new(key, b"attrgate key fingerprint v1", hashlib.sha256).hexdigest()


@pytest.fixture
def sms_pool(moto: MotoCognito) -> str:
    pool = moto.create_pool(name="keys", AutoVerifiedAttributes=["phone_number"])
    moto.create_user(pool, "ada")
    return pool


def update(server: RunningServer, pool: str, phone: str) -> tuple[str, str]:
    return outcome(send(server.target, attrs_request(pool, [("phone_number", phone)])))


def rows(path: Path, query: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def test_the_generated_key_lives_beside_the_state_never_in_it(
    serve: Serve, moto: MotoCognito, sms_pool: str, tmp_path: Path
) -> None:
    state, decisions = tmp_path / "state.sqlite", tmp_path / "decisions.jsonl"
    server = serve(POLICIES, moto.endpoint, state=str(state), decision_log=str(decisions))
    assert update(server, sms_pool, PHONE) == OK
    server.stop()

    key_file = tmp_path / "state.key"  # state.sqlite -> state.key: `rm state.sqlite*` spares it
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes().strip()
    assert len(key) >= 32
    for path in tmp_path.glob("state.sqlite*"):
        assert key not in path.read_bytes(), path
    # besides the store's own random name for its contents (store-id), only the fingerprint
    assert rows(state, "SELECT name, value FROM secrets WHERE name != 'store-id'") == [
        ("key-fingerprint", fingerprint(key).encode())
    ]
    # the counts were made with that key...
    (counted,) = rows(state, "SELECT key FROM events WHERE key LIKE 'sms:sms:e:l0:%'")
    assert counted == (f"sms:sms:e:l0:{keyed(key, 'phone', PHONE)}",)
    # ...and the decision log hashes usernames with it too
    (entry,) = [json.loads(line) for line in decisions.read_text().splitlines()]
    assert entry["username_hash"] == keyed(key, "username", f"{sms_pool}\0ada")


def test_a_start_with_another_key_than_the_counts_were_made_with_is_refused(
    serve: Serve, moto: MotoCognito, sms_pool: str, tmp_path: Path
) -> None:
    state = str(tmp_path / "state.sqlite")
    first = serve(POLICIES, moto.endpoint, state=state)
    assert update(first, sms_pool, PHONE) == OK
    first.stop()

    other = tmp_path / "other.key"
    other.write_text("another key, long enough to be one\n")
    for overrides in ({"hmac_key_file": str(other)}, {}):
        if not overrides:  # the generated key replaced
            (tmp_path / "state.key").write_text("yet another key, long enough\n")
        with pytest.raises(ConfigError) as caught:
            serve(POLICIES, moto.endpoint, state=state, **overrides)
        message = str(caught.value)
        assert "were made with another HMAC key" in message
        assert "\n" not in message


def test_a_state_file_of_an_older_attrgate_gives_up_its_key_and_keeps_its_counts(
    serve: Serve,
    moto: MotoCognito,
    sms_pool: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    legacy = bytes(range(9, 41))  # binary, and starting with a white-space byte (\t)
    state = tmp_path / "state.sqlite"
    old = sqlite3.connect(state, isolation_level=None)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(
        """
        CREATE TABLE events (key TEXT NOT NULL, reservation TEXT NOT NULL, ts INTEGER NOT NULL,
            amount INTEGER NOT NULL, expires INTEGER NOT NULL, UNIQUE (key, reservation, amount));
        CREATE INDEX events_key_ts ON events (key, ts);
        CREATE INDEX events_expires ON events (expires);
        CREATE TABLE secrets (name TEXT PRIMARY KEY, value BLOB NOT NULL);
        """
    )
    old.execute("INSERT INTO secrets VALUES ('hmac-key', ?)", (legacy,))
    now = int(time.time() * 1000)
    old.execute(  # PHONE already had its one SMS this hour, counted under the old key
        "INSERT INTO events VALUES (?, 'old', ?, 1, ?)",
        (f"sms:sms:e:l0:{keyed(legacy, 'phone', PHONE)}", now, now + 3_600_000),
    )
    old.close()

    caplog.set_level(logging.INFO, logger="attrgate")
    server = serve(POLICIES, moto.endpoint, state=str(state))
    assert update(server, sms_pool, PHONE) == FULL, "the old counts no longer count"
    assert update(server, sms_pool, "+14155550101") == OK
    server.stop()

    assert "moved the HMAC key out of the SMS state" in caplog.text
    key_file = tmp_path / "state.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    text = key_file.read_bytes().strip()
    assert text.startswith(b"base64:")
    assert base64.b64decode(text.removeprefix(b"base64:")) == legacy
    assert rows(state, "SELECT name FROM secrets ORDER BY name") == [
        ("key-fingerprint",),
        ("store-id",),
    ]
    for path in tmp_path.glob("state.sqlite*"):
        assert legacy not in path.read_bytes(), path

    # A second start reads the moved key: the counts are still the same ones.
    again = serve(POLICIES, moto.endpoint, state=str(state))
    assert update(again, sms_pool, PHONE) == FULL


@pytest.fixture
def clean_redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
        yield redis_server
        client.config_set("appendonly", "no")


def test_redis_holds_the_fingerprint_not_the_key_and_refuses_another_key(
    serve: Serve, moto: MotoCognito, sms_pool: str, clean_redis: RedisServer, tmp_path: Path
) -> None:
    key, other = tmp_path / "a.key", tmp_path / "b.key"
    key.write_text("the fleet's key, long enough\n")
    other.write_text("another fleet's key, long enough\n")
    first = serve(POLICIES, moto.endpoint, redis_url=clean_redis.url, hmac_key_file=str(key))
    assert update(first, sms_pool, PHONE) == OK
    first.stop()
    with redis.Redis.from_url(clean_redis.url) as client:
        names = [n.decode() for n in client.keys("*")]
        assert (
            client.get("{attrgate}:secret:key-fingerprint")
            == fingerprint(b"the fleet's key, long enough").encode()
        )
        for name in names:
            assert b"fleet's key" not in (client.dump(name) or b""), name
    assert all(name.startswith("{attrgate}:") for name in names)
    with pytest.raises(ConfigError, match="were made with another HMAC key"):
        serve(POLICIES, moto.endpoint, redis_url=clean_redis.url, hmac_key_file=str(other))


def test_a_redis_that_lost_its_counts_is_noticed_while_serving(
    serve: Serve,
    moto: MotoCognito,
    sms_pool: str,
    clean_redis: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = tmp_path / "a.key"
    key.write_text("the fleet's key, long enough\n")
    server = serve(POLICIES, moto.endpoint, redis_url=clean_redis.url, hmac_key_file=str(key))
    assert update(server, sms_pool, PHONE) == OK
    with redis.Redis.from_url(clean_redis.url) as client:
        client.flushall()  # as a restart without appendonly would leave it
        assert wait_until(lambda: "every SMS limit and budget starts again" in caplog.text, 15)
        assert "ERROR" in [r.levelname for r in caplog.records if "are gone" in r.getMessage()]
        # the fingerprint is back: a replica with another key is still refused
        assert (
            client.get("{attrgate}:secret:key-fingerprint")
            == fingerprint(b"the fleet's key, long enough").encode()
        )


def test_a_fingerprint_replaced_while_serving_stops_counting(
    serve: Serve, moto: MotoCognito, sms_pool: str, clean_redis: RedisServer, tmp_path: Path
) -> None:
    """Another fleet's replica (another key) took the Redis over: counting on with this key
    would split the counts between two keys. SMS writes fail closed until the keys agree."""
    key = tmp_path / "a.key"
    key.write_text("the fleet's key, long enough\n")
    server = serve(POLICIES, moto.endpoint, redis_url=clean_redis.url, hmac_key_file=str(key))
    assert update(server, sms_pool, PHONE) == OK
    with redis.Redis.from_url(clean_redis.url) as client:
        client.set("{attrgate}:secret:key-fingerprint", fingerprint(b"another fleet's key!"))

    def refused() -> bool:  # the probe notices within a few seconds
        return update(server, sms_pool, "+14155550142") == ("UNAVAILABLE", "SMS_STORE_UNAVAILABLE")

    assert wait_until(refused, 15)
    assert update(server, sms_pool, "+14155550143") == ("UNAVAILABLE", "SMS_STORE_UNAVAILABLE")


def test_require_durable_store_refuses_a_redis_that_can_lose_counts(
    serve: Serve,
    moto: MotoCognito,
    clean_redis: RedisServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = tmp_path / "hmac.key"
    key.write_text("k" * 32)
    options = {"redis_url": clean_redis.url, "hmac_key_file": str(key)}
    with pytest.raises(ConfigError) as caught:
        serve(POLICIES, moto.endpoint, require_durable_store=True, **options)
    assert "appendonly yes" in str(caught.value)
    assert "--require-durable-store" in str(caught.value)
    # without the flag: a warning, and it serves
    serve(POLICIES, moto.endpoint, **options).stop()
    assert "runs without appendonly yes" in caplog.text
    with redis.Redis.from_url(clean_redis.url) as client:
        client.config_set("appendonly", "yes")
    serve(POLICIES, moto.endpoint, require_durable_store=True, **options).stop()


def test_a_redis_cluster_needs_the_flag_and_counts_exactly_across_replicas(
    serve: Serve,
    moto: MotoCognito,
    sms_pool: str,
    redis_cluster: RedisClusterServers,
    tmp_path: Path,
) -> None:
    for node in redis_cluster.nodes:
        with redis.Redis.from_url(node.url) as client:
            client.flushall()
    key = tmp_path / "hmac.key"
    key.write_text("k" * 32)
    options = {"redis_url": redis_cluster.url, "hmac_key_file": str(key)}
    with pytest.raises(ConfigError, match="runs in cluster mode: add --redis-cluster"):
        serve(POLICIES, moto.endpoint, **options)
    a = serve(POLICIES, moto.endpoint, redis_cluster=True, **options)
    b = serve(POLICIES, moto.endpoint, redis_cluster=True, **options)
    # global max 2: one write through each replica, then the limit holds on both
    assert update(a, sms_pool, "+14155550110") == OK
    assert update(b, sms_pool, "+14155550111") == OK
    assert update(a, sms_pool, "+14155550112") == FULL
    assert update(b, sms_pool, "+14155550113") == FULL
    # what the operator reads from the cluster
    where = ("--policies", str(a.settings.policies), "--redis-url", redis_cluster.url)
    report = subprocess.run(
        [sys.executable, "-m", "attrgate", "sms", "usage", "--redis-cluster", *where],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    assert "    global: 2/2" in report.stdout.splitlines()
