"""Caller identity on the mTLS listener, with certificates made here with `cryptography`.

CheckUpdateUserAttributes never forwards, so the caller attrgate identified shows in the decision:
every identity a test can present has its own policy, and `matched_policies` names which one
applied.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from cryptography import x509

from attrgate.config import Settings
from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.attrgate_server import RunningServer, settings_for
from support.cognito_stub import CognitoStub
from support.pki import Issued, dns, issue, make_ca, uri
from support.rpc import as_caller, request, rich
from support.waiting import wait_until

POOL = "us-east-1_mtlsPool"
SPIFFE_FIRST = "spiffe://example.org/ns/prod/sa/first"
SPIFFE_SECOND = "spiffe://example.org/ns/prod/sa/second"
SPIFFE_UNPRIVILEGED = "spiffe://example.org/ns/prod/sa/unprivileged"
PRIVILEGED = "verification-admin"

# One policy per identity a certificate (or the header) can carry; the policy names say which.
POLICIES = f"""
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {{name: spiffe-first}}
spec:
  callers: ["{SPIFFE_FIRST}"]
  userPools: ["*"]
  allow: [{{attribute: given_name}}]
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {{name: spiffe-second}}
spec:
  callers: ["{SPIFFE_SECOND}"]
  userPools: ["*"]
  allow: [{{attribute: given_name}}]
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {{name: https-uri}}
spec:
  callers: ["https://example.org/*"]
  userPools: ["*"]
  allow: [{{attribute: given_name}}]
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {{name: dns-first}}
spec:
  callers: ["first.svc.example.org"]
  userPools: ["*"]
  allow: [{{attribute: given_name}}]
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {{name: dns-second}}
spec:
  callers: ["second.svc.example.org"]
  userPools: ["*"]
  allow: [{{attribute: given_name}}]
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {{name: common-name}}
spec:
  callers: ["cn-only-service"]
  userPools: ["*"]
  allow: [{{attribute: given_name}}]
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {{name: unprivileged}}
spec:
  callers: ["{SPIFFE_UNPRIVILEGED}"]
  userPools: ["*"]
  allow: [{{attribute: given_name}}]
---
apiVersion: attrgate/v1
kind: AttributePolicy
metadata: {{name: privileged}}
spec:
  callers: ["{PRIVILEGED}"]
  userPools: ["*"]
  allow:
    - attribute: given_name
    - attribute: email_verified
      enum: ["true"]
"""


@pytest.fixture(scope="module")
def ca() -> Issued:
    return make_ca("attrgate test CA")


@pytest.fixture(scope="module")
def pki_dir(ca: Issued, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    server = issue(
        ca,
        common_name="attrgate",
        sans=[dns("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        server=True,
    )
    (directory / "ca.pem").write_bytes(ca.cert_pem)
    (directory / "server.pem").write_bytes(server.cert_pem)
    (directory / "server.key").write_bytes(server.key_pem)
    return directory


def mtls_settings(folder: Path, policies: Path, endpoint: str) -> Settings:
    """An mTLS listener on the server.pem, server.key and ca.pem in `folder`."""
    return settings_for(
        insecure=False,
        tls_cert=str(folder / "server.pem"),
        tls_key=str(folder / "server.key"),
        client_ca=str(folder / "ca.pem"),
        policies=str(policies),
        cognito_endpoint=endpoint,
    )


@pytest.fixture(scope="module")
def mtls_server(pki_dir: Path) -> Iterator[RunningServer]:
    """One server for the module (starting one per test costs the Cognito stub's shutdown)."""
    policies = pki_dir / "policies"
    policies.mkdir()
    (policies / "identities.yaml").write_text(POLICIES)
    stub = CognitoStub()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "stub-key")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "stub-secret")
        server = RunningServer(mtls_settings(pki_dir, policies, stub.endpoint))
        try:
            yield server
        finally:
            server.stop(grace=0)
            stub.stop()
    # Decisions only: CheckUpdateUserAttributes may describe the pool, never forward an update.
    assert stub.calls() == []


