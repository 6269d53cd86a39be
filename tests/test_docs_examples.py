"""The example outputs of docs/policy-testing.md are what the commands print today.

Every ```console block of the page with a `$ attrgate ...` line is run, command by command, in a
process of its own (the installed `attrgate`) from the repository root, against the shipped
`policies/`: its stdout must be the text the block shows below the command, and a `$ echo $?`
line the exit code. A change of the policies (a line moved, a revision, a decision) that changes
a documented output fails here, the diff naming the block's line.

Conventions of the page's source:

- `...` stands for what changes from run to run (timings, timestamps, decision ids) or was cut:
  a line holding only `...` for any number of lines, `...` within a line for any text on it.
- `<!-- not run: WHY -->` on the line before a block: not run (it needs a server).
- `<!-- run with: NAME ... -->` on the line before a block: its commands run in a scratch folder
  holding NAME: a file the page writes earlier (a ```yaml or ```json block right after a line
  that begins with `` `NAME`: `` or `` `NAME`, ``, or the output of a `$ cat NAME` block), or one of
  FOLDERS below. The repository's entries the commands name (`policies`) are linked in beside them.
- A runnable block holds only `$ attrgate ...` commands (continued with a trailing `\\`), each
  followed by its output, and `$ echo $?` lines. A block that needs a server and does not say
  so fails (nothing listens).

The README's `make run` example shows the revision of the shipped policies: checked here too.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from attrgate.policy.load import load_policy_set
from support.analyze_sets import REPO, attrgate_command

PAGE = REPO / "docs" / "policy-testing.md"
RUN_WITH = re.compile(r"<!-- run with: (.+?) -->")
NOT_RUN = re.compile(r"<!-- not run: \S.*? -->")
WRITES = re.compile(r"`([\w./-]+)`[,:]")


def _misspelt_role(folder: Path) -> None:
    """ptdoc/: the shipped policies and suites with the deny entry `custom:role` of
    profile-service.yaml misspelt `custom:rol` (the failing run the page shows)."""
    shutil.copytree(REPO / "policies", folder / "ptdoc")
    policy = folder / "ptdoc" / "profile-service.yaml"
    text = policy.read_text()
    assert text.count('- attribute: "custom:role"\n') == 1, "the deny entry the page misspells"
    policy.write_text(text.replace('- attribute: "custom:role"\n', '- attribute: "custom:rol"\n'))


FOLDERS: dict[str, Callable[[Path], None]] = {"ptdoc/": _misspelt_role}


@dataclass(frozen=True)
class Step:
    command: str  # as the page shows it, continuation lines joined
    output: str  # the text shown under it
    exit_code: int | None  # `$ echo $?`, when shown


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    section: str
    steps: tuple[Step, ...]
    files: dict[str, str]  # the scratch folder's own files: path -> content
    folders: tuple[str, ...]  # names in FOLDERS


def _fences(text: str) -> Iterator[tuple[int, str, str, str]]:
    """(line of the opening fence, language, body, the last non-blank line before the fence) of
    every fenced block, and `##` headings as (line, "#", heading, "")."""
    lines = text.splitlines(keepends=True)
    before = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            yield i + 1, "#", line[3:].strip(), ""
        if line.startswith("```"):
            end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip("\n") == "```")
            yield i + 1, line[3:].strip(), "".join(lines[i + 1 : end]), before
            before, i = "", end + 1
            continue
        if line.strip():
            before = line.strip()
        i += 1


def _steps(body: str, line: int) -> tuple[Step, ...]:
    steps: list[Step] = []
    command: list[str] = []
    output: list[str] = []
    exit_code: int | None = None

    def close() -> None:
        if command:
            steps.append(Step(" ".join(command), "".join(output), exit_code))

    lines = iter(body.splitlines(keepends=True))
    for text in lines:
        if not text.startswith("$ "):
            output.append(text)
            continue
        if text.strip() == "$ echo $?":
            exit_code = int(next(lines))
            continue
        close()
        command, output, exit_code = [], [], None
        while text.rstrip("\n").endswith("\\"):
            command.append(text.rstrip("\n")[:-1].strip())
            text = next(lines)
        command.append(text.strip())
        assert command[0].startswith("$ attrgate "), (
            f"{PAGE.name}:{line}: a runnable block holds only `$ attrgate` and `$ echo $?`"
        )
    close()
    return tuple(steps)


def blocks() -> list[Block]:
    """The page's runnable blocks, in order."""
    written: dict[str, str] = {}
    found: list[Block] = []
    section = ""
    for line, language, body, before in _fences(PAGE.read_text()):
        if language == "#":
            section = body
            continue
        if language in ("yaml", "json") and (file := WRITES.match(before)):
            written[file.group(1)] = body
        if language != "console" or NOT_RUN.fullmatch(before):
            continue
        if body.startswith("$ cat "):
            name, content = body[len("$ cat ") :].split("\n", 1)
            written[name.strip()] = content
            continue
        if not re.search(r"^\$ attrgate ", body, re.MULTILINE):
            continue
        names = m.group(1).split() if (m := RUN_WITH.fullmatch(before)) else []
        unknown = [n for n in names if n not in written and n not in FOLDERS]
        assert not unknown, f"{PAGE.name}:{line}: run with {unknown}: not written above"
        files = {n: written[n] for n in names if n in written}
        folders = tuple(n for n in names if n in FOLDERS)
        found.append(Block(line, section, _steps(body, line), files, folders))
    return found


