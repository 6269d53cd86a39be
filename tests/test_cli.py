"""The attrgate command as a user runs it: check, serve, call, health — each in a subprocess."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
import grpc
import pytest

from support.environment import clean_env
from support.moto_cognito import free_port
from support.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"
_SCRIPT = Path(sys.executable).parent / "attrgate"
ATTRGATE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "attrgate"]
ERROR_LINE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<where>[\w.\[\]]+): (?P<message>.+)$")


def attrgate(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ATTRGATE, *args],
        cwd=REPO,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def line_of(path: Path, needle: str, occurrence: int = 1) -> int:
    """1-based line of the `occurrence`-th line of `path` containing `needle`."""
    hits = [n for n, text in enumerate(path.read_text().splitlines(), 1) if needle in text]
    return hits[occurrence - 1]


def policy(name: str, body: str, callers: str = '["svc-*"]') -> str:
    return (
        "apiVersion: attrgate/v1\n"
        "kind: AttributePolicy\n"
        "metadata:\n"
        f"  name: {name}\n"
        "spec:\n"
        f"  callers: {callers}\n"
        '  userPools: ["*"]\n' + body
    )


# -- attrgate check -----------------------------------------------------------------------------


def test_check_accepts_the_example_policies() -> None:
    result = attrgate("check", "policies")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: 5 policies in 4 files, revision sha256:")
    assert result.stderr == ""


@dataclass
class BadSet:
    root: Path
    multi: Path
    other: Path


@pytest.fixture
def bad_set(tmp_path: Path) -> BadSet:
    root = tmp_path / "bad"
    root.mkdir()
    multi = root / "a-multi.yaml"
    multi.write_text(
        "# the first document is fine\n"
        + policy("first", "  allow:\n    - attribute: given_name\n      maxLength: 10\n")
        + "---\n"
        + policy(
            "second",
            "  allow:\n"
            "    - attribute: given_name\n"
            "      maxLength: 10\n"
            "    - attribute: family_name\n"
            "      maxLenght: 64\n"
            '    - attribute: "custom:code"\n'
            "      pattern: '^(unclosed'\n"
            '    - attribute: "custom:country"\n'
            "      enum: [NO, on]\n"
            '    - attribute: "custom:nickname"\n'
            "      allowEmpty: yes\n",
        )
    )
    other = root / "b-other.yaml"
    other.write_text(policy("first", "  allow:\n    - attribute: email\n", '["other"]'))
    (root / ".hidden.yaml").write_text("this: is: not: yaml: [\n")  # skipped: a dot entry
    return BadSet(root, multi, other)


def test_check_reports_every_error_with_file_line_and_key(bad_set: BadSet) -> None:
    result = attrgate("check", str(bad_set.root))
    assert result.returncode == 1
    assert "ok:" not in result.stdout
    lines = result.stderr.splitlines()
    parsed = [ERROR_LINE.match(line) for line in lines]
    assert all(parsed), lines
    found = {(m["file"], int(m["line"]), m["where"]) for m in parsed if m}
    multi, other = str(bad_set.multi), str(bad_set.other)
    assert found == {
        # The typo, nested in the second document, at the line of the key itself.
        (multi, line_of(bad_set.multi, "maxLenght"), "spec.allow[1].maxLenght"),
        (multi, line_of(bad_set.multi, "pattern:"), "spec.allow[2].pattern"),
        (multi, line_of(bad_set.multi, "allowEmpty"), "spec.allow[4].allowEmpty"),
        (other, line_of(bad_set.other, "name: first"), "metadata.name"),
    }
    by_where = {m["where"]: m["message"] for m in parsed if m}
    assert by_where["spec.allow[1].maxLenght"] == "unknown key (did you mean maxLength?)"
    assert "invalid regular expression" in by_where["spec.allow[2].pattern"]
    assert "duplicate policy name 'first'" in by_where["metadata.name"]
    # ... and it says where the first one is.
    assert f"{multi}:{line_of(bad_set.multi, 'name: first')}" in by_where["metadata.name"]


def test_check_yaml_booleans_do_not_bite(tmp_path: Path) -> None:
    path = tmp_path / "yaml11.yaml"
    path.write_text(
        policy("countries", '  allow:\n    - attribute: "custom:country"\n      enum: [NO, on]\n')
    )
    passed = attrgate("check", str(path))
    assert passed.returncode == 0, passed.stderr

    path.write_text(
        policy("empty", '  allow:\n    - attribute: "custom:x"\n      allowEmpty: yes\n')
    )
    failed = attrgate("check", str(path))
    assert failed.returncode == 1
    (line,) = failed.stderr.splitlines()
    assert line == (
        f"{path}:{line_of(path, 'allowEmpty')}: spec.allow[0].allowEmpty: expected true or false"
        " (yes, no, on and off are strings in YAML 1.2)"
    )


def test_check_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(policy("broken", "  allow:\n    - attribute: [given_name\n"))
    result = attrgate("check", str(path))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{path}:")
    assert "invalid YAML" in line


def test_check_applies_the_servers_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(policy("big", "  allow: [{attribute: given_name}]\n" + "#" * 2000 + "\n"))
    size = path.stat().st_size
    assert attrgate("check", str(path)).returncode == 0
    refused = f"{path}: {size} bytes, over the --policy-max-bytes limit of 1024"
    for result in (
        attrgate("check", "--policy-max-bytes", "1024", str(path)),
        attrgate("check", str(path), env=clean_env(ATTRGATE_POLICY_MAX_BYTES="1024")),
    ):
        assert (result.returncode, result.stderr.splitlines()) == (1, [refused])


def test_check_of_an_empty_folder_fails(tmp_path: Path) -> None:
    result = attrgate("check", str(tmp_path))
    assert result.returncode == 1
    assert "no policy documents found" in result.stderr


# -- attrgate serve refusals --------------------------------------------------------------------


def test_serve_refuses_an_invalid_policy_set_in_one_line(bad_set: BadSet) -> None:
    port = free_port()
    result = attrgate(
        *["serve", "--insecure", "--region", "us-east-1"],
        *["--policies", str(bad_set.root), "--listen", f"127.0.0.1:{port}"],
        env=clean_env(),
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("attrgate: refusing to start: invalid policy set: ")
    assert f"{bad_set.multi}:{line_of(bad_set.multi, 'maxLenght')}: " in lines[0]
    assert "(and 3 more; run `attrgate check" in lines[0]
    assert result.stdout == ""


def test_serve_refuses_insecure_on_all_interfaces() -> None:
    port = free_port()
    result = attrgate(
        *["serve", "--insecure", "--policies", "policies", "--region", "us-east-1"],
        *["--listen", f"0.0.0.0:{port}"],
        env=clean_env(),
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert f"0.0.0.0:{port}" in line
    assert "--insecure-allow-remote" in line


def test_serve_refuses_an_otlp_protocol_it_cannot_speak() -> None:
    result = attrgate(
        *["serve", "--insecure", "--policies", "policies", "--region", "us-east-1"],
        *["--listen", f"127.0.0.1:{free_port()}"],
        env=clean_env(
            OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318",
            OTEL_EXPORTER_OTLP_PROTOCOL="http/json",
        ),
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='http/json'" in line
    assert "http/protobuf" in line


def test_serve_refuses_without_transport_security() -> None:
    result = attrgate("serve", "--policies", "policies", "--region", "us-east-1")
    assert result.returncode == 2
    assert "no transport security" in result.stderr


def test_serve_reads_attrgate_variables(bad_set: BadSet) -> None:
    """Configured only through ATTRGATE_*: the refusal names the file the variable gave."""
    result = attrgate(
        "serve",
        env=clean_env(
            ATTRGATE_POLICIES=str(bad_set.root),
            ATTRGATE_INSECURE="true",
            ATTRGATE_REGION="us-east-1",
            ATTRGATE_LISTEN=f"127.0.0.1:{free_port()}",
        ),
    )
    assert result.returncode == 2
    assert f"invalid policy set: {bad_set.multi}:" in result.stderr


# -- attrgate serve, call, health ---------------------------------------------------------------


def _kill(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@dataclass
class Served:
    process: subprocess.Popen[str]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        return self.stdout.read_text()

    def errors(self) -> str:
        return self.stderr.read_text()


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def run(*args: str, env: dict[str, str]) -> Served:
        n = len(started)
        stdout, stderr = tmp_path / f"serve{n}.out", tmp_path / f"serve{n}.err"
        with stdout.open("w") as out, stderr.open("w") as err:
            process = subprocess.Popen(
                [*ATTRGATE, "serve", *args], cwd=REPO, env=env, stdout=out, stderr=err, text=True
            )
        served = Served(process, stdout, stderr)
        started.append(served)
        return served

    yield run
    for served in started:
        _kill(served.process)


def wait_for_serve(served: Served, ready: Callable[[], bool], what: str) -> None:
    try:
        wait_for(ready, what, 30, served.process)
    except AssertionError as exc:
        pytest.fail(f"{exc}\n{served.errors()}")


def healthy(target: str) -> bool:
    return attrgate("health", "--target", target, "--timeout", "1").returncode == 0


def test_local_cognito_serve_call_health_and_sigterm(start: Callable[..., Served]) -> None:
    port, admin = free_port(), free_port()
    target, admin_target = f"127.0.0.1:{port}", f"127.0.0.1:{admin}"
    served = start(
        *["--local-cognito", "--insecure", "--policies", "policies"],
        *["--listen", target, "--admin-listen", admin_target],
        env=clean_env(),
    )
    wait_for_serve(served, lambda: served.output().count(" call --target ") >= 2, "the ready lines")
    text = served.output()

    pool = re.search(r"user pool: (\S+)", text)
    # The example SmsGuard needs a store: --local-cognito counts in a temporary file, and says so.
    assert re.search(r"^SMS guard counts in a temporary file: \S+\.sqlite$", text, re.M), text
    endpoint = re.search(r"local Cognito \(moto\) at (\S+), region (\S+)", text)
    users = re.search(r"users:\s+(.+)", text)
    assert pool, text
    assert endpoint, text
    assert users, text
    assert re.fullmatch(r"us-east-1_\w+", pool[1])
    assert users[1].split(", ") == ["ada", "grace"]
    ready = [line.strip() for line in text.splitlines() if " call --target " in line]
    command = shlex.split(ready[0])
    assert command[0] == ATTRGATE[0] or command[0] == "attrgate"
    assert command[1:] == [
        *["call", "--target", target, "--caller", "profile-api"],
        *["--user-pool-id", pool[1], "--username", "ada"],
        *["--user-attributes", "Name=given_name,Value=Augusta"],
    ]
    cognito = boto3.client(
        "cognito-idp",
        endpoint_url=endpoint[1],
        region_name=endpoint[2],
        aws_access_key_id="local",
        aws_secret_access_key="local-secret",
    )

    def attributes(user: str) -> dict[str, str]:
        found = cognito.admin_get_user(UserPoolId=pool[1], Username=user)["UserAttributes"]
        return {a["Name"]: a["Value"] for a in found}

    # The ready line, as printed, runs.
    printed = attrgate(*command[1:])
    assert printed.returncode == 0, printed.stdout + printed.stderr
    assert attributes("ada")["given_name"] == "Augusta"

    # An allowed update changes the user in the local Cognito (grace is Grace until now).
    assert attributes("grace")["given_name"] == "Grace"
    call = ["call", "--target", target, "--caller", "profile-api", "--user-pool-id", pool[1]]
    allowed = attrgate(
        *call, "--username", "grace", "--user-attributes", "Name=given_name,Value=Ada"
    )
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    answer = json.loads(allowed.stdout)["Attrgate"]  # the AWS CLI's JSON: {} plus attrgate's
    assert set(answer) == {
        *("DecisionId", "PolicyRevision", "CognitoRequestId", "PendingVerification"),
        "WouldDeny",
    }
    assert re.fullmatch(r"[0-9a-f]{32}", answer["DecisionId"]), answer
    assert answer["PolicyRevision"].startswith("sha256:")
    assert answer["CognitoRequestId"]
    assert attributes("grace")["given_name"] == "Ada"

    # --debug says what is sent, never the values. A --query that fails on the answer: the
    # update is done (the user changed), the message and 255, as the AWS CLI.
    debugged = attrgate(
        *call,
        *("--username", "grace", "--user-attributes", "Name=given_name,Value=Hedy", "--debug"),
        *("--query", "abs(Attrgate.DecisionId)"),
    )
    assert debugged.returncode == 255, debugged.stderr
    assert "attrgate call: UpdateUserAttributes to 127.0.0.1:" in debugged.stderr
    assert "Hedy" not in debugged.stderr
    assert "invalid type" in debugged.stderr.lower()
    assert "Traceback" not in debugged.stderr
    assert attributes("grace")["given_name"] == "Hedy"
    # Where Cognito refused, the code is Cognito's own, as the AWS CLI prints it.
    missing = attrgate(
        *call, "--username", "nobody", "--user-attributes", "Name=given_name,Value=X"
    )
    assert missing.returncode == 254, missing.stderr
    assert "An error occurred (UserNotFoundException) when calling" in missing.stderr

    # A denied one lists every violation and leaves the user alone (the short form, kept).
    before = attrgate(*call, "--username", "ada", "--query", "Attrgate.WouldDeny", "given_name=Ada")
    assert before.stdout == "[]\n", before.stdout + before.stderr
    before = attributes("ada")
    denied = attrgate(*call, "--user", "ada", "custom:role=admin", "email_verified=true")
    assert denied.returncode == 254  # an error answered by the service, as the AWS CLI v2
    assert denied.stdout == ""  # errors go to stderr
    out = denied.stderr
    assert out.startswith(
        "\nAn error occurred (POLICY_DENIED) when calling the UpdateUserAttributes operation: "
    ), out
    assert "status: PERMISSION_DENIED" in out
    assert "reason: POLICY_DENIED (domain attrgate)" in out
    assert "field violations:" in out
    assert re.search(r"- user_attributes\[0\]: custom:role: ATTRIBUTE_DENIED", out), out
    assert re.search(r"- user_attributes\[1\]: email_verified: ", out), out
    assert "admin" not in out  # no attribute value echoed
    assert attributes("ada") == before

    # --check decides without forwarding, and prints the decision with audit findings.
    checked = attrgate(*call, "--check", "--user", "ada", "family_name=Byron")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    decision = json.loads(checked.stdout)["Attrgate"]
    assert decision["Allowed"] is True
    assert decision["WouldDeny"] == [
        {
            **{"Attribute": "family_name", "Policy": "profile-family-name-freeze"},
            **{"Reason": "ATTRIBUTE_DENIED", "Entry": "deny[0]"},
            "Message": decision["WouldDeny"][0]["Message"],
        }
    ]
    assert attributes("ada")["family_name"] == "Lovelace"
    check_denied = attrgate(
        *call, "--check", "--user", "ada", "custom:role=admin", "--output", "text"
    )
    assert check_denied.returncode == 1  # --check: the policies would deny
    assert check_denied.stdout.startswith("ATTRGATE\tFalse\t"), check_denied.stdout
    assert re.search(
        r"^VIOLATIONS\tcustom:role\tdeny\[0\]\t.*\tprofile-service\tATTRIBUTE_DENIED$",
        check_denied.stdout,
        re.M,
    ), check_denied.stdout

    # No caller: UNAUTHENTICATED.
    anonymous = attrgate("call", "--target", target, "--pool", pool[1], "--user", "ada", "a=b")
    assert anonymous.returncode == 254
    assert "An error occurred (" in anonymous.stderr
    assert "status: UNAUTHENTICATED" in anonymous.stderr

    # Health on the admin listener and on the main one.
    for where in (admin_target, target):
        health = attrgate("health", "--target", where)
        assert health.returncode == 0, health.stderr
        assert health.stdout.strip() == "SERVING"

    # SIGTERM: exit 0 within a few seconds; health fails afterwards.
    served.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert served.process.wait(timeout=8) == 0, served.errors()
    assert time.monotonic() - started < 8
    gone = attrgate("health", "--target", admin_target, "--timeout", "1")
    assert gone.returncode == 1
    assert gone.stdout == ""
    assert gone.stderr.startswith("unhealthy: ")


def test_serve_configured_only_by_environment(start: Callable[..., Served], tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "countries.yaml").write_text(
        policy("countries", '  allow:\n    - attribute: "custom:country"\n      enum: [NO, on]\n')
    )
    port, admin = free_port(), free_port()
    served = start(
        env=clean_env(
            ATTRGATE_POLICIES=str(policies),
            ATTRGATE_INSECURE="true",
            ATTRGATE_LISTEN=f"127.0.0.1:{port}",
            ATTRGATE_ADMIN_LISTEN=f"127.0.0.1:{admin}",
            ATTRGATE_REGION="eu-west-1",
            ATTRGATE_GRACE="1",
            # No Cognito behind this server: decide without the pool's schema.
            ATTRGATE_POOL_METADATA_FAIL_OPEN="true",
        ),
    )
    wait_for_serve(served, lambda: healthy(f"127.0.0.1:{admin}"), "health SERVING")
    call = ["call", "--check", "--target", f"127.0.0.1:{port}", "--caller", "svc-a"]
    call += ["--pool", "eu-west-1_abc", "--user", "ada"]
    # NO and on stayed strings in the policy: they are the allowed values, not false/true.
    for value in ("NO", "on"):
        result = attrgate(*call, f"custom:country={value}")
        assert result.returncode == 0, result.stdout + result.stderr
        decision = json.loads(result.stdout)["Attrgate"]
        assert decision["Allowed"] is True
        assert decision["MatchedPolicies"] == ["countries"]
    for value in ("false", "true", "no"):
        result = attrgate(*call, f"custom:country={value}")
        assert result.returncode == 1, value
        assert json.loads(result.stdout)["Attrgate"]["Allowed"] is False
    served.process.send_signal(signal.SIGINT)
    assert served.process.wait(timeout=8) == 0, served.errors()


def test_serve_refuses_a_port_another_grpc_server_holds(
    start: Callable[..., Served], tmp_path: Path
) -> None:
    """A second server on a taken port must fail, not silently share it (SO_REUSEPORT): a stale
    attrgate with an old policy set would otherwise keep answering part of the calls."""
    occupant = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = occupant.add_insecure_port("127.0.0.1:0")
    occupant.start()
    try:
        served = start(
            *["--insecure", "--policies", "policies", "--region", "us-east-1"],
            *["--listen", f"127.0.0.1:{port}", "--state", str(tmp_path / "state.sqlite")],
            env=clean_env(),
        )
        deadline = time.monotonic() + 20
        while served.process.poll() is None and time.monotonic() < deadline:
            if "serving on port" in served.errors():
                pytest.fail(f"attrgate serves on 127.0.0.1:{port}, which another server holds")
            time.sleep(0.05)
        assert served.process.returncode == 2
        assert f"cannot listen on 127.0.0.1:{port}" in served.errors()
    finally:
        occupant.stop(0)


def test_call_interrupted_exits_130_without_a_traceback() -> None:
    # A listener that accepts and never answers: the call waits until Ctrl-C.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        call = subprocess.Popen(
            [
                *(*ATTRGATE, "call", "--target", target, "--caller", "svc", "--pool", "p_1"),
                *("--user", "ada", "--timeout", "60", "given_name=Ada"),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            connected, _ = silent.accept()  # the call is under way
            with connected:
                call.send_signal(signal.SIGINT)
                out, err = call.communicate(timeout=30)
        finally:
            call.kill()
    assert call.returncode == 130, (out, err)
    assert "Traceback" not in err
    assert out == ""
