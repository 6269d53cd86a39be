"""`serve --policies s3://...`: signed bundles from moto's S3 (server mode, SigV4 and IAM
enforced; attrgate's user may only s3:GetObject), polled with If-None-Match, refused whole when
unsigned, signed by another key or truncated, kept serving through an S3 outage, fail-closed at
start unless --policies-fallback names a local set."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from attrgate.reloading import RELOAD_TIMEOUT
from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.attrgate_server import RunningServer, settings_for
from support.bundles import build, policy_folder, write_keys
from support.moto_cognito import REGION, MotoCognito, allow_only, free_port
from support.policies import sms_guard
from support.prometheus import metrics_text, samples_of, total
from support.relay import Relay
from support.rpc import as_caller, attrs_request
from support.served import start_serve, stop_serve, wait_serving
from support.waiting import wait_for

BUCKET = "policies"
POOL = "us-east-1_Pool1"
POLL = 0.3  # seconds: several polls fit in every wait below
GIVEN = "[{attribute: given_name}]"
GIVEN_AND_FAMILY = "[{attribute: given_name}, {attribute: family_name}]"


@dataclass
class S3:
    moto: MotoCognito
    relay: Relay  # attrgate's way to S3: cut it for an outage
    admin: Any  # an S3 client with every right, for uploads
    iam: Any

    def env(self) -> dict[str, str]:
        keys = self.moto.attrgate_keys
        return {
            "AWS_ENDPOINT_URL_S3": self.relay.endpoint,
            "AWS_ACCESS_KEY_ID": keys.access_key_id,
            "AWS_SECRET_ACCESS_KEY": keys.secret_access_key,
        }


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    moto = MotoCognito(attrgate_actions=["s3:GetObject"])
    relay = Relay(moto.port)
    admin = moto.client("s3", moto.admin_keys)
    admin.create_bucket(Bucket=BUCKET)
    yield S3(moto, relay, admin, moto.client("iam", moto.admin_keys))
    relay.cut()
    moto.stop()


@pytest.fixture
def env(s3: S3, monkeypatch: pytest.MonkeyPatch) -> S3:
    """attrgate in this process finds S3 and its credentials as boto3 does, from the
    environment."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


@dataclass
class Keys:
    private: Path
    public: Path
    stranger: Path  # a private key the server does not trust


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    private, public = write_keys(tmp_path, "trusted")
    stranger, _ = write_keys(tmp_path, "stranger")
    return Keys(private, public, stranger)


@pytest.fixture
def bundle(tmp_path: Path) -> Callable[..., bytes]:
    """A bundle of the `svc` set allowing `allow`, signed with `key` (unsigned without) for the
    object `at` (its s3:// URL, the target a server expects by default), each one signed a
    second after the one before (as CI would, and as a server requires)."""
    count = iter(range(1000))
    first = int(time.time()) - 3600

    def make(allow: str, key: Path | None, at: str = "", signed_at: int | None = None) -> bytes:
        n = next(count)
        return build(
            policy_folder(tmp_path / f"set{n}", allow),
            tmp_path / f"b{n}.tar.gz",
            key,
            target=url(at) if at else "",
            signed_at=first + n if signed_at is None else signed_at,
        )

    return make


def upload(s3: S3, key: str, data: bytes) -> None:
    s3.admin.put_object(Bucket=BUCKET, Key=key, Body=data)


def url(key: str) -> str:
    return f"s3://{BUCKET}/{key}"


def decide(server: RunningServer, attribute: str) -> pb.Decision:
    with server.channel() as channel:
        decision: pb.Decision = server.stub(channel).CheckUpdateUserAttributes(
            attrs_request(POOL, [(attribute, "x")]), metadata=as_caller("svc"), timeout=10
        )
    return decision


def status(server: RunningServer) -> pb.StatusResponse:
    with grpc.insecure_channel(f"127.0.0.1:{server.app.admin_port}") as channel:
        reply: pb.StatusResponse = pb_grpc.AdminStub(channel).Status(pb.StatusRequest(), timeout=10)
    return reply


