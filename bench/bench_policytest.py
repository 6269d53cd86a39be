"""`attrgate test` speed: 10,000 expanded cases against the example policies.

A generated suite (matrices of callers, pools and attributes: allowed and denied writes, with
and without a pool fixture, phone numbers through the SMS guard) beside the shipped ones. Prints
the whole command's time (load, expand, decide, compare, coverage, JSON report) and its
cases/s, the time to decide and compare alone, and beside them the baseline: the bare engine
(`evaluate`, no trace) on the same 10,000 requests. The target: the command under 2 s.
Run with `make bench`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from attrgate.cli import main
from attrgate.offline import decide as decide_offline
from attrgate.offline import offline_pipeline
from attrgate.policy.engine import evaluate
from attrgate.policy.loading import gc_paused
from attrgate.policytest.coverage import Coverage
from attrgate.policytest.run import run_suites
from attrgate.policytest.suites import load_workspace

REPO = Path(__file__).resolve().parent.parent
CASES = 10_000


def suite() -> str:
    """Four matrices of 2,500 cases each: 50 callers x 50 attribute maps."""
    callers = [f"profile-{i}" for i in range(50)]
    allowed = [
        f'{{given_name: "Ada {i}", "custom:tier": pro, "custom:handle": "ada_{i}"}}'
        for i in range(50)
    ]
    phones = [f'{{phone_number: "+1415555{i:04d}", given_name: "Ada"}}' for i in range(50)]
    denied = [f'{{"custom:role": "admin-{i}", given_name: "Ada"}}' for i in range(50)]
    cases = []
    for name, attributes, pool, expectation in (
        ("allowed writes", allowed, "us-east-1_Example1", "expect: allow\n      wouldDeny: []"),
        ("phone numbers", phones, "us-east-1_Example1", "expect: allow\n      sms: {country: US}"),
        ("denied writes", denied, "us-east-1_Example1", "expect: deny\n      deniedBy: policy"),
        ("other pools", allowed, "eu-west-1_Other1", "expect: deny"),
    ):
        cases.append(
            f"    - name: {name}\n      userPool: {pool}\n      matrix:\n"
            f"        caller: [{', '.join(callers)}]\n"
            f"        attributes: [{', '.join(attributes)}]\n      {expectation}\n"
        )
    return (
        "apiVersion: attrgate/v1\nkind: PolicyTest\nmetadata: {name: bench}\nspec:\n"
        "  pools:\n    us-east-1_Example1: {file: testdata/example-pool.json}\n"
        "    eu-west-1_Other1: {file: testdata/other-pool.yaml}\n"
        "  cases:\n" + "".join(cases)
    )


def best_of(runs: int, action: Callable[[], None]) -> float:
    """The best time of `runs`, each with the cyclic GC paused as the command pauses it (so the
    figures compare like with like)."""
    best = float("inf")
    for _ in range(runs):
        with gc_paused():
            began = time.perf_counter()
            action()
            best = min(best, time.perf_counter() - began)
    return best


def bench() -> None:
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory) / "policies"
        shutil.copytree(REPO / "policies", folder)
        (folder / "bench_test.yaml").write_text(suite())
        # A fixture describes one pool: the other pool gets an answer with its own Id.
        no_sms = (folder / "testdata" / "no-sms-pool.yaml").read_text()
        other = no_sms.replace("us-east-1_NoSms", "eu-west-1_Other1")
        (folder / "testdata" / "other-pool.yaml").write_text(other)
        workspace = load_workspace([str(folder)], None, 16 << 20)
        generated = next(s for s in workspace.suites if s.name == "bench")
        assert len(generated.cases) == CASES, len(generated.cases)
        selected = [(generated, generated.cases)]

        def command() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                code = main(["test", str(folder), "--filter", "bench", "--format", "json"])
            assert code == 0, code

        def decide() -> None:
            results = run_suites(workspace.policy_set, selected, Coverage(workspace.policies))
            assert all(c.status == "pass" for r in results for c in r.cases)

        policy_set = workspace.policy_set
        requests = [(c.caller, c.request) for c in generated.cases]

        pipeline = offline_pipeline(policy_set, generated.pools)

        def server() -> None:
            async def all_of_them() -> None:
                for caller, request in requests:
                    await decide_offline(pipeline, caller, request)

            asyncio.run(all_of_them())

        def engine() -> None:
            for caller, request in requests:
                evaluate(policy_set, caller, request)

        whole = best_of(3, command)
        run = best_of(3, decide)
        checks = best_of(3, server)
        bare = best_of(3, engine)
    rows = (
        ("the command (load, expand, decide, compare, coverage, JSON)", whole),
        ("deciding and comparing (trace, coverage)", run),
        ("the server's decision alone (Pipeline.check, no trace)", checks),
        ("baseline: the bare engine (evaluate, no trace)", bare),
    )
    print(f"attrgate test, {CASES:,} expanded cases against the example policies (best of 3):")
    for label, seconds in rows:
        print(f"  {label:<62} {seconds:5.2f} s  {CASES / seconds:>9,.0f} cases/s")
    print(
        f"  ratio to the bare engine: the command {whole / bare:.1f}x, deciding and comparing "
        f"{run / bare:.1f}x, the server's decision {checks / bare:.1f}x "
        f"(target: the command under 2 s: {'met' if whole < 2 else 'NOT met'})"
    )


if __name__ == "__main__":
    bench()
