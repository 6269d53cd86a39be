"""`attrgate call` against the AWS CLI itself (the `awscli` package, its own parser and
formatters, run in this process): the same argument vectors must build the same request, field
by field, or be refused by both; the same response must print the same in json, text and table.
Nothing here reaches a network: the AWS CLI's call is captured before it is sent. The reference
is the AWS CLI v1 (the `awscli` package on PyPI): what only v2 has (`--cli-input-yaml`, the
`yaml` output, exit codes 252-255) is compared with what v1 does for its JSON twin, or tested in
test_call_cli.py."""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any

import jmespath
import pytest
from awscli.clidriver import create_clidriver
from awscli.formatter import get_formatter
from awscli.shorthand import ShorthandParser
from botocore.awsrequest import AWSResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attrgate import callcmd
from attrgate.clicompat import answers, output, params, shorthand
from attrgate.v1 import attrgate_pb2 as pb

EVENT = "cognito-identity-provider.AdminUpdateUserAttributes"


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_DEFAULT_OUTPUT", raising=False)
    monkeypatch.chdir(tmp_path)


def aws(*argv: str) -> dict[str, Any] | None:
    """The request the AWS CLI builds from `aws cognito-idp admin-update-user-attributes ARGV`
    (None when it refuses the command line), captured before anything is sent."""
    driver = create_clidriver()
    captured: dict[str, Any] = {}

    def capture(params: dict[str, Any], **_: Any) -> None:
        captured["params"] = json.loads(json.dumps(params))

    def answer(**_: Any) -> tuple[AWSResponse, dict[str, Any]]:
        return AWSResponse("https://cognito-idp.invalid", 200, {}, None), {}

    driver.session.register(f"before-parameter-build.{EVENT}", capture)
    driver.session.register(f"before-call.{EVENT}", answer)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            status = driver.main(["cognito-idp", "admin-update-user-attributes", *argv])
        except SystemExit as exc:  # argparse's own refusals
            status = exc.code
    return captured.get("params") if status == 0 else None


def ours(*argv: str) -> dict[str, Any] | None:
    """The request `attrgate call ARGV` builds (None when it refuses the command line)."""
    try:
        return callcmd.build_request(callcmd.parser().parse_args(list(argv)))
    except (callcmd.UsageError, params.ParamError):
        return None