@pytest.fixture
def start() -> Iterator[Callable[..., RunningServer]]:
    """A real server deciding without Cognito, polling every POLL seconds, stopped at the end."""
    started: list[RunningServer] = []

    def run(**overrides: Any) -> RunningServer:
        server = RunningServer(
            settings_for(
                admin_listen="127.0.0.1:0",
                policy_poll=POLL,
                pool_metadata_fail_open=True,
                cognito_endpoint=f"http://127.0.0.1:{free_port()}",
                **overrides,
            )
        )
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()


def serve_bundle(
    start: Callable[..., RunningServer], s3: S3, key: str, data: bytes, public: Path
) -> tuple[RunningServer, int]:
    """`data` uploaded at `key` and served from there; the server and its metrics port."""
    upload(s3, key, data)
    metrics = free_port()
    server = start(
        policies=url(key), bundle_public_key=str(public), metrics_listen=f"127.0.0.1:{metrics}"
    )
    return server, metrics


def stays_refused(server: RunningServer, metrics: int, serving: str, why: str) -> None:
    """The object refused is reported refused again by each next poll (a 304, not read again),
    and the set before it serves on."""

    def rejected() -> float:
        reloads = samples_of(metrics_text(metrics))["attrgate_policy_reloads_total"]
        return total(reloads, set="serving", result="rejected")

    first = rejected()
    wait_for(lambda: rejected() >= first + 3, "three more polls", 30)
    found = status(server).policies
    assert (found.last_result, found.revision) == ("rejected", serving)
    assert why in found.last_error


