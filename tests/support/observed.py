"""A running `attrgate serve` (its own process) on the example policies, with /metrics, after
traffic that makes every metric family appear: an allowed and a denied update, an SMS-triggering
one (reserved, then given back: the Cognito endpoint is a closed port), a refused country, the
quota's tokens. For the tests of what dashboards and alert rules may name."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.moto_cognito import free_port
from support.prometheus import metrics_text
from support.served import start_serve, stop_serve, wait_serving
from support.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent.parent
POOL = "us-east-1_Observed"


@dataclass
class Observed:
    process: subprocess.Popen[bytes]
    target: str
    metrics_port: int
    policies: Path

    def scrape(self) -> str:
        return metrics_text(self.metrics_port)


def _update(target: str, *attributes: tuple[str, str]) -> None:
    with grpc.insecure_channel(target) as channel:
        request = pb.UpdateUserAttributesRequest(
            user_pool_id=POOL,
            username="ada",
            user_attributes=[pb.AttributeType(name=n, value=v) for n, v in attributes],
        )
        with contextlib.suppress(grpc.RpcError):  # denials and Cognito's absence: traffic too
            pb_grpc.UserAttributesStub(channel).UpdateUserAttributes(
                request, metadata=(("x-attrgate-caller", "profile-api"),), timeout=20
            )


@contextmanager
def observed_attrgate(folder: Path) -> Iterator[Observed]:
    policies = folder / "policies"
    policies.mkdir()
    for policy in (REPO / "policies").glob("*.yaml"):
        if "_test" not in policy.name:
            shutil.copy(policy, policies / policy.name)
    port, metrics_port = free_port(), free_port()
    (folder / "out").mkdir()
    process = start_serve(
        policies,
        port,
        *("--metrics-listen", f"127.0.0.1:{metrics_port}", "--state", str(folder / "state.sqlite")),
        output=folder / "out",
    )
    try:
        target = f"127.0.0.1:{port}"
        assert wait_serving(target, process), (folder / "out" / "err").read_text()
        _update(target, ("given_name", "Ada"))  # allowed (Cognito unreachable: an error)
        _update(target, ("custom:role", "admin"))  # denied
        _update(target, ("phone_number", "+14155550100"))  # SMS: reserved, then given back
        _update(target, ("phone_number", "+33612345678"))  # a country the guard refuses
        observed = Observed(process, target, metrics_port, policies)
        assert wait_until(lambda: "attrgate_sms_budget_released_micros_total" in observed.scrape())
        yield observed
    finally:
        stop_serve(process)


def metric_names(text: str) -> set[str]:
    """The families of a /metrics text, histograms by their _bucket, _sum and _count too."""
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names