def mtls_channel(server: RunningServer, ca: Issued, client: Issued | None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca.cert_pem,
        private_key=client.key_pem if client else None,
        certificate_chain=client.cert_pem if client else None,
    )
    return grpc.secure_channel(server.target, credentials)


def check_as(
    server: RunningServer,
    ca: Issued,
    client: Issued | None,
    metadata: tuple[tuple[str, str], ...] = (),
    **attributes: str,
) -> pb.Decision:
    with mtls_channel(server, ca, client) as channel:
        stub = pb_grpc.UserAttributesStub(channel)
        decision: pb.Decision = stub.CheckUpdateUserAttributes(
            request(POOL, **(attributes or {"given_name": "Ada"})), timeout=10, metadata=metadata
        )
        return decision


@pytest.mark.parametrize(
    ("common_name", "sans", "policy"),
    [
        pytest.param(
            "cn-only-service",
            [dns("first.svc.example.org"), uri(SPIFFE_FIRST)],
            "spiffe-first",
            id="spiffe-uri-beats-dns-and-cn",
        ),
        pytest.param(
            "cn-only-service",
            [
                uri("https://example.org/not-an-identity"),
                uri(SPIFFE_FIRST),
                uri(SPIFFE_SECOND),
            ],
            "spiffe-first",
            id="several-uris-first-spiffe-wins",
        ),
        pytest.param(
            "cn-only-service",
            [uri("https://example.org/not-an-identity"), dns("first.svc.example.org")],
            "dns-first",
            id="non-spiffe-uri-ignored-dns-used",
        ),
        pytest.param(
            "cn-only-service",
            [dns("first.svc.example.org"), dns("second.svc.example.org")],
            "dns-first",
            id="no-uri-first-dns",
        ),
        pytest.param("cn-only-service", None, "common-name", id="no-sans-subject-cn"),
    ],
)
def test_caller_is_read_from_the_client_certificate(
    mtls_server: RunningServer,
    ca: Issued,
    common_name: str,
    sans: list[x509.GeneralName] | None,
    policy: str,
) -> None:
    client = issue(ca, common_name=common_name, sans=sans)
    decision = check_as(mtls_server, ca, client)
    assert decision.allowed, decision
    assert list(decision.matched_policies) == [policy]
    assert decision.decision_id
    assert decision.policy_revision.startswith("sha256:")


