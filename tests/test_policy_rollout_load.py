"""The reload load test of issue 10: a real `attrgate serve` watching a ConfigMap-like folder that
is swapped 100 times while clients keep asking it: valid and invalid revisions, a file truncated
and then completed in place, the folder deleted and re-created. Every answer must be what the
revision it names says; no invalid revision may answer; every valid swap serves within a bound
(the p50/p99 are printed; the p99 must be within the issue's 2 s)."""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

from support.cognito_stub import CognitoStub
from support.configmap import ConfigMapVolume, revision_of
from support.moto_cognito import free_port
from support.probe import allowing, broken, check, denying, trap, trap_head
from support.prometheus import metrics_text, samples_of, total
from support.served import start_serve, stop_serve, wait_serving
from support.waiting import wait_for

SWAPS = 100
CLIENTS = 4
DEBOUNCE = 0.3  # --policy-debounce: keeps the 100 swaps within about a minute
BOUND = 10.0  # seconds a swap may take on a loaded machine before the test fails
GOAL = 2.0  # the issue's: every valid swap serves within it (printed against the p99)
TRUNCATED_PAUSE = 0.12  # the half stands past a batch of events (50 ms), inside the debounce

# One in ten swaps is invalid, one in twenty a file truncated then completed in place, one in
# twenty-five the folder deleted and re-created; the rest are valid ConfigMap swaps.
BROKEN, TRUNCATED, RECREATED = 10, 20, 25


class Load:
    """CLIENTS threads asking the probe in a loop, each on its own channel: every answer
    counted by (revision, allowed), failures by status code, and when each revision first
    answered."""

    def __init__(self, target: str) -> None:
        self.answers: Counter[tuple[str, bool]] = Counter()
        self.failures: Counter[str] = Counter()
        self.first: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(target,), daemon=True) for _ in range(CLIENTS)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, target: str) -> None:
        with grpc.insecure_channel(target) as channel:
            while not self._stop.is_set():
                try:
                    answer = check(channel)
                except grpc.RpcError as error:
                    with self._lock:
                        self.failures[str(error.code())] += 1
                    continue
                now = time.monotonic()
                with self._lock:
                    self.answers[answer] += 1
                    self.first.setdefault(answer[0], now)

    def served(self, revision: str) -> float:
        """time.monotonic() of the first answer naming `revision`, waited for up to BOUND."""
        wait_for(lambda: revision in self.first, f"revision {revision} to answer", BOUND)
        return self.first[revision]

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)


def rejected(metrics_port: int) -> float:
    samples = samples_of(metrics_text(metrics_port)).get("attrgate_policy_reloads_total", [])
    return total(samples, result="rejected", set="serving")


