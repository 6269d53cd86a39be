"""Loading policy sets: errors point at file and line; YAML 1.1 typing never bites."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from attrgate.policy.load import load_policy_set
from attrgate.policy.model import AttributePolicy
from support.deadline import deadline

GOOD = """\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata:
  name: {name}
spec:
  callers: [svc]
  userPools: ["*"]
  allow:
    - attribute: given_name
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def errors(root: Path) -> list[str]:
    return [str(e) for e in load_policy_set(root).errors]


def test_example_policies_load() -> None:
    result = load_policy_set(Path(__file__).resolve().parent.parent / "policies")
    assert result.ok, result.errors
    assert {p.document.metadata.name for p in result.policies} >= {"profile-service"}


def test_unknown_key_in_second_document_points_at_its_line(tmp_path: Path) -> None:
    text = GOOD.format(name="a") + "---\n" + GOOD.format(name="b") + "      maxLenght: 5\n"
    path = write(tmp_path / "set.yaml", text)
    # The typo is on the last line of the file.
    line = len(text.splitlines())
    assert errors(path) == [
        f"{path}:{line}: spec.allow[0].maxLenght: unknown key (did you mean maxLength?)"
    ]


def test_wrong_type_invalid_regex_and_missing_key(tmp_path: Path) -> None:
    text = """\
apiVersion: attrgate/v1
kind: AttributePolicy
metadata:
  name: broken
spec:
  callers: [svc]
  allow:
    - attribute: given_name
      maxLength: "64"
    - attribute: nickname
      pattern: "([a-z"
"""
    path = write(tmp_path / "p.yaml", text)
    found = errors(path)
    assert f"{path}:9: spec.allow[0].maxLength: expected an integer" in found
    assert any(
        e.startswith(f"{path}:11: spec.allow[1].pattern: invalid regular expression") for e in found
    )
    assert f"{path}:5: spec.userPools: missing required key" in found
    assert len(found) == 3


def test_yaml_11_booleans_stay_strings_or_fail_clearly(tmp_path: Path) -> None:
    ok = GOOD.format(name="countries").replace(
        "- attribute: given_name", "- attribute: custom:country\n      enum: [NO, on, yes, off]"
    )
    result = load_policy_set(write(tmp_path / "ok" / "p.yaml", ok))
    assert result.ok, result.errors
    policy = result.policies[0].document
    assert isinstance(policy, AttributePolicy)
    assert policy.spec.allow[0].enum == ["NO", "on", "yes", "off"]

    bad = GOOD.format(name="flag").replace(
        "- attribute: given_name", "- attribute: nickname\n      allowEmpty: yes"
    )
    path = write(tmp_path / "bad" / "p.yaml", bad)
    assert errors(path) == [
        f"{path}:10: spec.allow[0].allowEmpty: expected true or false (yes, no, on and off are "
        "strings in YAML 1.2)"
    ]


def test_numbers_where_strings_are_expected_fail(tmp_path: Path) -> None:
    bad = GOOD.format(name="n").replace(
        "- attribute: given_name", "- attribute: custom:level\n      enum: [1, 2]"
    )
    path = write(tmp_path / "p.yaml", bad)
    found = errors(path)
    assert [e.split(": ", 2)[:2] for e in found] == [
        [f"{path}:10", "spec.allow[0].enum[0]"],
        [f"{path}:10", "spec.allow[0].enum[1]"],
    ]
    assert "expected a string" in found[0]