def _grpc_peer_spiffe_id(pki_dir: Path, ca: Issued, client: Issued) -> list[bytes]:
    """What gRPC itself reports as peer_spiffe_id for `client` (a bare server, not attrgate)."""
    seen: list[list[bytes]] = []

    def echo(payload: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(list(context.auth_context().get("peer_spiffe_id", [])))
        return payload

    server = grpc.server(ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "probe.Probe", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    credentials = grpc.ssl_server_credentials(
        [((pki_dir / "server.key").read_bytes(), (pki_dir / "server.pem").read_bytes())],
        root_certificates=ca.cert_pem,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        channel_credentials = grpc.ssl_channel_credentials(
            ca.cert_pem, client.key_pem, client.cert_pem
        )
        with grpc.secure_channel(f"127.0.0.1:{port}", channel_credentials) as channel:
            assert channel.unary_unary("/probe.Probe/Echo")(b"x", timeout=10) == b"x"
    finally:
        server.stop(0)
    return seen[0]


def test_premise_grpc_drops_peer_spiffe_id_with_several_uri_sans(pki_dir: Path, ca: Issued) -> None:
    """Why attrgate parses the certificate: gRPC's peer_spiffe_id is gone in this case."""
    single = issue(ca, common_name=None, sans=[uri(SPIFFE_FIRST)])
    several = issue(
        ca,
        common_name=None,
        sans=[uri("https://example.org/x"), uri(SPIFFE_FIRST), uri(SPIFFE_SECOND)],
    )
    assert _grpc_peer_spiffe_id(pki_dir, ca, single) == [SPIFFE_FIRST.encode()]
    assert _grpc_peer_spiffe_id(pki_dir, ca, several) == []


def test_several_uri_sans_without_cn_identify_the_first_spiffe_one(
    mtls_server: RunningServer, ca: Issued
) -> None:
    client = issue(
        ca,
        common_name=None,
        sans=[uri("https://example.org/x"), uri(SPIFFE_SECOND), uri(SPIFFE_FIRST)],
    )
    decision = check_as(mtls_server, ca, client)
    assert list(decision.matched_policies) == ["spiffe-second"]


def test_header_is_ignored_on_the_mtls_listener(mtls_server: RunningServer, ca: Issued) -> None:
    client = issue(ca, common_name=None, sans=[uri(SPIFFE_UNPRIVILEGED)])
    decision = check_as(
        mtls_server,
        ca,
        client,
        as_caller(PRIVILEGED),
        given_name="Ada",
        email_verified="true",
    )
    assert list(decision.matched_policies) == ["unprivileged"]
    assert not decision.allowed
    assert [v.attribute for v in decision.violations] == ["email_verified"]


def test_header_is_ignored_even_when_the_cert_names_nobody(
    mtls_server: RunningServer, ca: Issued
) -> None:
    """A certificate without SANs or CN identifies no one; the header cannot fill the gap."""
    client = issue(ca, common_name=None, sans=None)
    with pytest.raises(grpc.RpcError) as raised:
        check_as(mtls_server, ca, client, as_caller(PRIVILEGED))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert rich(raised.value).code == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_certificate_identity_is_denied_not_mistaken(
    mtls_server: RunningServer, ca: Issued
) -> None:
    client = issue(ca, common_name=None, sans=[uri("spiffe://example.org/ns/prod/sa/stranger")])
    decision = check_as(mtls_server, ca, client)
    assert not decision.allowed
    assert list(decision.matched_policies) == []


def test_client_without_certificate_cannot_call(mtls_server: RunningServer, ca: Issued) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        check_as(mtls_server, ca, None, as_caller(PRIVILEGED))
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_from_another_ca_is_rejected(
    mtls_server: RunningServer, ca: Issued
) -> None:
    rogue_ca = make_ca("rogue CA")
    # Names an identity attrgate knows, but no trusted CA vouches for it.
    client = issue(rogue_ca, common_name=None, sans=[uri(SPIFFE_FIRST)])
    with pytest.raises(grpc.RpcError) as raised:
        check_as(mtls_server, ca, client)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # The same identity from the trusted CA passes: the CA made the difference.
    trusted = issue(ca, common_name=None, sans=[uri(SPIFFE_FIRST)])
    assert list(check_as(mtls_server, ca, trusted).matched_policies) == ["spiffe-first"]


def test_plaintext_client_cannot_call_the_mtls_listener(
    mtls_server: RunningServer,
) -> None:
    with mtls_server.channel() as channel:
        stub = pb_grpc.UserAttributesStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.CheckUpdateUserAttributes(
                request(POOL, given_name="Ada"), timeout=5, metadata=as_caller(PRIVILEGED)
            )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


def test_an_overlong_identity_is_refused_not_truncated(
    mtls_server: RunningServer, ca: Issued
) -> None:
    from attrgate.identity import CALLER_MAX

    long_id = SPIFFE_FIRST + "/" + "x" * CALLER_MAX
    client = issue(ca, common_name=None, sans=[uri(long_id)])
    with pytest.raises(grpc.RpcError) as caught:
        check_as(mtls_server, ca, client)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


# --- certificate rotation ----------------------------------------------------------------------


def _server_cert(ca: Issued) -> Issued:
    return issue(
        ca,
        common_name="attrgate",
        sans=[dns("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        server=True,
    )


def _install(folder: Path, name: str, data: bytes) -> None:
    """As cert-manager or a Secret volume does: the new file appears whole (rename)."""
    (folder / f".{name}.tmp").write_bytes(data)
    (folder / f".{name}.tmp").replace(folder / name)


def _fresh_channel(target: str, trusted: Issued, client: Issued) -> grpc.Channel:
    """A channel with a connection of its own (no subchannel shared with earlier channels)."""
    credentials = grpc.ssl_channel_credentials(trusted.cert_pem, client.key_pem, client.cert_pem)
    return grpc.secure_channel(target, credentials, options=[("grpc.use_local_subchannel_pool", 1)])


def _check(channel: grpc.Channel) -> pb.Decision:
    stub = pb_grpc.UserAttributesStub(channel)
    decision: pb.Decision = stub.CheckUpdateUserAttributes(
        request(POOL, given_name="Ada"), timeout=5
    )
    return decision


def test_certificates_rotate_under_load_without_dropping_connections(
    tmp_path: Path, stub: CognitoStub, stub_credentials: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The server certificate, its key and the client CA are replaced while a client calls over
    an established connection: that connection keeps working, new connections get the new
    certificate, and only clients of the new CA are let in. A half-written set keeps the
    current one serving (one log line); SIGHUP re-reads without waiting for a connection."""
    caplog.set_level(logging.INFO, logger="attrgate.tls")
    old_ca, new_ca = make_ca("old CA"), make_ca("new CA")
    old_server = _server_cert(old_ca)
    _install(tmp_path, "server.pem", old_server.cert_pem)
    _install(tmp_path, "server.key", old_server.key_pem)
    _install(tmp_path, "ca.pem", old_ca.cert_pem)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "identities.yaml").write_text(POLICIES)
    server = RunningServer(mtls_settings(tmp_path, policies, stub.endpoint))
    old_client = issue(old_ca, common_name=None, sans=[uri(SPIFFE_FIRST)])
    new_client = issue(new_ca, common_name=None, sans=[uri(SPIFFE_FIRST)])
    established = _fresh_channel(server.target, old_ca, old_client)
    calls, failures = [0], []
    done = threading.Event()

    def load() -> None:
        while not done.is_set():
            try:
                assert _check(established).allowed
                calls[0] += 1
            except Exception as exc:  # recorded, asserted below
                failures.append(exc)

    worker = threading.Thread(target=load)
    try:
        assert _check(established).allowed
        worker.start()
        assert wait_until(lambda: calls[0] >= 5)
        new_server = _server_cert(new_ca)
        _install(tmp_path, "ca.pem", new_ca.cert_pem)
        _install(tmp_path, "server.key", new_server.key_pem)
        _install(tmp_path, "server.pem", new_server.cert_pem)

        with _fresh_channel(server.target, new_ca, new_client) as channel:
            assert _check(channel).allowed, "the new CA's client or certificate was refused"
        for trusted, client in ((old_ca, new_client), (new_ca, old_client)):
            with _fresh_channel(server.target, trusted, client) as channel:
                with pytest.raises(grpc.RpcError) as refused:
                    _check(channel)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        before = calls[0]
        assert wait_until(lambda: calls[0] >= before + 5), "the established connection stalled"

        # A key that does not match the certificate: the new set keeps serving, one line.
        _install(tmp_path, "server.key", issue(new_ca, common_name="x", sans=None).key_pem)
        for _ in range(3):
            with _fresh_channel(server.target, new_ca, new_client) as channel:
                assert _check(channel).allowed
        refusals = [r for r in caplog.records if "TLS files not reloaded" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]
        assert "does not match" in refusals[0].getMessage()

        # The key is fixed; SIGHUP re-reads at once, before any new connection.
        _install(tmp_path, "server.key", new_server.key_pem)
        server.loop.call_soon_threadsafe(server.app.reopen_and_reload)
        assert wait_until(
            lambda: any("TLS files reloaded" in r.getMessage() for r in caplog.records[-5:])
        )
    finally:
        done.set()
        if worker.is_alive():
            worker.join(10)
        established.close()
        server.stop(grace=0)
    assert failures == [], failures[:3]
    assert calls[0] >= 10
