"""A reload reads one version of a Kubernetes ConfigMap volume, however often the kubelet swaps it,
and never waits on a load past its time.

The volume: timestamped folders, a `..data` symlink swapped by rename, and top-level file
symlinks through `..data`. Two versions both deny `custom:tier`, with the rules moved between
files; reading one file of each version would allow it.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from attrgate.policy.load import load_policy_set
from support.attrgate_server import RunningServer, settings_for
from support.cognito_stub import CognitoStub
from support.moto_cognito import MotoCognito
from support.rpc import as_caller, attrs_request, rich
from support.waiting import wait_until

HEAD = (
    "apiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {name: %s}\n"
    'spec:\n  callers: [svc]\n  userPools: ["*"]\n'
)
ALLOWS_TIER = "  allow: [{attribute: given_name}, {attribute: 'custom:tier'}]\n"
DENIES_TIER = "  allow: [{attribute: given_name}]\n  deny: [{attribute: 'custom:tier'}]\n"
# Version A: x.yaml allows custom:tier, y.yaml denies it. Version B: the other way round.
# x of A with y of B allows it; each version alone denies it.
VERSIONS = {
    "..2026_12_01_10_00_00.000000001": {"x.yaml": ALLOWS_TIER, "y.yaml": DENIES_TIER},
    "..2026_12_01_10_05_00.000000002": {"x.yaml": DENIES_TIER, "y.yaml": ALLOWS_TIER},
}
SECONDS = 8.0


def configmap_volume(mount: Path) -> list[str]:
    """The layout the kubelet writes; returns the timestamped folders' names."""
    mount.mkdir()
    for folder, files in VERSIONS.items():
        (mount / folder).mkdir()
        for name, rules in files.items():
            policy = "px" if name == "x.yaml" else "py"
            (mount / folder / name).write_text(HEAD % policy + rules)
    first = next(iter(VERSIONS))
    os.symlink(first, mount / "..data")
    for name in VERSIONS[first]:
        os.symlink(f"..data/{name}", mount / name)
    return list(VERSIONS)


def test_reloads_during_configmap_swaps_never_serve_a_mixed_set(
    moto: MotoCognito, tmp_path: Path
) -> None:
    pool = moto.create_pool(
        name="torn", Schema=[{"Name": "tier", "AttributeDataType": "String", "Mutable": True}]
    )
    moto.create_user(pool, "ada", given_name="Ada")
    mount = tmp_path / "policies"
    folders = configmap_volume(mount)
    revisions = set()
    for folder in folders:
        version = load_policy_set(mount / folder)
        assert version.ok, version.errors
        revisions.add(version.revision)
    assert len(revisions) == 2

    server = RunningServer(settings_for(policies=str(mount), cognito_endpoint=moto.endpoint))
    stop = threading.Event()
    swaps = [0]
    reloads: dict[bool, int] = {True: 0, False: 0}

    def kubelet() -> None:
        # As the kubelet does on every update: write the new version into a new timestamped
        # folder, link ..data to it by renaming a new link over the old (atomic), then delete
        # the old folder (so a read still in the old one finds its files gone).
        serving = folders[0]
        while not stop.is_set():
            swaps[0] += 1
            version = VERSIONS[folders[swaps[0] % 2]]
            fresh = f"..2026_12_01_11_00_00.{swaps[0]:09d}"
            (mount / fresh).mkdir()
            for name, rules in version.items():
                policy = "px" if name == "x.yaml" else "py"
                (mount / fresh / name).write_text(HEAD % policy + rules)
            os.symlink(fresh, mount / "..data_tmp")
            os.replace(mount / "..data_tmp", mount / "..data")
            shutil.rmtree(mount / serving)
            serving = fresh
            time.sleep(0.001)  # the kubelet's own pace is seconds; reloads get their turns

    def operator() -> None:
        while not stop.is_set():
            reloads[server.run(server.app.reload())] += 1

    threads = [threading.Thread(target=kubelet), threading.Thread(target=operator)]
    answers: list[tuple[grpc.StatusCode, str, str]] = []
    try:
        for thread in threads:
            thread.start()
        with server.channel() as channel:
            stub = server.stub(channel)
            # At least SECONDS, and on a busy machine until the run has done what the test
            # claims (bounded: the assertions below say what fell short).
            started = time.monotonic()

            def enough() -> bool:
                if time.monotonic() - started < SECONDS:
                    return False
                done = swaps[0] >= 1000 and reloads[True] >= 20 and len(answers) >= 300
                return done or time.monotonic() - started > 6 * SECONDS

            while not enough():
                write = attrs_request(pool, [("custom:tier", f"t{len(answers)}")])
                try:
                    answer = stub.UpdateUserAttributes(write, metadata=as_caller("svc"), timeout=10)
                    answers.append((grpc.StatusCode.OK, "", answer.decision.policy_revision))
                except grpc.RpcError as error:
                    found = rich(error)
                    answers.append(
                        (found.code, found.info.reason, found.info.metadata["policy_revision"])
                    )
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        server.stop()

    # The test did what it claims: thousands of swaps, reloads that loaded, many writes.
    assert swaps[0] >= 1000, swaps
    assert reloads[True] >= 20, reloads
    assert len(answers) >= 300, len(answers)
    assert "custom:tier" not in moto.attributes(pool, "ada"), "a denied write reached Cognito"
    outcomes = {(code, reason) for code, reason, _ in answers}
    assert outcomes == {(grpc.StatusCode.PERMISSION_DENIED, "POLICY_DENIED")}, outcomes
    served = {revision for _, _, revision in answers}
    assert served <= revisions, f"served a revision of neither version: {served - revisions}"
    assert served == revisions, "both versions should have served between the swaps"


