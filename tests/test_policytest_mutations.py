"""The shipped suites have teeth: break any entry of the example policies (remove it, loosen or
tighten one of its constraints, drop an allowKeys key) and `attrgate test policies/` fails with
exit 4 and a diff naming the case that caught it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from attrgate.cli import main
from attrgate.policy.yamlsource import read_documents

EXAMPLES = Path(__file__).resolve().parent.parent / "policies"
POLICY_FILES = ("profile-service.yaml", "verification-service.yaml")
GUARD_FILES = ("sms-guard.yaml",)  # the country rule; counted limits need a store
# Loosening these changes nothing any request can show: validation already refuses every
# phone_number that is not E.164, so the entry's `format: e164` never decides.
EQUIVALENT = {("profile-service", "allow", "phone_number", "format")}


@dataclass(frozen=True)
class Mutation:
    file: str
    document: int
    policy: str
    what: str  # for the test id: "profile-service deny[0] removed"
    path: tuple[str | int, ...]  # below spec: the entry, or the constraint
    change: str  # remove | drop | tighten | false

    def apply(self, documents: list[dict[str, Any]]) -> None:
        *parents, last = self.path
        node: Any = documents[self.document]["spec"]
        for part in parents:
            node = node[part]
        if self.change in ("remove", "drop"):
            del node[last]
        elif self.change == "false":
            node[last] = False
        elif isinstance(node[last], int):
            node[last] -= 1
        else:
            node[last] = node[last][:-1]


def mutations() -> Iterator[Mutation]:
    for file in POLICY_FILES:
        for index, document in enumerate(read_documents((EXAMPLES / file).read_text())):
            name, spec = document.value["metadata"]["name"], document.value["spec"]
            for key in ("allow", "deny"):
                for i, entry in enumerate(spec.get(key, [])):
                    label = f"{name} {key}[{i}] {entry['attribute']}"
                    yield Mutation(file, index, name, f"{label} removed", (key, i), "remove")
                    for constraint, value in entry.items():
                        if constraint == "attribute":
                            continue
                        if (name, key, entry["attribute"], constraint) not in EQUIVALENT:
                            what = f"{label} without {constraint}"
                            path = (key, i, constraint)
                            yield Mutation(file, index, name, what, path, "drop")
                        if constraint == "maxLength" or (constraint == "enum" and len(value) > 1):
                            what = f"{label} with a tighter {constraint}"
                            path = (key, i, constraint)
                            yield Mutation(file, index, name, what, path, "tighten")
                        if constraint == "allowEmpty" and value is True:
                            what = f"{label} with allowEmpty false"
                            yield Mutation(file, index, name, what, (key, i, constraint), "false")
            keys = spec.get("clientMetadata", {}).get("allowKeys", [])
            for i, key in enumerate(keys):
                what = f"{name} allowKeys {key} removed"
                path = ("clientMetadata", "allowKeys", i)
                yield Mutation(file, index, name, what, path, "remove")
    for file in GUARD_FILES:
        for index, document in enumerate(read_documents((EXAMPLES / file).read_text())):
            name, spec = document.value["metadata"]["name"], document.value["spec"]
            if "countries" not in spec:
                continue
            yield Mutation(file, index, name, f"{name} countries removed", ("countries",), "remove")
            for rule, listed in spec["countries"].items():
                for i, country in enumerate(listed):
                    what = f"{name} countries.{rule} {country} removed"
                    path = ("countries", rule, i)
                    yield Mutation(file, index, name, what, path, "remove")


ALL = list(mutations())


class _Dumper(yaml.SafeDumper):
    """Money stays exact: the loader reads 0.00883 back as the same Decimal."""


_Dumper.add_representer(
    Decimal, lambda dumper, value: dumper.represent_scalar("tag:yaml.org,2002:float", str(value))
)


def test_every_entry_of_the_examples_is_mutated() -> None:
    """Every allow and deny entry and every allowKeys key of every example policy (the audit
    one too) is removed by one mutation, and every constraint changed by another."""
    removed = {(m.policy, m.path) for m in ALL if m.change == "remove"}
    # The 12 entries `attrgate test --coverage` lists, and the SmsGuard's country rule and
    # each of its countries.
    assert len(removed) == 16
    assert {m.policy for m in ALL} == {
        "profile-service",
        "verification-service",
        "profile-family-name-freeze",
        "default",
    }
    assert len(ALL) == 28  # and 12 that change a constraint


@pytest.mark.parametrize("mutation", ALL, ids=[m.what for m in ALL])
def test_a_broken_entry_fails_a_case_with_a_readable_diff(
    mutation: Mutation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "policies"
    shutil.copytree(EXAMPLES, folder)
    documents = [d.value for d in read_documents((EXAMPLES / mutation.file).read_text())]
    mutation.apply(documents)
    (folder / mutation.file).write_text(yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False))

    code = main(["test", str(folder)])
    out, err = capsys.readouterr()
    assert code == 4, f"no case noticed: {mutation.what}\n{out}{err}"
    failed = re.findall(r"^  FAIL  (.+)\n {8}(\S+_test\.yaml):(\d+): (.+)$", out, re.MULTILINE)
    assert failed, out
    for name, test_file, line, message in failed:
        # The line named holds the case's name (a matrix's cases share their case's line).
        case_line = Path(test_file).read_text().splitlines()[int(line) - 1]
        assert case_line.strip().startswith("- name:")
        assert case_line.split("name:", 1)[1].strip() in name
        assert message.startswith(("expected ", "allow as expected", "deny as expected"))
    diff = [text for text in out.splitlines() if re.match(r" {8}[-+] ", text)]
    assert diff, out