BASE = ("--user-pool-id", "us-east-1_Pool", "--username", "ada")
BUILT: dict[str, tuple[str, ...]] = {
    "shorthand, two attributes": (
        *BASE,
        *("--user-attributes", "Name=given_name,Value=Ada", "Name=family_name,Value=Lovelace"),
    ),
    "shorthand, blanks around": (*BASE, "--user-attributes", "Name = given_name , Value = Ada "),
    "a value with blanks": (*BASE, "--user-attributes", "Name=name,Value=Ada King Lovelace"),
    "a quoted comma": (*BASE, "--user-attributes", 'Name=address,Value="1 Main St, Oslo"'),
    "an escaped comma": (*BASE, "--user-attributes", r"Name=address,Value=1 Main St\, Oslo"),
    "a single-quoted comma": (*BASE, "--user-attributes", "Name=address,Value='a,b'"),
    "an equals sign": (*BASE, "--user-attributes", "Name=custom:eq,Value=a=b=c"),
    "quotes inside quotes": (*BASE, "--user-attributes", r'Name=nickname,Value="say \"hi\""'),
    "a quote of the other kind": (*BASE, "--user-attributes", 'Name=nickname,Value="it\'s"'),
    "a backslash": (*BASE, "--user-attributes", r"Name=nickname,Value='a\\b'"),
    "unicode": (*BASE, "--user-attributes", "Name=name,Value=Åsa 日本語"),
    "an emoji, quoted": (*BASE, "--user-attributes", 'Name=name,Value="Åsa 🚀"'),
    "an empty value": (*BASE, "--user-attributes", "Name=middle_name,Value="),
    "JSON list": (
        *BASE,
        "--user-attributes",
        '[{"Name": "given_name", "Value": "Ada, Countess"}, {"Name": "locale", "Value": "é"}]',
    ),
    "JSON objects, one per word": (
        *BASE,
        *("--user-attributes", '{"Name": "a", "Value": "1"}', '{"Name": "b", "Value": "2"}'),
    ),
    "metadata shorthand": (
        *BASE,
        *("--user-attributes", "Name=given_name,Value=Ada"),
        *("--client-metadata", "source=runbook,ticket=OPS-1"),
    ),
    "metadata quoted": (
        *BASE,
        *("--user-attributes", "Name=given_name,Value=Ada"),
        *("--client-metadata", 'note="a,b",k=v'),
    ),
    "metadata JSON": (
        *BASE,
        *("--user-attributes", "Name=given_name,Value=Ada"),
        *("--client-metadata", '{"source": "runbook", "n": "ü"}'),
    ),
    "cli-input-json, the command line wins": (
        *("--username", "grace", "--user-attributes", "Name=given_name,Value=Grace"),
        "--cli-input-json",
        '{"UserPoolId": "us-east-1_Pool", "Username": "ada", '
        '"UserAttributes": [{"Name": "x", "Value": "y"}], "ClientMetadata": {"k": "v"}}',
    ),
    "cli-input-json alone": (
        "--cli-input-json",
        '{"UserPoolId": "p_1", "Username": "u", "UserAttributes": []}',
    ),
}
REFUSED: dict[str, tuple[str, ...]] = {
    # Words no option took: never sent as attributes.
    "a word after --": (*BASE, "--user-attributes", "Name=a,Value=b", "--", "Name=c,Value=d"),
    "a second metadata word": (
        *(*BASE, "--user-attributes", "Name=a,Value=b"),
        *("--client-metadata", "a=1", "b=2"),
    ),
    "a stray word": (*BASE, "extra=1", "--user-attributes", "Name=a,Value=b"),
    "an equals-joined option and a stray word": (
        *BASE,
        *("--user-attributes=Name=email,Value=a@b.c", "Name=name,Value=x"),
    ),
    # Beyond the Basic Multilingual Plane, a bare value stops: quote it (as above).
    "an emoji, bare": (*BASE, "--user-attributes", "Name=name,Value=Åsa 🚀"),
    "a blank before the first key": (*BASE, "--user-attributes", " Name=given_name,Value=Ada"),
    "an unquoted comma in a value": (*BASE, "--user-attributes", "Name=address,Value=a,b"),
    "an unknown key": (*BASE, "--user-attributes", "Name=a,Value=b,Verified=true"),
    "a list where a string belongs": (*BASE, "--user-attributes", "Name=a,Value=[b]"),
    "a duplicate key": (*BASE, "--user-attributes", "Name=a,Name=b"),
    "no equals sign": (*BASE, "--user-attributes", "given_name"),
    "an unclosed quote": (*BASE, "--user-attributes", "Name=a,Value='b"),
    "a trailing comma": (*BASE, "--user-attributes", "Name=a,Value=b,"),
    "invalid JSON": (*BASE, "--user-attributes", '[{"Name": "a",'),
    "metadata as a list": (
        *BASE,
        *("--user-attributes", "Name=a,Value=b", "--client-metadata", "k=a,b"),
    ),
    "metadata not JSON": (*BASE, "--user-attributes", "Name=a,Value=b", "--client-metadata", "{x"),
    "a required option missing": ("--user-pool-id", "p_1", "--user-attributes", "Name=a,Value=b"),
    "cli-input-json not JSON": ("--cli-input-json", "{"),
    "cli-input-json without a required member": ("--cli-input-json", '{"UserPoolId": "p"}'),
}


