"""The performance benchmark's harness (bench/bench_perf.py), run briefly so it cannot rot: the
Cognito stub, the load drivers and both references against a real `attrgate serve` process.
Only that the figures are there and sane; no timing is judged (the machine may be busy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_bench_perf_measures_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "perf.json"
    run = subprocess.run(
        [
            *(sys.executable, str(REPO / "bench" / "bench_perf.py")),
            *("--rows", "allowed,denied,workers", "--warmup", "0.3", "--seconds", "1"),
            *("--json", str(out), "--logs", str(tmp_path / "logs")),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(out.read_text())
    measurements = result["measurements"]
    assert set(measurements) == {
        *("boto3", "bare_forward", "bare_allowed", "bare_denied", "allowed", "denied"),
        "workers2_denied",
    }
    for name, m in measurements.items():
        assert sum(m["codes"].values()) > 0, name
        assert m["codes"].get(m["expected"], 0) > 0, (name, m["codes"])
        assert m["cpu_ms_per_call"] > 0, name
        assert m["p50_ms"] is not None, name
        assert m["p99_ms"] >= m["p50_ms"], name
    assert measurements["denied"]["expected"] == "PERMISSION_DENIED"
    # Allowed requests went through to the stub, the zero-logic proxy's too; denied ones never did.
    assert measurements["allowed"]["stub_calls"]["AdminUpdateUserAttributes"] > 0
    assert measurements["bare_forward"]["stub_calls"]["AdminUpdateUserAttributes"] > 0
    assert measurements["denied"]["stub_calls"].get("AdminUpdateUserAttributes", 0) == 0
    # The bare reference aborts with attrgate's own denial: trailers of about the same size.
    ours, bare = (
        measurements["denied"]["trailer_bytes"],
        measurements["bare_denied"]["trailer_bytes"],
    )
    assert ours, "attrgate's denial carried no trailers"
    assert bare, "the bare reference's denial carried no trailers"
    assert 0.8 < bare / ours < 1.25, (ours, bare)
    verdicts = {row["scenario"]: row for row in result["rows"]}
    assert verdicts["server CPU per allowed request"]["met"] in (True, False)
    assert verdicts["server CPU per denied request"]["met"] in (True, False)
    assert "attrgate's allowed request costs" in verdicts["(reference) zero-logic proxy"]["note"]
    # Each judged row names its limit from figures of the same run (printed with a miss).
    for scenario in (
        "server CPU per allowed request",
        "server CPU per denied request",
        "--workers 2 denied throughput",
        "start to SERVING",
    ):
        assert verdicts[scenario]["limit"], scenario
    assert "decision" in verdicts["server CPU per allowed request"]["limit"]
    assert "calls/s" in verdicts["--workers 2 denied throughput"]["limit"]
    assert result["start_to_serving_seconds"]["1 worker"] > 0
    # --workers 2 is measured on its own workers (the parent first), each of which took calls.
    two = measurements["workers2_denied"]
    assert len(two["worker_cpu"]) == 3, two["worker_cpu"]
    assert all(cpu > 0 for cpu in two["worker_cpu"][1:]), two["worker_cpu"]
    assert len(result["worker_cpu_shares"]) == 2
    assert result["peak_rss_mib"]["1 worker"] > 0
    assert "server CPU per allowed request" in run.stdout