def test_a_reload_that_overruns_its_time_is_rejected_and_the_old_set_keeps_serving(
    serve: Callable[..., RunningServer],
    stub: CognitoStub,
    stub_credentials: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = serve(HEAD % "px" + ALLOWS_TIER, stub.endpoint)
    serving = server.app.policy_revision
    assert server.app.reloader is not None
    server.app.reloader.timeout = 0.05
    assert server.settings.policies is not None
    # ~1 MiB of policies: about a second to load, far past the 0.05 s allowed.
    many = "---\n".join(HEAD % f"p{i}" + DENIES_TIER for i in range(6000))
    (Path(server.settings.policies) / "policies.yaml").write_text(many)
    with caplog.at_level(logging.ERROR, logger="attrgate"):
        assert server.run(server.app.reload()) is False
        # The overrunning load goes on in its thread: the garbage collector stays on meanwhile
        # (it is process-wide), and a reload asked for now is refused, not a second thread...
        assert loading(), "the load ended within 0.05 s: nothing was tested"
        assert gc.isenabled()
        # ...but not lost: the operator fixed the files and signalled; once the overrunning
        # load ends, that reload runs on its own and the fixed set serves.
        fixed = HEAD % "fixed" + DENIES_TIER
        (Path(server.settings.policies) / "policies.yaml").write_text(fixed)
        server.app.reloader.timeout = 60
        assert server.run(server.app.reload()) is False
    lines = [r.getMessage() for r in caplog.records if "reload rejected" in r.getMessage()]
    assert lines[0] == (
        f"policy reload rejected; still serving revision {serving}: loading "
        f"{server.settings.policies} took longer than 0.05s"
    )
    assert "the previous load of" in lines[1]
    assert "is still running" in lines[1]
    assert "this reload runs when it ends" in lines[1]
    expected = load_policy_set(server.settings.policies).revision
    assert wait_until(lambda: server.app.policy_revision == expected, 60)
    assert not loading()


def loading() -> bool:
    return any(t.name == "attrgate-policy-load" for t in threading.enumerate())
