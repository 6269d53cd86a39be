"""Reload on change (serve --policy-watch, the default for a local path): a ConfigMap swap
serves within a bound, an invalid revision never serves and is logged once, a half-written file
never activates, the folder may be deleted, re-created or replaced, a single file is followed
when rewritten or renamed into place, --no-policy-watch reloads on SIGHUP only, the watcher
ends with the server, and its watches never leave the policy folder."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from attrgate.policy.loading import load_policies
from attrgate.rollout.status import SIGHUP, WATCH
from support.attrgate_server import RunningServer, settings_for
from support.cognito_stub import CognitoStub
from support.configmap import ConfigMapVolume, revision_of
from support.moto_cognito import free_port
from support.probe import allowing, broken, check, denying, trap, trap_head
from support.prometheus import metrics_text, samples_of, total
from support.served import start_serve, stop_serve, wait_serving
from support.waiting import wait_for

BOUND = 10.0  # seconds a change may take to serve on a loaded machine (they take well under 1)
DEBOUNCE = 0.2


@pytest.fixture
def watching(stub: CognitoStub, stub_credentials: None) -> Iterator[Callable[..., RunningServer]]:
    """An in-process server watching `path`, with /metrics on a port of its own."""
    started: list[RunningServer] = []

    def start(path: Path, **overrides: Any) -> RunningServer:
        settings = {"policy_watch": True, "policy_debounce": DEBOUNCE} | overrides
        server = RunningServer(
            settings_for(
                policies=str(path),
                cognito_endpoint=stub.endpoint,
                metrics_listen=f"127.0.0.1:{free_port()}",
                **settings,
            )
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def probe(server: RunningServer) -> tuple[str, bool]:
    with server.channel() as channel:
        return check(channel)


def reloads(server: RunningServer, result: str) -> float:
    port = int(server.settings.metrics_listen.rpartition(":")[2])
    samples = samples_of(metrics_text(port)).get("attrgate_policy_reloads_total", [])
    return total(samples, result=result, set="serving")


def serves(server: RunningServer, revision: str, seconds: float = BOUND) -> None:
    wait_for(lambda: probe(server)[0] == revision, f"revision {revision} to serve", seconds)


class Answers:
    """Every answer of the probe, asked in a loop from a thread while a test changes files."""

    def __init__(self, server: RunningServer) -> None:
        self.seen: set[tuple[str, bool]] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(server,), daemon=True)
        self._thread.start()

    def _run(self, server: RunningServer) -> None:
        with server.channel() as channel:
            while not self._stop.is_set():
                self.seen.add(check(channel))

    def stop(self) -> set[tuple[str, bool]]:
        self._stop.set()
        self._thread.join(30)
        return self.seen


def test_a_configmap_swap_serves_within_a_bound_and_a_broken_one_never(
    watching: Callable[..., RunningServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    volume = ConfigMapVolume(tmp_path / "policies")
    volume.publish({"p.yaml": denying("first")})
    server = watching(volume.root)
    assert server.app.rollout is not None
    assert server.app.rollout.status.follows == WATCH
    first = server.app.policy_revision
    assert probe(server) == (first, False)
    answers = Answers(server)

    second = {"p.yaml": allowing("second")}
    swapped = volume.publish(second)
    serves(server, revision_of(second, tmp_path / "scratch"))
    took = time.monotonic() - swapped
    assert probe(server)[1] is True

    with caplog.at_level(logging.INFO, logger="attrgate"):
        volume.publish({"p.yaml": broken("third")})
        wait_for(lambda: reloads(server, "rejected") == 1, "the broken revision's rejection")
        # More events for the same broken content: a new folder with the same files, and a
        # touch of the live one. Counted, not logged again.
        volume.publish({"p.yaml": broken("third")})
        wait_for(lambda: reloads(server, "rejected") >= 2, "the second rejection")
        os.utime(volume.root / "p.yaml")
        wait_for(lambda: reloads(server, "rejected") >= 3, "the third rejection")
        fourth = {"p.yaml": denying("fourth")}
        volume.publish(fourth)
        serves(server, revision_of(fourth, tmp_path / "scratch"))
    seen = answers.stop()

    rejected = [r.getMessage() for r in caplog.records if "reload rejected" in r.getMessage()]
    assert len(rejected) == 1, rejected
    assert "policies/p.yaml:12:" in rejected[0]
    assert f"still serving revision {revision_of(second, tmp_path / 'scratch')}" in rejected[0]
    assert any("policies reloaded" in r.getMessage() for r in caplog.records)
    # Only the revisions published valid ever answered, each as it decides.
    expected = {
        (first, False),
        (revision_of(second, tmp_path / "scratch"), True),
        (revision_of(fourth, tmp_path / "scratch"), False),
    }
    assert seen <= expected, seen - expected
    print(f"\nConfigMap swap to serving: {took:.2f}s (debounce {DEBOUNCE}s)")


def inotify_watches() -> int:
    """The inotify watches this process holds: the kernel lists one `inotify wd:` line per watch
    in the fdinfo of each inotify descriptor."""
    count = 0
    for info in Path("/proc/self/fdinfo").iterdir():
        with contextlib.suppress(OSError):  # a descriptor closed meanwhile
            count += info.read_text().count("inotify wd:")
    return count


class MostWatches:
    """The most inotify watches this process held (above `baseline`), sampled from a thread."""

    def __init__(self) -> None:
        self.baseline = inotify_watches()
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return inotify_watches() - self.baseline

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.most = max(self.most, self.now())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        return self.most


@pytest.mark.parametrize("how", ["armed", "replaced", "created"])
def test_the_watch_never_follows_a_symlink_out_of_the_policy_folder(
    watching: Callable[..., RunningServer], tmp_path: Path, how: str
) -> None:
    """A symlink to a big tree outside (here 2,000 folders; `/` on a host: every folder, past
    fs.inotify.max_user_watches for every process of the user): in the folder when the watch is
    armed (a dot entry, which the loader skips), in a folder renamed into its place, or in a
    folder created after arming. The watches stay those of the policy folder's own folders, and
    changes in them, and in a folder made later, are still seen."""
    big = tmp_path / "big"
    for i in range(40):
        for j in range(50):
            (big / f"d{i}" / f"e{j}").mkdir(parents=True)
    folder = tmp_path / "policies"
    (folder / "team").mkdir(parents=True)
    (folder / "team" / "p.yaml").write_text(denying("first"))
    if how == "armed":
        (folder / ".cache").symlink_to(big)
    watches = MostWatches()
    server = watching(folder)
    own = 2  # the folder and team/
    wait_for(lambda: watches.now() >= own, "the watch to be armed")
    if how == "replaced":
        fresh = tmp_path / "fresh"
        (fresh / "team").mkdir(parents=True)
        (fresh / "team" / "p.yaml").write_text(denying("fresh"))
        (fresh / "zlink").symlink_to(big)
        folder.rename(tmp_path / "old")
        fresh.rename(folder)
    elif how == "created":
        staged = tmp_path / "staged" / "zdir"
        staged.mkdir(parents=True)
        (staged / "zlink").symlink_to(big)
        staged.rename(folder / "zdir")
        own = 3  # and zdir/
    if how != "armed":
        # The loader refuses the link out; the watcher has seen the change by then.
        wait_for(lambda: reloads(server, "rejected") >= 1, "the set with the link refused")
        (folder / ("zlink" if how == "replaced" else "zdir/zlink")).unlink()
    # Changes below the folder are still seen: in team/, and in a folder made after arming.
    (folder / "team" / "p.yaml").write_text(allowing("team"))
    serves(server, load_policies(str(folder)).revision)
    (folder / "extra").mkdir()
    (folder / "extra" / "q.yaml").write_text(denying("extra").replace("name: p", "name: q"))
    own += 1
    serves(server, load_policies(str(folder)).revision)
    wait_for(
        lambda: watches.now() == own or watches.most > own, f"the watches on the {own} folders"
    )
    most = watches.stop()
    assert most <= own, f"{most} inotify watches for a policy folder of {own} folders"


def test_a_file_truncated_then_completed_within_the_debounce_never_activates_the_half(
    watching: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """The writer truncates, writes the first part (valid YAML that allows the probe), waits,
    and completes it (denying the probe). The half must never decide anything."""
    debounce = 3.0  # the pause below must stay inside it on a loaded machine
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(denying("before"))
    server = watching(folder, policy_debounce=debounce)
    half = revision_of({"p.yaml": trap_head("trap")}, tmp_path / "scratch")
    whole = revision_of({"p.yaml": trap("trap")}, tmp_path / "scratch")
    answers = Answers(server)

    with (folder / "p.yaml").open("w") as writer:  # truncates
        writer.write(trap_head("trap"))
        writer.flush()
        started = time.monotonic()
        # The half-written state lasts, as a slow writer's would (the writer's behaviour, not a
        # wait for the server): the reader must not take it.
        time.sleep(0.5)
        writer.write(trap("trap")[len(trap_head("trap")) :])
    paused = time.monotonic() - started
    assert paused < debounce, f"the writer paused {paused:.1f}s: past the debounce"

    serves(server, whole, seconds=debounce + BOUND)
    seen = answers.stop()
    assert all(revision != half for revision, _ in seen), "the half-written set served"
    assert not any(allowed for _, allowed in seen)
    assert reloads(server, "loaded") == 1
    assert reloads(server, "rejected") == 0


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_the_folder_deleted_or_replaced_while_watched_is_followed_again(
    watching: Callable[..., RunningServer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    volume = ConfigMapVolume(tmp_path / "policies")
    volume.publish({"p.yaml": denying("first")})
    server = watching(volume.root)
    first = server.app.policy_revision
    second = {"p.yaml": allowing("second")}
    with caplog.at_level(logging.INFO, logger="attrgate"):
        if how == "deleted":
            volume.delete()
            wait_for(
                lambda: any("is missing" in r.getMessage() for r in caplog.records),
                "the warning that the folder is missing",
            )
            # Missing for a few looks (MISSING_RETRY apart): one warning, and the last set
            # serves on. Not a wait for the server: the absence lasting is the test.
            time.sleep(2.5)
            assert probe(server) == (first, False)
            volume.publish(second)  # the same inode number may come back (tmpfs, ext4)
        else:
            # A new folder renamed into place: the old one lives on (elsewhere, unwatched).
            fresh = ConfigMapVolume(tmp_path / "fresh")
            fresh.publish(second)
            volume.root.rename(tmp_path / "old")
            fresh.root.rename(volume.root)
        serves(server, revision_of(second, tmp_path / "scratch"))
        # Then a change in the new folder is seen too: the watch is on it.
        third = {"p.yaml": denying("third")}
        volume.publish(third)
        serves(server, revision_of(third, tmp_path / "scratch"))
    messages = [r.getMessage() for r in caplog.records]
    missing = [m for m in messages if "is missing" in m]
    assert len(missing) == (1 if how == "deleted" else 0), missing
    assert not [m for m in messages if "policy watch of" in m and "failed" in m]
    assert reloads(server, "rejected") == 0


def test_a_single_file_is_followed_when_rewritten_in_place_or_renamed_into_place(
    watching: Callable[..., RunningServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(denying("first"))
    (tmp_path / "other.yaml").write_text("not watched")
    with caplog.at_level(logging.INFO, logger="attrgate"):
        server = watching(path)
        path.write_text(allowing("in place"))
        serves(server, revision_of({"p.yaml": allowing("in place")}, tmp_path / "scratch"))
        staged = tmp_path / ".p.yaml.tmp"
        staged.write_text(denying("renamed"))
        os.replace(staged, path)
        serves(server, revision_of({"p.yaml": denying("renamed")}, tmp_path / "scratch"))
        loaded = reloads(server, "loaded")
        # A file beside it changes nothing (its folder is watched, filtered to the file).
        (tmp_path / "other.yaml").write_text("still not watched")
        time.sleep(10 * DEBOUNCE)  # nothing to wait for: nothing may happen
        assert reloads(server, "loaded") == loaded
    notes = [r.getMessage() for r in caplog.records if "is a single file" in r.getMessage()]
    assert len(notes) == 1, notes
    assert "subPath" in notes[0]


def test_without_policy_watch_a_change_waits_for_sighup(
    watching: Callable[..., RunningServer], tmp_path: Path
) -> None:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "p.yaml").write_text(denying("first"))
    server = watching(folder, policy_watch=False)
    assert server.app.rollout is not None
    assert server.app.rollout.status.follows == SIGHUP
    first = server.app.policy_revision
    (folder / "p.yaml").write_text(allowing("second"))
    # A watcher would have reloaded within a few debounces: nothing may change.
    time.sleep(20 * DEBOUNCE)
    assert probe(server) == (first, False)
    assert reloads(server, "loaded") == 0
    assert server.run(server.app.reload()) is True  # what SIGHUP does
    assert probe(server)[1] is True


def test_a_watching_server_says_so_for_a_single_file_and_stops_promptly(tmp_path: Path) -> None:
    """A real `attrgate serve`: the note for a single file at start, a rewrite served, and
    SIGTERM ends it (the watcher cancelled, its thread released) well within the bound."""
    path = tmp_path / "p.yaml"
    path.write_text(denying("first"))
    port = free_port()
    process = start_serve(
        path, port, "--policy-debounce", str(DEBOUNCE), output=tmp_path, watch=True
    )
    err = tmp_path / "err"
    try:
        assert wait_serving(f"127.0.0.1:{port}", process), err.read_text()
        wait_for(lambda: "policy watch: following" in err.read_text(), "the watch to start")
        path.write_text(allowing("second"))
        wait_for(lambda: "policies reloaded" in err.read_text(), "the reload", BOUND, process)
    finally:
        started = time.monotonic()
        status = stop_serve(process, timeout=BOUND)
        took = time.monotonic() - started
    said = err.read_text()
    assert status == 0, said
    assert took < BOUND
    assert said.count("is a single file") == 1
    assert "failed" not in said
    print(f"\nstop with a watcher: {took:.2f}s")
