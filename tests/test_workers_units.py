"""`serve --workers` in parts, without processes: the merged /metrics, the quota's local share
per worker, the ports the parent holds for its workers."""

from __future__ import annotations

import asyncio
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from prometheus_client.exposition import generate_latest

from attrgate.config import ConfigError
from attrgate.metrics import EMPTY_POLICY_SET, Metrics
from attrgate.policy.compile import PolicySet, load_and_compile
from attrgate.quota.compiled import CompiledQuota
from attrgate.quota.leases import LOCAL, LeaseKeeper
from attrgate.workers.aggregate import GAUGES, merge
from attrgate.workers.ports import hold
from support.prometheus import samples_of, total
from support.redis_server import free_port

QUOTA = """apiVersion: attrgate/v1
kind: CognitoQuota
metadata: {name: q}
spec:
  rate: 24
  shares:
    - {name: noisy, callers: [noisy]}
"""


def compiled(tmp_path: Path) -> PolicySet:
    """A set of one document, a CognitoQuota."""
    (tmp_path / "q.yaml").write_text(QUOTA)
    result, policy_set = load_and_compile(tmp_path / "q.yaml")
    assert policy_set is not None, result.errors
    return policy_set


# --- the merged /metrics ------------------------------------------------------------------------


class Quota:
    """The governor as the gauges see it (QuotaView)."""

    modes = ("fleet", "emergency", "local")

    def __init__(self, mode: str, factor: float, rate: float) -> None:
        self.mode, self._factor, self._rate = mode, factor, rate

    def factor(self) -> float:
        return self._factor

    def configured_rate(self) -> float | None:
        return 24.0

    def snapshot(self) -> list[tuple[str, float, float, int]]:
        return [("noisy", self._rate, 3.0, 2)]


def exposition(
    requests: int,
    store_up: bool,
    mode: str,
    factor: float,
    policy_set: PolicySet = EMPTY_POLICY_SET,
) -> str:
    """A worker's /metrics as its Metrics object renders it."""
    metrics = Metrics()
    try:
        for i in range(requests):
            metrics.observe(
                {"method": "M", "caller": "", "outcome": "allowed", "latency_ms": i, "status": "OK"}
            )
        metrics.in_flight(1, "M")
        metrics.watch_policy_set(lambda: policy_set)
        metrics.watch_shadow(False)
        metrics.watch_sms_store(lambda: store_up, ["timeout"])
        metrics.watch_quota(Quota(mode, factor, 12.0), ["granted"], ["timeout"])
        return generate_latest(metrics.registry).decode()
    finally:
        metrics.close()


def test_counters_and_histograms_add_up_and_states_do_not(tmp_path: Path) -> None:
    serving = compiled(tmp_path)
    one = exposition(3, store_up=True, mode="local", factor=1.0, policy_set=serving)
    two = exposition(5, store_up=False, mode="local", factor=0.5, policy_set=serving)
    merged = samples_of(merge([one, two]).decode())
    assert total(merged["attrgate_requests_total"], outcome="allowed") == 8
    assert total(merged["attrgate_request_duration_seconds_count"]) == 8
    buckets = {labels["le"]: v for labels, v in merged["attrgate_request_duration_seconds_bucket"]}
    assert buckets["+Inf"] == 8
    assert total(merged["attrgate_in_flight_requests"]) == 2  # quantities: summed
    assert total(merged["attrgate_quota_rate"], share="noisy") == 24
    assert total(merged["attrgate_sms_store_up"]) == 0  # one worker's store fails: down
    assert total(merged["attrgate_quota_adaptive_factor"]) == 0.5  # the most lowered
    assert total(merged["attrgate_quota_mode"], mode="local") == 1  # a state: not 2
    assert total(merged["attrgate_quota_configured_rate"]) == 24
    assert total(merged["attrgate_shadow_mode"]) == 0
    assert [(labels["revision"], v) for labels, v in merged["attrgate_policy_set"]] == [
        (serving.revision, 1)  # its document count, not twice
    ]
    assert len(merged["target_info"]) == 1  # each worker has an instance id: the first's


