"""The JSON Schemas committed under schemas/v1/ are what `attrgate schema` prints today, byte for
byte: a model change without `make schemas` fails here.

Not run by `make test-floors`: another pydantic version may word the same schema differently.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from attrgate.cli import main
from attrgate.policy.jsonschema import BASE_ID, DRAFT
from attrgate.policy.kinds import KIND_NAMES, file_names
from attrgate.policy.load import ALL_KINDS

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "schemas" / "v1"


def test_committed_schemas_are_current(tmp_path: Path) -> None:
    assert main(["schema", "--output-dir", str(tmp_path)]) == 0
    generated = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_bytes() for p in SCHEMAS.iterdir()}
    assert sorted(committed) == sorted(generated), "run `make schemas` and commit schemas/v1/"
    stale = sorted(name for name in generated if generated[name] != committed[name])
    assert not stale, f"stale JSON Schemas {stale}: run `make schemas` and commit schemas/v1/"


def test_one_schema_per_kind_and_one_for_any_document() -> None:
    assert file_names() == {
        "attrgate.json": None,
        **{f"{kind.lower()}.json": kind for kind in ALL_KINDS},
    }
    assert set(ALL_KINDS) == {"AttributePolicy", "SmsGuard", "CognitoQuota", "PolicyTest"}
    for name, kind in file_names().items():
        schema = json.loads((SCHEMAS / name).read_text())
        assert schema["$schema"] == DRAFT
        assert schema["$id"] == BASE_ID + name
        if kind is None:  # any document: one of the kinds, told apart by `kind`
            assert schema["oneOf"] == [{"$ref": f"#/$defs/{k}"} for k in ALL_KINDS]
        else:
            assert schema["properties"]["kind"]["const"] == kind
            assert schema["additionalProperties"] is False


def test_schema_prints_to_standard_output_or_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schema"]) == 0
    assert capsys.readouterr().out == (SCHEMAS / "attrgate.json").read_text()
    assert main(["schema", "SmsGuard"]) == 0
    assert capsys.readouterr().out == (SCHEMAS / "smsguard.json").read_text()
    out = tmp_path / "deep" / "policytest.json"
    assert main(["schema", "PolicyTest", "--output", str(out)]) == 0
    assert out.read_bytes() == (SCHEMAS / "policytest.json").read_bytes()
    assert capsys.readouterr().out == ""


def test_schema_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["schema", "Policy"])
    assert exited.value.code == 2
    assert "invalid choice: 'Policy'" in capsys.readouterr().err
    assert main(["schema", "SmsGuard", "--output-dir", str(tmp_path)]) == 2
    assert "give no KIND" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["schema", "--output", str(blocker / "attrgate.json")]) == 1
    assert f"cannot write {blocker / 'attrgate.json'}" in capsys.readouterr().err


def test_the_cli_knows_every_kind_the_loader_validates() -> None:
    """`attrgate schema` lists the kinds by name without importing the models."""
    assert set(KIND_NAMES) == set(ALL_KINDS)