@pytest.mark.parametrize("argv", BUILT.values(), ids=BUILT.keys())
def test_the_same_request_as_the_aws_cli(argv: tuple[str, ...]) -> None:
    theirs = aws(*argv)
    assert theirs is not None, "the AWS CLI refused it"
    assert ours(*argv) == theirs


@pytest.mark.parametrize("argv", REFUSED.values(), ids=REFUSED.keys())
def test_refused_as_by_the_aws_cli(argv: tuple[str, ...]) -> None:
    assert aws(*argv) is None, "the AWS CLI accepted it"
    assert ours(*argv) is None


def test_files_as_the_aws_cli_reads_them(tmp_path: Path) -> None:
    (tmp_path / "attributes.json").write_text(
        '[{"Name": "given_name", "Value": "Ada"}, {"Name": "nickname", "Value": "a,b=c"}]'
    )
    (tmp_path / "attributes.txt").write_text("Name=given_name,Value=Ada\n")
    (tmp_path / "username.txt").write_text("ada\n")  # the newline stays, as in the AWS CLI
    (tmp_path / "input.json").write_text(
        '{"UserPoolId": "p_1", "Username": "u", "UserAttributes": [{"Name": "a", "Value": "b"}]}'
    )
    (tmp_path / "value.txt").write_text("from a file, with a comma")
    vectors = [
        (*BASE, "--user-attributes", "file://attributes.json"),
        # Shorthand in a file: the AWS CLI makes no list of it, and refuses it.
        (*BASE, "--user-attributes", f"file://{tmp_path}/attributes.txt"),
        (
            *("--user-pool-id", "p_1", "--username", "file://username.txt"),
            *("--user-attributes", "Name=a,Value=b"),
        ),
        ("--cli-input-json", "file://input.json"),
        (*BASE, "--user-attributes", "Name=nickname,Value@=file://value.txt"),
        (*BASE, "--user-attributes", "file://missing.json"),  # refused by both
    ]
    for argv in vectors:
        theirs = aws(*argv)
        assert ours(*argv) == theirs, argv
    assert ours(*vectors[2])["Username"] == "ada\n"  # type: ignore[index]
    assert ours(*vectors[1]) is None
    assert ours(*vectors[0])["UserAttributes"][1]["Value"] == "a,b=c"  # type: ignore[index]


def test_cli_input_yaml_reads_what_json_does() -> None:
    """The AWS CLI v1 has no --cli-input-yaml: the same document in YAML builds what the JSON
    document builds there."""
    document = {
        "UserPoolId": "p_1",
        "Username": "ü",
        "UserAttributes": [{"Name": "a", "Value": "x: y"}],
    }
    yaml_text = "UserPoolId: p_1\nUsername: ü\nUserAttributes:\n  - Name: a\n    Value: 'x: y'\n"
    assert ours("--cli-input-yaml", yaml_text) == aws("--cli-input-json", json.dumps(document))
    assert ours("--cli-input-yaml", "[a") is None
    assert ours("--cli-input-yaml", "- a\n- b\n") is None  # not a mapping


def test_the_input_skeleton_is_the_aws_clis(capsys: pytest.CaptureFixture[str]) -> None:
    driver = create_clidriver()
    with contextlib.redirect_stdout(io.StringIO()) as theirs:
        assert (
            driver.main(["cognito-idp", "admin-update-user-attributes", "--generate-cli-skeleton"])
            == 0
        )
    assert callcmd.main(["--generate-cli-skeleton"]) == 0
    assert capsys.readouterr().out == theirs.getvalue()
    # The output skeleton has the shape of a real answer (the AWS CLI v1 would call the service).
    assert callcmd.main(["--generate-cli-skeleton", "output"]) == 0
    skeleton = json.loads(capsys.readouterr().out)["Attrgate"]
    answer = answers.updated(
        pb.UpdateUserAttributesResponse(decision=pb.Decision(would_deny=[pb.Violation()]))
    )
    assert set(skeleton) == set(answer)
    assert set(skeleton["WouldDeny"][0]) == set(answer["WouldDeny"][0])
    assert callcmd.main(["--generate-cli-skeleton", "yaml-input"]) == 0
    assert "UserAttributes:\n- Name: ''\n  Value: ''\n" in capsys.readouterr().out


