"""`attrgate call` as a script sees it: the AWS CLI v2's exit codes, errors on stderr and nothing
on stdout when it fails, the options it accepts and ignores, and shell completion run in a real
bash and zsh. (What it sends and prints against a server: tests/test_cli.py; its parser and
formatters against the AWS CLI's own: tests/test_call_awscli.py.)"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support.environment import clean_env
from test_cli import ATTRGATE, attrgate

BASE = ("call", "--user-pool-id", "us-east-1_Pool", "--username", "ada")


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        ((*BASE, "--user-attributes", "Name=a,Value=b,c"), "UserAttributes[0].Value"),
        ((*BASE, "--user-attributes", "Name=a,Value='b"), "--user-attributes"),
        ((*BASE, "--user-attributes", "Name=a,Value=b", "--no-such-option"), "--no-such-option"),
        (("call", "--username", "ada", "--user-attributes", "Name=a,Value=b"), "--user-pool-id"),
        ((*BASE, "--user-attributes", "Name=a,Value=b", "--output", "xml"), "--output"),
        ((*BASE, "--user-attributes", "Name=a,Value=b", "--query", "[["), "--query"),
        ((*BASE, "--user-attributes", "Name=a,Value=b", "--cli-read-timeout", "-1"), "timeout"),
        ((*BASE, "--user-attributes", "[{"), "Invalid JSON"),
        # Timeouts: a number of seconds, finite.
        ((*BASE, "--user-attributes", "Name=a,Value=b", "--cli-connect-timeout", "inf"), "inf"),
        ((*BASE, "--user-attributes", "Name=a,Value=b", "--cli-read-timeout", "nan"), "nan"),
        ((*BASE, "--user-attributes", "Name=a,Value=b", "--cli-read-timeout", "1e12"), "1e12"),
        ((*BASE, "--user-attributes", "Name=a,Value=b", "--cli-read-timeout", "soon"), "soon"),
        # Words no option took, on an AWS CLI line: refused, never sent as attributes.
        # (the AWS CLI reads `extra=1` as a second --user-attributes word, and refuses it)
        (
            (*BASE, "--user-attributes", "Name=a,Value=b", "extra=1"),
            'parameter in UserAttributes[1]: "extra"',
        ),
        ((*BASE, "--user-attributes", "Name=a,Value=b", "--", "c=d"), "Unknown options: c=d"),
        ((*BASE, "--client-metadata", "a=1", "b=2"), "Unknown options: b=2"),
        ((*BASE, "Name=given_name,Value=Ada"), "Unknown options: Name=given_name"),
    ],
)
def test_a_usage_error_exits_252_and_sends_nothing(argv: tuple[str, ...], names: str) -> None:
    # The target is a closed port: had anything been sent, the exit would be 255.
    result = attrgate(*argv, "--target", closed_port())
    assert result.returncode == 252, result.stderr
    assert result.stdout == ""
    assert names in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_default_output_is_a_usage_error_before_anything_is_sent() -> None:
    result = attrgate(
        *(*BASE, "--user-attributes", "Name=a,Value=b", "--target", closed_port()),
        env=clean_env(AWS_DEFAULT_OUTPUT="xml"),
    )
    assert result.returncode == 252, result.stderr
    assert "'xml'" in result.stderr


def test_a_key_without_its_certificate_is_refused_not_sent_in_plaintext(tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_text("")
    result = attrgate(
        *(*BASE, "--user-attributes", "Name=a,Value=b", "--tls-key", str(key)),
        *("--target", closed_port()),
    )
    assert result.returncode == 253, result.stderr
    assert "--tls-cert and --tls-key go together" in result.stderr


def test_a_reader_that_goes_away_does_not_change_the_status() -> None:
    """`attrgate call ... | head -c1`: no traceback, the command's own status."""
    program = " ".join([*map(shlex.quote, ATTRGATE), "call", "--generate-cli-skeleton"])
    result = subprocess.run(
        ["bash", "-c", f"{program} | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=clean_env(PYTHONUNBUFFERED=""),
    )
    assert result.stdout.strip() == "0", result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "BrokenPipe" not in result.stderr


def test_an_unreadable_tls_file_exits_253(tmp_path: Path) -> None:
    result = attrgate(
        *BASE, "--user-attributes", "Name=a,Value=b", "--ca", str(tmp_path / "missing.pem")
    )
    assert result.returncode == 253, result.stderr
    assert "missing.pem" in result.stderr


def test_no_connection_exits_255_within_the_connect_timeout() -> None:
    started = time.monotonic()
    result = attrgate(
        *(*BASE, "--user-attributes", "Name=a,Value=b", "--target", closed_port()),
        *("--cli-connect-timeout", "1", "--region", "eu-west-1", "--profile", "ops"),
    )
    assert result.returncode == 255, result.stderr
    assert time.monotonic() - started < 25  # 1 s of waiting, the rest is the interpreter
    assert result.stdout == ""
    assert 'Connect timeout on endpoint URL: "127.0.0.1:' in result.stderr
    # Runbook options that mean nothing here are accepted, and said to be ignored.
    assert "--region, --profile ignored" in result.stderr


def test_no_answer_in_time_exits_255() -> None:
    """--cli-connect-timeout 0: wait for a connection for ever; the read timeout ends it."""
    result = attrgate(
        *(*BASE, "--user-attributes", "Name=a,Value=b", "--target", closed_port()),
        *("--cli-connect-timeout", "0", "--cli-read-timeout", "1"),
    )
    assert result.returncode == 255, result.stderr
    assert "Read timeout on endpoint URL" in result.stderr


def test_skeletons_need_no_server_and_no_options() -> None:
    given = attrgate("call", "--generate-cli-skeleton")
    assert given.returncode == 0, given.stderr
    assert set(json.loads(given.stdout)) == {
        *("UserPoolId", "Username", "UserAttributes", "ClientMetadata")
    }
    answer = attrgate("call", "--generate-cli-skeleton", "output")
    assert set(json.loads(answer.stdout)["Attrgate"]) == {
        *("DecisionId", "PolicyRevision", "CognitoRequestId", "PendingVerification", "WouldDeny")
    }


def test_help_lists_the_aws_clis_options() -> None:
    result = attrgate("call", "--help")
    assert result.returncode == 0
    for option in ("--user-pool-id", "--user-attributes", "--cli-input-yaml", "--query"):
        assert option in result.stdout
    assert "--profile" not in result.stdout  # accepted, not offered


# --- completion --------------------------------------------------------------------------


def completions(shell: str, line: str, cwd: Path) -> list[str]:
    script = cwd / f"completion.{shell}"
    generated = attrgate("completion", shell)
    assert generated.returncode == 0, generated.stderr
    script.write_text(generated.stdout)
    if shell == "bash":
        program = (
            f"source {script}; COMP_LINE=$1; COMP_POINT=${{#1}}; _attrgate; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        run = ["bash", "-c", program, "_", line]
    else:
        # zsh's completion builtins, stood in for by functions that print what they are given.
        program = (
            'compadd() { [[ $1 == -- ]] && shift; print -rl -- "$@"; }; '
            'compset() { PREFIX=${PREFIX#*://}; }; _files() { print -r -- "<files>"; }; '
            'words=(${(s: :)1}); [[ $1 == *" " ]] && words+=(""); CURRENT=${#words}; '
            f"source {script}"
        )
        run = ["zsh", "-f", "-c", program, "_", line]
    result = subprocess.run(run, cwd=cwd, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_offers_commands_options_and_values(shell: str, tmp_path: Path) -> None:
    if shutil.which(shell) is None:
        pytest.fail(f"{shell} is not installed (.ci/run installs it)")
    assert "call" in completions(shell, "attrgate ", tmp_path)
    options = completions(shell, "attrgate call --", tmp_path)
    for option in ("--user-pool-id", "--user-attributes", "--cli-input-json", "--output"):
        assert option in options
    assert "--profile" not in options
    assert completions(shell, "attrgate call --output ", tmp_path) == [
        *("json", "text", "table", "yaml")
    ]
    assert "usage" in completions(shell, "attrgate sms ", tmp_path)


def test_bash_completes_file_names_after_file_scheme(tmp_path: Path) -> None:
    (tmp_path / "attributes.json").write_text("[]")
    (tmp_path / "other.txt").write_text("")
    # bash splits the word at ':', so the reply completes what follows `file:`.
    assert completions("bash", "attrgate call --user-attributes file://attr", tmp_path) == [
        "//attributes.json"
    ]
    assert completions("zsh", "attrgate call --user-attributes file://attr", tmp_path) == [
        "<files>"
    ]