def test_a_signed_bundle_serves_and_each_new_one_is_verified_before_it_does(
    env: S3, keys: Keys, bundle: Callable[..., bytes], start: Callable[..., RunningServer]
) -> None:
    server, metrics = serve_bundle(
        start, env, "b1.tar.gz", bundle(GIVEN, keys.private, "b1.tar.gz"), keys.public
    )
    assert decide(server, "given_name").allowed
    assert not decide(server, "family_name").allowed
    before = status(server).policies
    assert (before.source, before.follows, before.fallback) == (url("b1.tar.gz"), "poll", False)

    second = bundle(GIVEN_AND_FAMILY, keys.private, "b1.tar.gz")
    upload(env, "b1.tar.gz", second)
    wait_for(lambda: decide(server, "family_name").allowed, "the new bundle to serve", 30)
    serving = status(server).policies.revision
    assert decide(server, "family_name").policy_revision == serving != before.revision

    # Each of these replaces the object; none may serve, and the set before them stays.
    for data, why in (
        (bundle(GIVEN, None), "unsigned: the bundle has no signature"),
        (bundle(GIVEN, keys.stranger, "b1.tar.gz"), "does not verify with any trusted key"),
        (second[: len(second) // 2], "truncated"),
    ):
        upload(env, "b1.tar.gz", data)
        wait_for(lambda why=why: why in status(server).policies.last_error, why, 30)  # type: ignore[misc]
        assert status(server).policies.last_result == "rejected"
        assert decide(server, "family_name").allowed
        assert status(server).policies.revision == serving

    upload(env, "b1.tar.gz", second)  # the serving bundle again: nothing to swap
    wait_for(lambda: status(server).policies.last_result == "unchanged", "an unchanged poll", 30)
    reloads = samples_of(metrics_text(metrics))["attrgate_policy_reloads_total"]
    assert total(reloads, set="serving", result="loaded") == 1
    assert total(reloads, set="serving", result="rejected") >= 3


def test_s3_unavailable_for_a_while_keeps_serving_reports_it_and_recovers(
    env: S3,
    keys: Keys,
    bundle: Callable[..., bytes],
    start: Callable[..., RunningServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, metrics = serve_bundle(
        start, env, "b2.tar.gz", bundle(GIVEN, keys.private, "b2.tar.gz"), keys.public
    )
    serving = status(server).policies.revision

    def outage(begin: Callable[[], None], end: Callable[[], None], reason: str) -> None:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="attrgate"):
            begin()
            wait_for(lambda: status(server).policies.source_errors >= 3, "3 failed polls", 30)
            found = status(server).policies
            assert reason in found.source_error, found.source_error
            assert found.last_result == "unavailable"
            assert found.source_error_since_unix_ms > 0
            assert found.revision == serving
            assert decide(server, "given_name").allowed  # still deciding with the last good set
            end()
            wait_for(lambda: not status(server).policies.source_error, "recovery", 30)
        lines = [r.getMessage() for r in caplog.records]
        assert len([m for m in lines if "source unavailable" in m]) == 1, lines  # once a streak
        assert len([m for m in lines if "answers again" in m]) == 1, lines

    outage(env.relay.cut, env.relay.restore, "cannot reach S3")
    outage(
        lambda: allow_only(env.iam, "attrgate", ["sts:GetCallerIdentity"]),
        lambda: allow_only(env.iam, "attrgate", ["s3:GetObject"]),
        "AccessDenied (HTTP 403)",
    )
    data = env.admin.get_object(Bucket=BUCKET, Key="b2.tar.gz")["Body"].read()
    outage(
        lambda: env.admin.delete_object(Bucket=BUCKET, Key="b2.tar.gz"),
        lambda: upload(env, "b2.tar.gz", data),
        "NoSuchKey (HTTP 404)",
    )
    # Back to normal: a new bundle still swaps in.
    upload(env, "b2.tar.gz", bundle(GIVEN_AND_FAMILY, keys.private, "b2.tar.gz"))
    wait_for(lambda: decide(server, "family_name").allowed, "a bundle after the outages", 30)
    reloads = samples_of(metrics_text(metrics))["attrgate_policy_reloads_total"]
    assert total(reloads, set="serving", result="unavailable") >= 9
    assert total(reloads, set="serving", result="rejected") == 0


def test_without_a_valid_bundle_at_start_the_server_does_not_start(
    s3: S3, keys: Keys, bundle: Callable[..., bytes], tmp_path: Path
) -> None:
    upload(s3, "unsigned.tar.gz", bundle(GIVEN, None))
    cases = {
        "missing.tar.gz": (("--bundle-public-key", str(keys.public)), "NoSuchKey (HTTP 404)"),
        "unsigned.tar.gz": (("--bundle-public-key", str(keys.public)), "unsigned"),
        "any.tar.gz": ((), "needs --bundle-public-key"),
    }
    for key, (flags, why) in cases.items():
        port = free_port()
        process = start_serve(url(key), port, *flags, output=tmp_path, **s3.env())
        try:
            assert process.wait(timeout=60) == 2
        finally:
            if process.poll() is None:
                stop_serve(process)
        (line,) = (tmp_path / "err").read_text().splitlines()[-1:]
        assert line.startswith("attrgate: refusing to start: "), line
        assert why in line, line


def test_an_unsigned_bundle_serves_only_when_allowed_and_said_loudly(
    s3: S3, bundle: Callable[..., bytes], tmp_path: Path
) -> None:
    upload(s3, "open.tar.gz", bundle(GIVEN, None))
    port = free_port()
    process = start_serve(
        url("open.tar.gz"), port, "--allow-unsigned-bundles", output=tmp_path, **s3.env()
    )
    try:
        assert wait_serving(f"127.0.0.1:{port}", process)
    finally:
        assert stop_serve(process) == 0
    err = (tmp_path / "err").read_text()
    assert "WARNING" in err
    assert "anyone who can write to the bucket changes the policies" in err


def test_the_fallback_serves_until_the_first_valid_bundle(
    env: S3,
    keys: Keys,
    bundle: Callable[..., bytes],
    start: Callable[..., RunningServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fallback = policy_folder(tmp_path / "fallback", GIVEN)
    with caplog.at_level(logging.WARNING, logger="attrgate"):
        server = start(
            policies=url("later.tar.gz"),
            bundle_public_key=str(keys.public),
            policies_fallback=str(fallback),
        )
    found = status(server).policies
    assert found.fallback
    assert found.source == url("later.tar.gz")
    assert decide(server, "given_name").allowed
    assert any("fallback" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")

    # The same files as the fallback: the bundle still takes over (status says so).
    upload(env, "later.tar.gz", bundle(GIVEN, keys.private, "later.tar.gz"))
    wait_for(lambda: not status(server).policies.fallback, "the bundle to replace the fallback")
    assert status(server).policies.revision == found.revision

    upload(env, "later.tar.gz", bundle(GIVEN_AND_FAMILY, keys.private, "later.tar.gz"))
    wait_for(lambda: decide(server, "family_name").allowed, "the next bundle", 30)


def test_a_candidate_set_is_read_from_s3_the_same_way(
    env: S3,
    keys: Keys,
    bundle: Callable[..., bytes],
    start: Callable[..., RunningServer],
    tmp_path: Path,
) -> None:
    upload(env, "candidate.tar.gz", bundle(GIVEN_AND_FAMILY, keys.private, "candidate.tar.gz"))
    server = start(
        policies=str(policy_folder(tmp_path / "serving", GIVEN)),
        policy_watch=False,
        candidate_policies=url("candidate.tar.gz"),
        bundle_public_key=str(keys.public),
    )
    candidate = status(server).candidate
    assert (candidate.source, candidate.follows) == (url("candidate.tar.gz"), "poll")
    assert candidate.revision
    assert candidate.revision != status(server).policies.revision

    upload(env, "candidate.tar.gz", bundle(GIVEN, None))
    wait_for(lambda: "unsigned" in status(server).candidate.last_error, "the refusal", 30)
    assert status(server).candidate.revision == candidate.revision
    assert not decide(server, "family_name").allowed  # the candidate never decides


def test_the_s3_client_is_checked_by_moto(s3: S3) -> None:
    """The tests above mean something only if moto holds attrgate's user to s3:GetObject."""
    client = s3.moto.client("s3", s3.moto.attrgate_keys)
    upload(s3, "probe", b"x")
    assert client.get_object(Bucket=BUCKET, Key="probe")["Body"].read() == b"x"
    with pytest.raises(Exception, match="AccessDenied"):
        client.put_object(Bucket=BUCKET, Key="probe", Body=b"y")


def test_a_poll_downloads_only_when_the_etag_changed(env: S3) -> None:
    """If-None-Match on the last ETag: S3's 304 comes back as "unchanged" (None), and a bundle
    over the download limit is refused before its body is read."""
    from attrgate.config import ConfigError
    from attrgate.rollout.s3 import S3Object

    upload(env, "etag", b"first")
    s3_object = S3Object(url("etag"), REGION)
    fetched = s3_object.fetch(None, 1024)
    assert fetched is not None
    assert fetched.body == b"first"
    assert s3_object.fetch(fetched.etag, 1024) is None
    upload(env, "etag", b"second")
    again = s3_object.fetch(fetched.etag, 1024)
    assert again is not None
    assert again.body == b"second"
    with pytest.raises(ConfigError, match="over the 3 a bundle may have"):
        s3_object.fetch(None, 3)


def test_a_load_given_up_for_its_time_is_fetched_again_and_then_serves(
    env: S3,
    keys: Keys,
    bundle: Callable[..., bytes],
    start: Callable[..., RunningServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """S3 stalls while a new bundle is fetched: the poll gives up at the reload timeout, the
    polls while that load still runs say so once, and the ETag of what never served is not
    kept: a later poll downloads it again."""
    server, _ = serve_bundle(
        start, env, "slow.tar.gz", bundle(GIVEN, keys.private, "slow.tar.gz"), keys.public
    )
    assert server.app.reloader is not None
    server.app.reloader.timeout = 0.5
    env.relay.hold()
    try:
        upload(env, "slow.tar.gz", bundle(GIVEN_AND_FAMILY, keys.private, "slow.tar.gz"))
        with caplog.at_level(logging.ERROR, logger="attrgate"):
            wait_for(
                lambda: "took longer than 0.5s" in status(server).policies.last_error,
                "a poll to give up",
                30,
            )
            time.sleep(3)  # polls every 0.3 s meet the load still running
    finally:
        env.relay.release()  # the load given up now ends, in its thread
    server.app.reloader.timeout = 30
    wait_for(lambda: decide(server, "family_name").allowed, "the new bundle to serve", 30)
    assert status(server).policies.last_result in ("loaded", "unchanged")
    running = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert len(running) == 1, running  # logged once, however long it runs


def test_one_deadline_bounds_the_whole_fetch(env: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 accepts the connection and then stalls: the fetch gives up at its deadline, counted
    from before the request (not per read, not per attempt), as S3 unavailable."""
    from attrgate.rollout import s3 as s3_module
    from attrgate.rollout.source import SourceUnavailable

    monkeypatch.setattr(s3_module, "FETCH_DEADLINE", 1.0, raising=False)
    upload(env, "stall", b"x" * 1000)
    s3_object = s3_module.S3Object(url("stall"), REGION)
    env.relay.hold()
    try:
        began = time.monotonic()
        with pytest.raises(SourceUnavailable, match="did not answer in full within 1s"):
            s3_object.fetch(None, 1 << 20)
        took = time.monotonic() - began
        # The given-up fetch still waits for S3: the next poll starts no second one beside it.
        with pytest.raises(SourceUnavailable, match=r"previous fetch, given up at its"):
            s3_object.fetch(None, 1 << 20)
        assert sum(t.name == "attrgate-s3-fetch" for t in threading.enumerate()) == 1
    finally:
        env.relay.release()
    assert took < 5, took
    # Once S3 answers, the stalled fetch ends and the next one reads the object.

    def fetched() -> bool:
        try:
            return s3_object.fetch(None, 1 << 20) is not None
        except SourceUnavailable:
            return False

    wait_for(fetched, "a fetch after the stall", 30)
    assert s3_module.FETCH_DEADLINE < RELOAD_TIMEOUT


def test_a_trickling_answer_is_given_up_and_its_fetch_ends(
    env: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3 sends its headers, then one byte at a time, never slow enough for a read timeout:
    the fetch gives up at its deadline, and the thread that read it ends soon after instead of
    reading on for as long as the body takes (here 20 minutes): polls must not pile threads up."""
    from attrgate.rollout import s3 as s3_module
    from attrgate.rollout.source import SourceUnavailable

    monkeypatch.setattr(s3_module, "FETCH_DEADLINE", 1.0, raising=False)
    upload(env, "trickle", b"x" * 6000)
    s3_object = s3_module.S3Object(url("trickle"), REGION)
    env.relay.trickle(0.2)
    try:
        with pytest.raises(SourceUnavailable, match="did not answer in full within 1s"):
            s3_object.fetch(None, 1 << 20)

        def fetching() -> int:
            return sum(t.name == "attrgate-s3-fetch" for t in threading.enumerate())

        wait_for(lambda: fetching() == 0, "the given-up fetch to end", 15)
    finally:
        env.relay.release()


def test_a_bundle_this_server_refuses_stays_refused_while_it_is_in_the_bucket(
    env: S3, keys: Keys, bundle: Callable[..., bytes], start: Callable[..., RunningServer]
) -> None:
    """A valid bundle with an SmsGuard on a server without a counting store: refused by the
    server, not by the bundle's checks, and still reported refused by every next poll (304)."""
    server, metrics = serve_bundle(
        start, env, "guards.tar.gz", bundle(GIVEN, keys.private, "guards.tar.gz"), keys.public
    )
    serving = status(server).policies.revision
    guarded = bundle(
        GIVEN_AND_FAMILY + "\n" + sms_guard("countries: {allow: [GB]}"),
        keys.private,
        "guards.tar.gz",
    )
    upload(env, "guards.tar.gz", guarded)
    wait_for(lambda: "counting store" in status(server).policies.last_error, "the refusal", 30)

    stays_refused(server, metrics, serving, "counting store")


def test_a_candidate_not_in_s3_yet_does_not_stop_the_server(
    env: S3,
    keys: Keys,
    bundle: Callable[..., bytes],
    start: Callable[..., RunningServer],
    tmp_path: Path,
) -> None:
    server = start(
        policies=str(policy_folder(tmp_path / "serving", GIVEN)),
        candidate_policies=url("next.tar.gz"),
        bundle_public_key=str(keys.public),
    )
    assert decide(server, "given_name").allowed
    found = status(server).candidate
    assert "NoSuchKey (HTTP 404)" in found.source_error
    assert found.revision == ""
    upload(env, "next.tar.gz", bundle(GIVEN_AND_FAMILY, keys.private, "next.tar.gz"))
    wait_for(lambda: status(server).candidate.revision != "", "the candidate to load", 30)
    assert decide(server, "family_name").candidate.allowed
    assert not decide(server, "family_name").allowed  # the candidate never decides


def test_a_bundle_signed_for_another_target_is_refused_unless_the_server_takes_that_target(
    env: S3, keys: Keys, bundle: Callable[..., bytes], start: Callable[..., RunningServer]
) -> None:
    """Signed by the trusted key for another place (staging's object): the server, expecting
    its own s3:// URL, refuses it and keeps serving; one given --bundle-target for it serves it."""
    server, _ = serve_bundle(
        start, env, "prod.tar.gz", bundle(GIVEN, keys.private, "prod.tar.gz"), keys.public
    )
    serving = status(server).policies.revision
    staging = bundle(GIVEN_AND_FAMILY, keys.private, "staging.tar.gz")
    upload(env, "prod.tar.gz", staging)
    why = f'signed for target "{url("staging.tar.gz")}", not for "{url("prod.tar.gz")}"'
    wait_for(lambda: why in status(server).policies.last_error, "the refusal", 30)
    assert status(server).policies.revision == serving
    assert not decide(server, "family_name").allowed

    taking = start(
        policies=url("prod.tar.gz"),
        bundle_public_key=str(keys.public),
        bundle_target=url("staging.tar.gz"),
    )
    assert decide(taking, "family_name").allowed


def test_a_rollback_is_refused_while_the_newer_set_keeps_serving(
    env: S3, keys: Keys, bundle: Callable[..., bytes], start: Callable[..., RunningServer]
) -> None:
    """Anyone who can write to the bucket puts back an older bundle signed by the trusted key:
    refused (and stays refused while it is there), the newer set serving on; a bundle signed
    later then serves. A restart has no history: it takes any validly signed bundle."""
    at, t1, t2, t3 = "roll.tar.gz", 1_700_000_000, 1_700_000_100, 1_700_000_200
    older = bundle(GIVEN, keys.private, at, t1)
    server, metrics = serve_bundle(
        start, env, at, bundle(GIVEN_AND_FAMILY, keys.private, at, t2), keys.public
    )
    serving = status(server).policies.revision
    upload(env, at, older)
    why = (
        "signed at 2023-11-14T22:13:20Z, older than the serving bundle signed at "
        "2023-11-14T22:15:00Z: a rollback?"
    )
    wait_for(lambda: why in status(server).policies.last_error, "the rollback refused", 30)

    stays_refused(server, metrics, serving, why)
    assert decide(server, "family_name").allowed

    # Signed the same second as the serving bundle, over other files: refused too.
    upload(env, at, bundle(GIVEN, keys.private, at, t2))
    wait_for(
        lambda: "the same second as the serving bundle" in status(server).policies.last_error,
        "the same-second bundle refused",
        30,
    )
    assert decide(server, "family_name").allowed

    upload(env, at, bundle(GIVEN, keys.private, at, t3))
    wait_for(lambda: not decide(server, "family_name").allowed, "the newer bundle to serve", 30)
    assert status(server).policies.last_result in ("loaded", "unchanged")

    upload(env, at, older)
    restarted = start(policies=url(at), bundle_public_key=str(keys.public))
    assert decide(restarted, "given_name").allowed
    assert status(restarted).policies.revision == status(server).policies.revision
