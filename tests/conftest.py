from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Nothing may probe the instance-metadata endpoint that does not exist here.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.pop("AWS_PROFILE", None)
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
# `attrgate serve` processes the tests start stop at once on SIGTERM (tests of the drain itself
# pass --drain-delay).
os.environ["ATTRGATE_DRAIN_DELAY"] = "0"

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support.attrgate_server import RunningServer, settings_for
from support.cognito_stub import CognitoStub
from support.moto_cognito import MotoCognito
from support.redis_server import MISSING, RedisClusterServers, RedisServer, redis_server_path

REPO = Path(__file__).resolve().parent.parent

# Spans of in-process servers land here (a process has one global tracer provider).
SPANS = InMemorySpanExporter()
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(SPANS))
trace.set_tracer_provider(_provider)


@pytest.fixture
def spans() -> InMemorySpanExporter:
    SPANS.clear()
    return SPANS


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoCognito]:
    server = MotoCognito()
    # attrgate's own credentials: the least-privileged IAM user, from the standard chain.
    os.environ["AWS_ACCESS_KEY_ID"] = server.attrgate_keys.access_key_id
    os.environ["AWS_SECRET_ACCESS_KEY"] = server.attrgate_keys.secret_access_key
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on loopback. Where it is not installed the tests that need it FAIL:
    a suite that skips them passes without ever checking the fleet's store."""
    if redis_server_path() is None:
        pytest.fail(MISSING)
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to pause (SIGSTOP) or stop without disturbing others;
    stopped after (resumed first)."""
    if redis_server_path() is None:
        pytest.fail(MISSING)
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A real three-node Redis Cluster. Without redis-server: FAIL, as above. Skipped, saying
    why, only when the installed servers cannot form a cluster on this machine."""
    if redis_server_path() is None:
        pytest.fail(MISSING)
    try:
        cluster = RedisClusterServers()
    except RuntimeError as exc:
        pytest.skip(f"a Redis Cluster cannot form on this machine: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pool(moto: MotoCognito) -> str:
    """A fresh user pool (id us-east-1_...) with the user `ada`."""
    pool_id = moto.create_pool()
    moto.create_user(pool_id, "ada", email="ada@example.com", given_name="Ada")
    return pool_id


@pytest.fixture
def stub() -> Iterator[CognitoStub]:
    server = CognitoStub(backlog=1024)  # bursts of new connections are not dropped
    yield server
    server.stop()


@pytest.fixture
def stub_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "stub-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "stub-secret")


@pytest.fixture
def write_policies(tmp_path: Path) -> Callable[[str], Path]:
    def write(text: str, name: str = "policies.yaml") -> Path:
        path = tmp_path / "policies" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path.parent

    return write


@pytest.fixture
def serve(write_policies: Callable[[str], Path]) -> Iterator[Callable[..., RunningServer]]:
    """Start attrgate with the given policy YAML against `endpoint` (moto or the stub)."""
    started: list[RunningServer] = []

    def start(policies: str, endpoint: str, **overrides: Any) -> RunningServer:
        path = write_policies(policies)
        server = RunningServer(
            settings_for(policies=str(path), cognito_endpoint=endpoint, **overrides)
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