BLOCKS = blocks()


def _scratch(block: Block, root: Path) -> Path:
    """Where the block's commands run: the repository root, or a folder of its own holding the
    files it is run with, and links to the repository's entries its commands name."""
    if not block.files and not block.folders:
        return REPO
    folder = root / f"line{block.line}"
    folder.mkdir()
    for name, content in block.files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(content)
    for name in block.folders:
        FOLDERS[name](folder)
    for step in block.steps:
        for argument in shlex.split(step.command)[2:]:
            top = argument.split("/")[0]
            if top and (REPO / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(REPO / top)
    return folder


def _run(step: Step, cwd: Path) -> subprocess.CompletedProcess[str]:
    return attrgate_command(*shlex.split(step.command)[2:], cwd=cwd)


@pytest.fixture(scope="module")
def ran(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[tuple[int, int], Future[subprocess.CompletedProcess[str]]]]:
    """Every command of the page, started at once, as many at a time as there are cores (each is
    a fresh interpreter importing attrgate: most of its time)."""
    root = tmp_path_factory.mktemp("docs")
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        yield {
            (block.line, n): pool.submit(_run, step, cwd)
            for block in BLOCKS
            for cwd in [_scratch(block, root)]
            for n, step in enumerate(block.steps)
        }


def shown(text: str) -> re.Pattern[str]:
    """The output a block shows as a pattern: `...` alone on a line, any lines; in a line, any
    text on that line; everything else to the letter."""
    parts = []
    for line in text.splitlines(keepends=True):
        if line.strip() == "...":
            parts.append(r"(?:.*\n)*?")
        else:
            parts.append(".*?".join(re.escape(piece) for piece in line.split("...")))
    return re.compile("".join(parts))


def test_the_page_has_runnable_blocks_in_each_command_section() -> None:
    assert {b.section for b in BLOCKS} >= {"attrgate test", "attrgate explain", "attrgate analyze"}
    assert sum(len(b.steps) for b in BLOCKS) >= 10


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: f"line{b.line}")
def test_the_block_shows_what_its_commands_print(
    block: Block, ran: dict[tuple[int, int], Future[subprocess.CompletedProcess[str]]]
) -> None:
    for n, step in enumerate(block.steps):
        result = ran[block.line, n].result()
        if not shown(step.output).fullmatch(result.stdout):
            diff = "".join(
                difflib.unified_diff(
                    step.output.splitlines(keepends=True),
                    result.stdout.splitlines(keepends=True),
                    f"{PAGE.name}:{block.line} (`...` stands for anything)",
                    "printed now",
                )
            )
            pytest.fail(f"{step.command}\n{diff}\nstderr:\n{result.stderr}", pytrace=False)
        if step.exit_code is not None:
            assert result.returncode == step.exit_code, (step.command, result.stderr)


def test_the_readme_shows_the_revision_of_the_shipped_policies() -> None:
    """`make run` serves policies/: the README's `attrgate call` example shows their revision."""
    readme = (REPO / "README.md").read_text()
    shown_there = set(re.findall(r"policy_revision: (sha256:\w+)", readme))
    assert shown_there == {load_policy_set(REPO / "policies").revision}


def test_the_elisions_match_only_what_they_stand_for() -> None:
    pattern = shown("a\n...\nrevision sha256:...\n2 cases in ... s\n")
    assert pattern.fullmatch("a\nrevision sha256:c16f\n2 cases in 0.04 s\n")
    assert pattern.fullmatch("a\nx\ny\nrevision sha256:c16f\n2 cases in 0.04 s\n")
    assert not pattern.fullmatch("a\nrevision sha256:c16f\n3 cases in 0.04 s\n")
    assert not pattern.fullmatch("a\nrevision sha256:c16f\n2 cases in 0.04\n s\n")
    assert not shown("ok\n").fullmatch("ok\nmore\n")