# --- the shorthand parser, on any text ---------------------------------------------------

SHORTHAND_TEXT = st.text(alphabet=st.sampled_from(list("ab:_-=,'\"\\[]{}@ \tüé日🚀.")), max_size=24)


def _awscli_shorthand(text: str) -> Any:
    try:
        return ShorthandParser().parse(text)
    except Exception:  # any refusal: ours must refuse too
        return None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SHORTHAND_TEXT)
def test_shorthand_parses_as_the_aws_cli_on_any_text(text: str) -> None:
    theirs = _awscli_shorthand(text)
    try:
        mine: Any = shorthand.parse(text)
    except shorthand.ShorthandError:
        mine = None
    if mine is None:
        assert not isinstance(theirs, dict), (text, theirs)
    else:
        assert mine == theirs, text


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Name", "Value"]), SHORTHAND_TEXT), max_size=3))
def test_keyed_shorthand_parses_as_the_aws_cli(pairs: list[tuple[str, str]]) -> None:
    text = ",".join(f"{key}={value}" for key, value in pairs)
    theirs = _awscli_shorthand(text)
    try:
        mine: Any = shorthand.parse(text)
    except shorthand.ShorthandError:
        mine = None
    assert mine == (theirs if isinstance(theirs, dict) else None), text


# --- output ------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.text(alphabet=st.sampled_from(list("ab 1,日é-")), max_size=12),
    st.booleans(),
    st.integers(0, 99),
)
KEYS = st.sampled_from(["DecisionId", "Attribute", "Policy", "Reason", "Allowed", "WouldDeny"])
RESPONSES = st.dictionaries(
    KEYS,
    st.one_of(
        SCALARS,
        st.lists(st.text(alphabet="abc", max_size=4), max_size=3),
        st.lists(st.dictionaries(KEYS, SCALARS, min_size=1, max_size=4), max_size=3),
        st.dictionaries(KEYS, SCALARS, max_size=3),
    ),
    max_size=5,
).map(lambda inner: {"Attrgate": inner})
QUERIES = st.sampled_from([None, "Attrgate", "Attrgate.WouldDeny", "Attrgate.*", "keys(Attrgate)"])


def _awscli_prints(fmt: str, response: Any, query: str | None, color: str) -> str | None:
    args = argparse.Namespace(query=jmespath.compile(query) if query else None, color=color)
    out = io.StringIO()
    try:
        get_formatter(fmt, args)("UpdateUserAttributes", copy.deepcopy(response), out)
    except (ValueError, IndexError, TypeError, AttributeError):
        return None  # a shape the AWS CLI's own formatter cannot print
    finally:
        import colorama

        colorama.deinit()  # its ColorizedStyler wraps stdout again at every table
    return out.getvalue()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RESPONSES, QUERIES, st.sampled_from(["json", "text", "table"]), st.booleans())
def test_output_prints_as_the_aws_cli(
    response: dict[str, Any], query: str | None, fmt: str, color: bool
) -> None:
    theirs = _awscli_prints(fmt, response, query, "on" if color else "off")
    if theirs is None:
        return
    mine = io.StringIO()
    output.write("UpdateUserAttributes", response, fmt, output.compile_query(query), mine, color)
    assert mine.getvalue() == theirs


def test_a_wide_table_turns_vertical_as_the_aws_clis() -> None:
    response = {"Attrgate": {k: "x" * 30 for k in ("DecisionId", "PolicyRevision", "Reason")}}
    theirs = _awscli_prints("table", response, None, "off")
    mine = io.StringIO()
    output.write("UpdateUserAttributes", response, "table", None, mine)
    assert mine.getvalue() == theirs
    assert "|  DecisionId" in mine.getvalue()  # one name | value row per key