def test_a_configmap_swapped_100_times_under_load_serves_each_valid_revision_and_no_other(
    stub: CognitoStub, tmp_path: Path
) -> None:
    volume = ConfigMapVolume(tmp_path / "policies")
    scratch = tmp_path / "scratch"
    expected: dict[str, bool] = {}  # revision -> whether it allows the probe

    def valid(serial: int) -> dict[str, str]:
        allows = serial % 2 == 1  # alternate, so a stale answer shows as a wrong decision too
        files = {"p.yaml": (allowing if allows else denying)(f"swap {serial}")}
        expected[revision_of(files, scratch)] = allows
        return files

    volume.publish(valid(0))
    port, metrics_port = free_port(), free_port()
    process = start_serve(
        volume.root,
        port,
        *("--cognito-endpoint", stub.endpoint, "--policy-debounce", str(DEBOUNCE)),
        *("--metrics-listen", f"127.0.0.1:{metrics_port}"),
        output=tmp_path,
        watch=True,
    )
    err = tmp_path / "err"
    latencies: list[float] = []  # from the `..data` rename to the first answer naming it
    in_place: list[float] = []  # from the completing write to the first answer naming it
    inconclusive = 0  # truncations whose half stood past the debounce (then it may serve)
    absent = 0  # re-creations whose folder stood missing past the debounce (then it is rejected)
    kinds: Counter[str] = Counter()
    started = time.monotonic()
    try:
        assert wait_serving(f"127.0.0.1:{port}", process), err.read_text()
        load = Load(f"127.0.0.1:{port}")
        try:
            for serial in range(1, SWAPS + 1):
                if serial % BROKEN == 0:
                    kinds["broken"] += 1
                    before = rejected(metrics_port)
                    volume.publish({"p.yaml": broken(f"swap {serial}")})
                    wait_for(lambda b=before: rejected(metrics_port) > b, "a rejection", BOUND)
                elif serial % TRUNCATED == 5:
                    kinds["truncated"] += 1
                    marker = f"swap {serial}"
                    whole = {"p.yaml": trap(marker)}
                    expected[revision_of(whole, scratch)] = False
                    live = volume.current()
                    assert live is not None
                    with (live / "p.yaml").open("w") as writer:  # truncates the served file
                        writer.write(trap_head(marker))
                        writer.flush()
                        cut = time.monotonic()
                        time.sleep(TRUNCATED_PAUSE)  # the writer's pause: what is tested
                        writer.write(trap(marker)[len(trap_head(marker)) :])
                    done = time.monotonic()
                    if done - cut >= DEBOUNCE:
                        inconclusive += 1
                        expected[revision_of({"p.yaml": trap_head(marker)}, scratch)] = True
                    in_place.append(load.served(revision_of(whole, scratch)) - done)
                elif serial % RECREATED == 12:
                    kinds["recreated"] += 1
                    deleted = time.monotonic()
                    volume.delete()
                    files = valid(serial)
                    swapped = volume.publish(files)
                    if swapped - deleted >= DEBOUNCE:
                        # A busy machine held the test between the deletion and the new ..data
                        # past the debounce: the server rightly rejected the empty folder.
                        absent += 1
                    latencies.append(load.served(revision_of(files, scratch)) - swapped)
                else:
                    kinds["valid"] += 1
                    files = valid(serial)
                    swapped = volume.publish(files)
                    latencies.append(load.served(revision_of(files, scratch)) - swapped)
        finally:
            load.stop()
    finally:
        assert stop_serve(process, BOUND) == 0
    took = time.monotonic() - started

    wrong = {
        answer: n for answer, n in load.answers.items() if expected.get(answer[0]) != answer[1]
    }
    calls = sum(load.answers.values())
    ordered = sorted(latencies)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)]
    print(
        f"\n{SWAPS} swaps ({dict(kinds)}) in {took:.1f}s under {CLIENTS} clients, "
        f"{calls} calls ({calls / took:.0f}/s), {sum(load.failures.values())} failed; "
        f"swap to serving: p50 {p50:.2f}s, p99 {p99:.2f}s, max {ordered[-1]:.2f}s "
        f"(goal: every one within {GOAL:g}s, debounce {DEBOUNCE:g}s); "
        f"in-place rewrite to serving: max {max(in_place):.2f}s; "
        f"truncations inconclusive (half stood past the debounce): {inconclusive}; "
        f"folders missing past the debounce: {absent}"
    )
    assert not load.failures, load.failures
    assert not wrong, f"answers no valid revision gives (an invalid or half set served): {wrong}"
    # The goal, asserted on the p99 (the debounce takes 0.3 s of the 2 s); one swap
    # stalled by a busy machine may take longer, up to BOUND (served() fails past it).
    assert p99 < GOAL, f"p99 {p99:.2f}s from a ConfigMap swap to serving, over {GOAL:g}s"
    assert all(kinds[kind] for kind in ("broken", "truncated", "recreated")), kinds
    said = err.read_text()
    rejections = said.count("reload rejected")
    assert kinds["broken"] <= rejections <= kinds["broken"] + absent, (
        f"{rejections} rejections logged for {kinds['broken']} broken swaps and {absent} "
        "folders missing past the debounce: one logged more than once, or a valid set rejected"
    )
    assert "Traceback" not in said
