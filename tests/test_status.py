"""`attrgate status --target ADMIN`: the real CLI against a real server's admin listener says
what serves (source, revision, when loaded), how the last reload went (the rejection's file:line),
and answers scripts in JSON; a wrong or dead target fails in one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from attrgate.statusview import render_text
from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.attrgate_server import RunningServer
from support.cognito_stub import CognitoStub
from support.environment import clean_env
from support.moto_cognito import free_port
from support.policies import svc_policy
from support.prometheus import metrics_text, samples_of, total
from support.waiting import wait_for

GIVEN_ONLY = svc_policy("[{attribute: given_name}]")
GIVEN_AND_FAMILY = svc_policy("[{attribute: given_name}, {attribute: family_name}]")


def status(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "attrgate", "status", "--target", target, *args],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def admin_target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.app.admin_port}"


def test_status_shows_the_serving_revision_and_the_last_reload(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None
) -> None:
    server = serve(GIVEN_ONLY, stub.endpoint, admin_listen="127.0.0.1:0")
    first = server.app.policy_revision
    assert server.settings.policies is not None
    folder = Path(server.settings.policies)

    shown = status(admin_target(server))
    assert shown.returncode == 0, shown.stderr
    assert f"revision:    {first} (1 document)" in shown.stdout
    assert f"source:      {folder}" in shown.stdout
    assert "SHADOW" not in shown.stdout
    assert "last reload" not in shown.stdout  # none yet

    (folder / "policies.yaml").write_text(GIVEN_ONLY + "---\nkind: AttributePolicy\nspec: [\n")
    assert server.run(server.app.reload()) is False
    shown = status(admin_target(server))
    assert "last reload: rejected" in shown.stdout
    assert f"revision:    {first}" in shown.stdout, "the rejected set is not what serves"
    (error,) = [line for line in shown.stdout.splitlines() if "last error:" in line]
    assert "policies.yaml:" in error

    (folder / "policies.yaml").write_text(GIVEN_AND_FAMILY)
    assert server.run(server.app.reload()) is True
    answer = json.loads(status(admin_target(server), "--output", "json").stdout)
    policies = answer["policies"]
    assert policies["revision"] == server.app.policy_revision != first
    assert policies["last_result"] == "loaded"
    assert policies["last_error"] == ""  # cleared by the load that followed
    assert int(policies["loaded_at_unix_ms"]) >= int(policies["last_attempt_unix_ms"]) - 1000
    assert answer["shadow"] is False
    assert "candidate" not in answer


def policies_status(server: RunningServer) -> pb.PolicySetStatus:
    """What the Admin/Status RPC says of the serving set."""
    with grpc.insecure_channel(admin_target(server)) as channel:
        return pb_grpc.AdminStub(channel).Status(pb.StatusRequest(), timeout=10).policies


def watched(serve: Callable[..., RunningServer], stub: CognitoStub) -> RunningServer:
    return serve(
        GIVEN_ONLY,
        stub.endpoint,
        admin_listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        policy_watch=True,
        policy_debounce=0.2,
    )


def test_status_drops_the_last_error_once_the_files_are_the_serving_set_again(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None
) -> None:
    """A rejected set put back as it was: the watcher's reload finds the serving revision
    ("unchanged"), and the rejection's error no longer shows."""
    server = watched(serve, stub)
    first = server.app.policy_revision
    assert server.settings.policies is not None
    policies = Path(server.settings.policies) / "policies.yaml"

    policies.write_text(GIVEN_ONLY + "---\nkind: AttributePolicy\nspec: [\n")
    wait_for(lambda: policies_status(server).last_result == "rejected", "the rejection")
    assert "policies.yaml:" in policies_status(server).last_error
    policies.write_text(GIVEN_ONLY)
    wait_for(lambda: policies_status(server).last_result == "unchanged", "the set back")
    shown = policies_status(server)
    assert shown.revision == first
    assert shown.last_error == ""


def test_status_says_a_watched_folder_is_missing_until_it_is_back(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None
) -> None:
    server = watched(serve, stub)
    first = server.app.policy_revision
    assert server.settings.policies is not None
    folder = Path(server.settings.policies)

    def unavailable() -> float:
        samples = samples_of(metrics_text(server.app.metrics_port))
        return total(samples["attrgate_policy_reloads_total"], result="unavailable", set="serving")

    shutil.rmtree(folder)
    wait_for(lambda: policies_status(server).source_error != "", "the folder reported missing")
    # Missing for a few looks (a second apart): reported and counted once. Not a wait for the
    # server: the absence lasting is the test.
    time.sleep(2.5)
    shown = policies_status(server)
    assert shown.source_error == f"{folder} is missing"
    assert shown.source_errors == 1
    assert shown.source_error_since_unix_ms > 0
    assert shown.last_result == "unavailable"
    assert shown.revision == first
    assert unavailable() == 1
    text = status(admin_target(server)).stdout
    assert f"{folder} is missing" in text

    folder.mkdir()
    (folder / "policies.yaml").write_text(GIVEN_AND_FAMILY)
    wait_for(lambda: policies_status(server).revision != first, "the folder back, reloaded")
    shown = policies_status(server)
    assert (shown.source_error, shown.source_errors, shown.last_result) == ("", 0, "loaded")
    assert unavailable() == 1


def test_status_against_the_main_listener_or_nothing_fails_in_one_line(
    serve: Callable[..., RunningServer], stub: CognitoStub, stub_credentials: None
) -> None:
    server = serve(GIVEN_ONLY, stub.endpoint, admin_listen="127.0.0.1:0")
    wrong = status(server.target)
    assert wrong.returncode == 1
    assert "UNIMPLEMENTED" in wrong.stderr
    assert "--admin-listen" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1

    dead = status(f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert dead.returncode == 1
    assert "UNAVAILABLE" in dead.stderr or "DEADLINE_EXCEEDED" in dead.stderr
    assert "Traceback" not in dead.stderr


def test_the_text_names_what_an_operator_must_not_miss() -> None:
    """Shadow mode, a fallback serving, and a source that stopped answering: each on a line of
    its own, with the revision that serves meanwhile."""
    now = 1_800_000_000.0
    reply = pb.StatusResponse(
        version="9.9",
        shadow=True,
        policies=pb.PolicySetStatus(
            source="s3://b/policies.tar.gz",
            follows="poll",
            revision="sha256:abc",
            documents=3,
            loaded_at_unix_ms=int((now - 300) * 1000),
            fallback=True,
            source_error="AccessDenied",
            source_errors=4,
            source_error_since_unix_ms=int((now - 120) * 1000),
        ),
    )
    text = render_text(reply, now)
    assert "SHADOW MODE" in text.splitlines()[1]
    assert "polled for new bundles" in text
    assert "sha256:abc (3 documents), loaded" in text
    assert "(5m ago)" in text
    assert "FALLBACK" in text
    assert "UNREACHABLE: AccessDenied (4 attempts in a row, since" in text
    assert "candidate" not in text