def test_duplicate_name_across_files_names_both(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", GOOD.format(name="same"))
    second = write(tmp_path / "sub" / "b.yml", GOOD.format(name="same"))
    found = errors(tmp_path)
    assert found == [
        f"{second}:4: metadata.name: duplicate policy name 'same' "
        f"(first defined at {tmp_path / 'a.yaml'}:4)"
    ]


def test_duplicate_keys_and_bad_yaml(tmp_path: Path) -> None:
    dup = write(tmp_path / "d" / "p.yaml", GOOD.format(name="x") + "  callers: [other]\n")
    assert errors(dup) == [f"{dup}:10: duplicate key 'callers'"]
    broken = write(tmp_path / "b" / "p.yaml", "apiVersion: attrgate/v1\nkind: [unclosed\n")
    (error,) = errors(broken)
    assert error.startswith(f"{broken}:3: invalid YAML")


def test_unknown_kind_and_api_version(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.yaml",
        GOOD.format(name="a").replace("kind: AttributePolicy", "kind: AttrPolicy")
        + "---\n"
        + GOOD.format(name="b").replace("attrgate/v1", "attrgate/v2"),
    )
    found = errors(path)
    assert (
        found[0] == f"{path}:2: kind: unknown kind 'AttrPolicy' "
        "(known: AttributePolicy, CognitoQuota, PolicyTest, SmsGuard)"
    )
    assert found[1].startswith(f"{path}:11: apiVersion: ")
    assert len(found) == 2


def test_folder_walk_skips_dot_entries_like_configmap_links(tmp_path: Path) -> None:
    # A Kubernetes ConfigMap mount: ..data -> ..2024_01_01/, and name -> ..data/name.
    real = tmp_path / "..2024_01_01"
    write(real / "p.yaml", GOOD.format(name="only-once"))
    os.symlink(real.name, tmp_path / "..data")
    os.symlink("..data/p.yaml", tmp_path / "p.yaml")
    write(tmp_path / ".hidden.yaml", "this: is not a policy")
    write(tmp_path / "notes.txt", "not yaml")
    result = load_policy_set(tmp_path)
    assert result.ok, result.errors
    assert [p.document.metadata.name for p in result.policies] == ["only-once"]


def configmap(mount: Path, files: dict[str, str], version: str = "..2026_12_01_10_00") -> Path:
    """A Kubernetes ConfigMap volume: the files in a timestamped folder, `..data` linking to it,
    and a top-level link through `..data` for each file."""
    mount.mkdir(exist_ok=True)
    for name, text in files.items():
        write(mount / version / name, text)
    os.symlink(version, mount / "..data_tmp")
    os.replace(mount / "..data_tmp", mount / "..data")
    for name in files:
        if not (mount / name).is_symlink():
            os.symlink(f"..data/{name}", mount / name)
    return mount


def test_a_configmap_reads_the_folder_data_links_to_under_the_operators_names(
    tmp_path: Path,
) -> None:
    mount = configmap(tmp_path / "policies", {"p.yaml": GOOD.format(name="a") + "  oops: 1\n"})
    assert errors(mount) == [f"{mount / 'p.yaml'}:10: spec.oops: unknown key"]
    # The same bytes under the same names: the same revision as the folder read directly.
    configmap(mount, {"p.yaml": GOOD.format(name="a")}, "..2026_12_01_10_05")
    assert load_policy_set(mount).revision == load_policy_set(mount / "..2026_12_01_10_05").revision
    # A top-level link the kubelet has not updated yet does not matter: `..data` decides.
    os.remove(mount / "p.yaml")
    os.symlink("..2026_12_01_10_00/p.yaml", mount / "p.yaml")
    assert load_policy_set(mount).ok


def test_symlinked_folders_inside_the_root_are_read_once(tmp_path: Path) -> None:
    write(tmp_path / "shared" / "a.yaml", GOOD.format(name="a"))
    write(tmp_path / ".versions" / "v2" / "b.yaml", GOOD.format(name="b"))
    os.symlink(".versions/v2", tmp_path / "current")  # the only way to its files: followed
    result = load_policy_set(tmp_path)
    assert result.ok, result.errors
    assert [p.file for p in result.policies] == [
        str(tmp_path / "current" / "b.yaml"),
        str(tmp_path / "shared" / "a.yaml"),
    ]
    os.symlink("shared", tmp_path / "linked")  # a second way to shared/: refused, not re-read
    assert errors(tmp_path) == [
        f"{tmp_path / 'linked'}: symlink to a folder read already (as shared)"
    ]
    os.remove(tmp_path / "linked")
    os.symlink("..", tmp_path / "shared" / "up")
    assert errors(tmp_path) == [
        f"{tmp_path / 'shared' / 'up'}: symlink loop: leads back to the policy folder"
    ]


def test_links_that_lead_nowhere_or_outside_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root / "a.yaml", GOOD.format(name="a"))
    write(tmp_path / "outside.yaml", GOOD.format(name="b"))
    os.symlink("../outside.yaml", root / "b.yaml")
    os.symlink("missing.yaml", root / "c.yaml")
    os.symlink("missing", root / "notes")  # not a policy name: ignored
    os.symlink("/etc/passwd", root / "README.txt")  # neither read nor a folder: ignored
    os.symlink("e.yaml", root / "d.yaml")
    os.symlink("d.yaml", root / "e.yaml")
    outside = tmp_path / "outside.yaml"
    assert errors(root) == [
        f"{root / 'b.yaml'}: symlink leads outside the policy folder (to {outside})",
        f"{root / 'c.yaml'}: no such file (a dangling symlink?)",
        f"{root / 'd.yaml'}: symlink loop",
        f"{root / 'e.yaml'}: symlink loop",
    ]


