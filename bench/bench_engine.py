"""Decision cost: attrgate's compiled, indexed engine vs a baseline that scans every policy.

Prints microseconds per decision for both, side by side, and their ratio; then what a candidate
set (serve --candidate-policies) adds to a decision, through the server's own pipeline, on the
allowed and the denied path. Run with `make bench`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from attrgate.domain import Attribute, Caller, UpdateRequest
from attrgate.offline import offline_pipeline
from attrgate.policy.compile import PolicySet, compile_policy_set
from attrgate.policy.engine import attribute_findings, evaluate
from attrgate.policy.globs import compile_glob
from attrgate.policy.load import load_policy_set
from attrgate.policy.model import AttributePolicy

REPO = Path(__file__).resolve().parent.parent
UNRELATED = 10_000
REQUEST = UpdateRequest(
    "us-east-1_Bench1",
    "ada",
    (Attribute("given_name", "Ada"), Attribute("custom:tier", "pro"), Attribute("email", "a@b.co")),
    {"source": "bench"},
)
CALLER = "profile-api"


def build_set() -> tuple[PolicySet, list[AttributePolicy]]:
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        for path in (REPO / "policies").glob("*.yaml"):
            (folder / path.name).write_text(path.read_text())
        documents = [
            f"apiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {{name: other-{i}}}\n"
            f"spec:\n  callers: ['team-{i}-*', 'spiffe://example.org/ns/t{i}/sa/api']\n"
            "  userPools: ['eu-west-1_*']\n  allow: [{attribute: given_name}]\n"
            for i in range(UNRELATED)
        ]
        (folder / "unrelated.yaml").write_text("---\n".join(documents))
        result = load_policy_set(folder, max_bytes=16 << 20)
        assert result.ok, result.errors[:3]
    models = [p.document for p in result.policies if isinstance(p.document, AttributePolicy)]
    return compile_policy_set(result.policies, result.revision), models


def baseline(policy_set: PolicySet, models: list[AttributePolicy]) -> Callable[[], bool]:
    """What a naive engine does: test every policy's caller and pool globs on every request."""
    compiled = [
        (
            [compile_glob(c) for c in m.spec.callers],
            [compile_glob(p) for p in m.spec.user_pools],
            policy,
        )
        for m, policy in zip(models, policy_set.policies, strict=True)
    ]

    def decide() -> bool:
        applicable = [
            policy
            for callers, pools, policy in compiled
            if any(c(CALLER) for c in callers) and any(p(REQUEST.user_pool_id) for p in pools)
        ]
        enforce = [p for p in applicable if p.enforce]
        return all(not attribute_findings(enforce, a) for a in REQUEST.attributes)

    return decide


def per_call_us(function: Callable[[], object], budget: float = 1.0) -> float:
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < budget:
        for _ in range(10):
            function()
        calls += 10
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    policy_set, models = build_set()
    naive = baseline(policy_set, models)
    assert naive() == evaluate(policy_set, CALLER, REQUEST).allowed
    ours = per_call_us(lambda: evaluate(policy_set, CALLER, REQUEST))
    cold = per_call_us(lambda: policy_set.lookup(CALLER, REQUEST.user_pool_id))
    scan = per_call_us(naive)
    print(f"policy set: {len(policy_set.policies)} policies ({UNRELATED} unrelated to the caller)")
    print(f"{'':34}{'attrgate':>12}{'baseline scan':>16}{'ratio':>9}")
    print(f"{'decision, 3 attributes (us)':34}{ours:12.1f}{scan:16.1f}{scan / ours:8.0f}x")
    print(f"{'applicable-policy lookup, uncached':34}{cold:12.1f}")
    candidate_cost(policy_set, build_set()[0])


def candidate_cost(serving: PolicySet, candidate: PolicySet) -> None:
    """Pipeline.check (validation, engine, the comparison; pool stage skipped) per decision,
    with and without a candidate set beside the serving one."""
    pipeline = offline_pipeline(serving)
    caller = Caller(CALLER, "bench")
    denied = UpdateRequest(REQUEST.user_pool_id, "ada", (Attribute("custom:role", "admin"),))

    async def per_check_us(request: UpdateRequest, rounds: int = 5_000) -> float:
        for _ in range(rounds // 10):
            await pipeline.check(caller, request)
        start = time.perf_counter()
        for _ in range(rounds):
            await pipeline.check(caller, request)
        return (time.perf_counter() - start) / rounds * 1e6

    async def measure() -> list[tuple[str, float, float]]:
        rows = []
        for name, request in (("allowed", REQUEST), ("denied", denied)):
            # Alternated, the best of seven each: one run is at the mercy of the machine.
            runs: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(7):
                for beside in (False, True):
                    pipeline.candidate = candidate if beside else None
                    runs[beside].append(await per_check_us(request))
            rows.append((name, min(runs[False]), min(runs[True])))
        return rows

    print(f"{'pipeline decision (us)':34}{'no candidate':>14}{'candidate':>12}{'added':>9}")
    for name, alone, beside in asyncio.run(measure()):
        print(f"{'  ' + name:34}{alone:14.1f}{beside:12.1f}{beside - alone:9.1f}")


if __name__ == "__main__":
    main()