def test_one_exposition_merged_is_itself() -> None:
    text = exposition(2, store_up=True, mode="fleet", factor=1.0)
    assert samples_of(merge([text]).decode()) == samples_of(text)


def test_a_series_is_its_labels_whatever_their_values_hold() -> None:
    """Merged on the text up to the value: label values with spaces, braces, quotes and
    backslashes (a policy's name may hold them) stay one series."""
    odd = 'a b} "c" \\ {d} 1.0'
    metrics = Metrics()
    try:
        for reason in (odd, "plain"):
            metrics.observe({"method": "M", "caller": "", "outcome": "denied", "reason": reason})
        text = generate_latest(metrics.registry).decode()
    finally:
        metrics.close()
    merged = samples_of(merge([text, text, text]).decode())
    assert total(merged["attrgate_requests_total"], reason=odd) == 3
    assert total(merged["attrgate_requests_total"], reason="plain") == 3


def test_every_gauge_attrgate_exports_says_how_it_merges() -> None:
    """A new gauge must be added to GAUGES (a quantity is summed, a state is not); the gauges
    of a worker that has served are in the served test (test_workers.py)."""
    text = exposition(1, store_up=True, mode="local", factor=1.0)
    gauges = {line.split()[2] for line in text.splitlines() if line.endswith(" gauge")}
    assert gauges - set(GAUGES) == set()


# --- the quota's local share --------------------------------------------------------------------


def compiled_quota(tmp_path: Path) -> CompiledQuota:
    quota = compiled(tmp_path).quota
    assert quota is not None
    return quota


@pytest.mark.parametrize(
    ("replicas", "workers", "divisor"), [(None, 1, 1), (None, 2, 2), (3, 2, 6), (3, 1, 3)]
)
def test_without_redis_each_worker_sends_its_part_of_the_rate(
    tmp_path: Path, replicas: int | None, workers: int, divisor: int
) -> None:
    quota = compiled_quota(tmp_path)
    keeper = LeaseKeeper(None, replicas, workers=workers)
    leases = asyncio.run(keeper.renew(quota, [0.0, 0.0]))
    assert leases.mode == LOCAL
    assert sum(leases.rates) == pytest.approx(24 / divisor)
    assert keeper.expected_replicas == divisor


def test_a_fleet_expects_at_least_the_workers_of_this_replica() -> None:
    # Before any exchange with the fleet store: no replica seen yet, but the workers are known.
    assert LeaseKeeper(None, None, workers=4).expected_replicas == 4


# --- the ports the parent holds -----------------------------------------------------------------


def test_an_ephemeral_port_is_chosen_once_and_held_for_the_workers_alone() -> None:
    held = hold("127.0.0.1:0")
    servers: list[grpc.Server] = []
    try:
        assert held.address == f"127.0.0.1:{held.port}"
        with socket.socket() as intruder, pytest.raises(OSError, match="in use"):
            intruder.bind(("127.0.0.1", held.port))  # nobody else, even between workers
        for _ in range(2):  # the workers join it, as gRPC binds with SO_REUSEPORT
            server = grpc.server(ThreadPoolExecutor(1), options=[("grpc.so_reuseport", 1)])
            assert server.add_insecure_port(held.address) == held.port
            server.start()
            servers.append(server)
        socket.create_connection(("127.0.0.1", held.port), timeout=5).close()
    finally:
        for server in servers:
            server.stop(0)
        held.close()


def test_a_port_someone_holds_is_refused_even_when_they_share_it() -> None:
    """A stale attrgate that set SO_REUSEPORT too (another --workers parent) would share it."""
    port = free_port()
    with socket.socket() as occupant:
        occupant.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        occupant.bind(("127.0.0.1", port))
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            hold(f"127.0.0.1:{port}")