def test_a_folder_tree_of_any_depth_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    """600 folders deep used to exhaust Python's recursion (a traceback on reload, a crash at
    start)."""
    root = tmp_path / "root"
    write(root / "a.yaml", GOOD.format(name="a"))
    deep = root
    for _ in range(600):
        deep = deep / "d"
    deep.mkdir(parents=True)
    write(deep / "b.yaml", GOOD.format(name="b"))
    found = errors(root)
    assert len(found) == 1
    assert found[0].endswith(": folders nested deeper than 32")


@pytest.mark.parametrize(("depth", "refused"), [(32, False), (33, True)])
def test_folders_32_deep_load_and_33_deep_are_refused(
    tmp_path: Path, depth: int, refused: bool
) -> None:
    """The limit the README states: "nested more than 32 deep"."""
    root = tmp_path / "root"
    deep = root
    for _ in range(depth):
        deep = deep / "d"
    write(deep / "b.yaml", GOOD.format(name="b"))
    found = errors(root)
    assert [e.endswith(": folders nested deeper than 32") for e in found] == (
        [True] if refused else []
    )


def test_special_files_are_refused_without_being_opened(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", GOOD.format(name="a"))
    os.mkfifo(tmp_path / "f.yaml")  # opening it would wait for a writer
    with deadline(20, "the load opened the FIFO"):
        found = errors(tmp_path)
    assert found == [f"{tmp_path / 'f.yaml'}: refused: a FIFO, not a regular file"]
    os.symlink("/dev/zero", tmp_path / "zero.yaml")
    assert errors(tmp_path / "zero.yaml") == [
        f"{tmp_path / 'zero.yaml'}: refused: a character device, not a regular file"
    ]


def test_sizes_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    small = write(tmp_path / "set" / "a.yaml", GOOD.format(name="a"))
    write(tmp_path / "set" / "b.yaml", GOOD.format(name="b"))
    size = small.stat().st_size
    assert load_policy_set(tmp_path / "set", max_bytes=2 * size).ok
    assert errors_at(tmp_path / "set", 2 * size - 1) == [
        f"{tmp_path / 'set'}: the policy files hold {2 * size} bytes together, over the "
        f"--policy-max-bytes limit of {2 * size - 1}"
    ]
    # Over the limit, a file is not even parsed: its YAML error goes unreported.
    broken = write(tmp_path / "set" / "c.yaml", "kind: [\n" + "#" * 3 * size)
    assert errors_at(tmp_path / "set", 3 * size) == [
        f"{broken}: {broken.stat().st_size} bytes, over the --policy-max-bytes limit of {3 * size}"
    ]


def errors_at(root: Path, max_bytes: int) -> list[str]:
    return [str(e) for e in load_policy_set(root, max_bytes).errors]


def test_deep_nesting_is_an_error_with_a_line_not_a_crash(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "a: " + "[" * 990 + "]" * 990 + "\n")
    assert errors(path) == [f"{path}:1: invalid YAML: nested too deeply"]


def test_empty_set_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert errors(tmp_path / "empty") == [f"{tmp_path / 'empty'}: no policy documents found"]
    assert errors(tmp_path / "missing") == [f"{tmp_path / 'missing'}: no such file or folder"]


def test_revision_is_a_content_hash(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", GOOD.format(name="a"))
    first = load_policy_set(path).revision
    assert first == load_policy_set(path).revision
    path.write_text(GOOD.format(name="b"))
    assert load_policy_set(path).revision != first
    assert first.startswith("sha256:")


def test_patterns_must_be_re2_syntax(tmp_path: Path) -> None:
    # Backreferences and lookaround have no linear-time match: refused at load.
    text = GOOD.format(name="p").replace(
        "- attribute: given_name", "- attribute: nickname\n      pattern: '(a)\\1'"
    )
    path = write(tmp_path / "p.yaml", text)
    (error,) = errors(path)
    assert error.startswith(
        f"{path}:10: spec.allow[0].pattern: invalid regular expression (RE2 syntax): "
    )


def test_patterns_are_bounded_one_by_one_and_for_the_whole_set(tmp_path: Path) -> None:
    """3,000 distinct `[^a]{N}@` patterns in a 181 KB file took 21 s and 680 MB to compile
    (12,000: minutes and gigabytes). Each pattern and the set's together are bounded, and the
    error points at the pattern that crosses the line."""
    big = write(
        tmp_path / "big" / "p.yaml",
        GOOD.format(name="p") + "    - attribute: nickname\n      pattern: '\\p{L}{1,90}'\n",
    )
    (error,) = errors(big.parent)
    assert ":11: spec.allow[1].pattern: pattern too large: it compiles to " in error

    entries = "".join(
        f"    - attribute: 'custom:a{i}'\n      pattern: '[^a]{{1000}}{i}'\n" for i in range(600)
    )
    many = write(tmp_path / "many" / "p.yaml", GOOD.format(name="p") + entries)
    with deadline(60, "the pattern budget did not stop the compiles"):
        started = time.perf_counter()
        found = errors(many.parent)
        took = time.perf_counter() - started
    assert len(found) > 1
    assert all("more than 2000000 RE2 instructions together" in e for e in found), found[:2]
    # 2,000,000 instructions compile in a few seconds; the 600 patterns would have taken more.
    assert took < 45


def test_patterns_far_too_large_stop_compiling_once_the_set_budget_is_spent(
    tmp_path: Path,
) -> None:
    """A refused pattern used to be compiled whole (`\\p{L}{1,400}`: 480,000 instructions,
    0.25 s) and then not counted, so a file of them ran for minutes. Each refusal now counts
    against the set's budget, and once it is spent nothing more is compiled."""
    entries = "".join(
        f"    - attribute: 'custom:a{i}'\n      pattern: '\\p{{L}}{{1,{200 + i}}}'\n"
        for i in range(150)
    )
    path = write(tmp_path / "p.yaml", GOOD.format(name="p") + entries)
    found = errors(path)
    assert len(found) == 150
    one_by_one = [e for e in found if "pattern too large: it compiles to more than 100000" in e]
    together = [e for e in found if "more than 2000000 RE2 instructions together" in e]
    # 20 refusals spend the 2,000,000; the other 130 are refused without compiling.
    assert len(one_by_one) == 20
    assert len(together) == 130


def test_anchors_and_aliases_are_refused(tmp_path: Path) -> None:
    self_reference = write(
        tmp_path / "a" / "p.yaml", GOOD.format(name="a").replace("[svc]", "&c [svc, *c]")
    )
    assert errors(self_reference) == [
        f"{self_reference}:6: YAML anchors and aliases are not supported"
    ]
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
    )
    bomb = write(tmp_path / "b" / "p.yaml", laughs)
    (error,) = errors(bomb)
    assert error.endswith("YAML anchors and aliases are not supported")


def test_policy_tests_beside_the_policies_are_not_policies(tmp_path: Path) -> None:
    """`*_test.yaml` suites and `testdata/` fixtures live in the policy folder: a policy read
    skips them (a fixture is no policy document), a test read takes the suites, and the
    revision is the same either way."""
    write(tmp_path / "p.yaml", GOOD.format(name="p"))
    suite = (
        "apiVersion: attrgate/v1\nkind: PolicyTest\nmetadata: {name: p}\nspec:\n  cases:\n"
        "    - {name: c, caller: svc, userPool: us-east-1_A, attributes: {a: b}, expect: deny}\n"
    )
    write(tmp_path / "p_test.yaml", suite)
    write(tmp_path / "testdata" / "pool.yaml", "UserPool: {Id: us-east-1_A}\n")
    os.mkfifo(tmp_path / "testdata" / "f.yaml")  # never opened by either read
    policies = load_policy_set(tmp_path)
    with_tests = load_policy_set(tmp_path, tests=True)
    assert policies.ok, policies.errors
    assert with_tests.ok, with_tests.errors
    assert [p.document.metadata.name for p in with_tests.tests] == ["p"]  # type: ignore[attr-defined]
    assert policies.tests == []
    assert policies.revision == with_tests.revision
    write(tmp_path / "p_test.yaml", suite.replace("PolicyTest", "SmsGuard"))
    (error,) = load_policy_set(tmp_path, tests=True).errors
    assert str(error).endswith(
        "p_test.yaml:2: kind: a *_test.yaml file holds PolicyTest documents only, "
        "not kind 'SmsGuard'"
    )
