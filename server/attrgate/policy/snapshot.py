"""Read a policy file or folder as one consistent snapshot of bytes, refusing what could wedge,
flood or loop the server.

A Kubernetes ConfigMap volume is a timestamped folder, a `..data` symlink to it that the kubelet
swaps by rename, and top-level symlinks through `..data`. Reading file by file through those links
can mix two versions. So the root is resolved once (through `..data` when there is one), every file
is read from the resolved folder, and the whole read starts again when, afterwards, the root
resolves elsewhere or a file's identity (device, inode, size, mtime) changed.

Only regular files are opened, and only after `stat` said so (a FIFO would block the open, a
device would never end); symlinks must stay inside the resolved root; sizes are checked before
anything is read, and reads are bounded in case a file grows meanwhile.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from attrgate.files import NotRegularFile, read_regular

POLICY_SUFFIXES = (".yaml", ".yml")
DEFAULT_MAX_BYTES = 2 * 1024 * 1024
ATTEMPTS = 5
MAX_DEPTH = 32  # folders below the root
MAX_ENTRIES = 100_000  # names listed in all folders together
CONFIGMAP_LINK = "..data"
# Policy tests live beside the policies: `*_test.yaml` suites, fixtures in `testdata/` folders.
# A policy read (serve, check) skips both; a test read (attrgate test) takes the suites too.
TEST_SUFFIXES = ("_test.yaml", "_test.yml")
TEST_DATA = "testdata"


def is_test_file(name: str) -> bool:
    return name.endswith(TEST_SUFFIXES)


def path_order(relative: str) -> list[str]:
    """The order a set's files are read in, hashed into its revision and reported in: by path
    component (`a/x.yaml` before `a-b/x.yaml`), the same from a folder as from a bundle."""
    return relative.split(os.sep)


_Identity = tuple[int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns


@dataclass(frozen=True)
class SourceFile:
    label: str  # the path the operator knows: the root as given joined with `relative`
    relative: str  # below the root ("team/a.yaml"); a root that is a file: its name
    data: bytes


@dataclass(frozen=True)
class Problem:
    label: str
    message: str


@dataclass(frozen=True)
class Snapshot:
    """The files of one version of the folder, and what was refused in it."""

    files: list[SourceFile]
    problems: list[Problem]


class _Changed(Exception):
    """The files changed under the read: start again."""


@dataclass(frozen=True)
class _Entry:
    label: str
    relative: str
    real: str  # the canonical path to open, inside the resolved root
    identity: _Identity


@dataclass
class _Listing:
    base: str  # the resolved root
    entries: list[_Entry] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    oversized: bool = False


def read_snapshot(
    root: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES, tests: bool = False
) -> Snapshot:
    """Every policy file below `root` (or `root` itself), read from one version of the folder;
    with `tests`, the `*_test.yaml` files below it too (never `testdata/` folders: fixtures).
    Problems name the file by the path the operator knows; none needs a traceback."""
    given = Path(root)
    for attempt in range(ATTEMPTS):
        try:
            listing = _list(given, max_bytes, tests)
            if listing.oversized:
                return Snapshot([], listing.problems)  # refused before reading anything
            files: list[SourceFile] = []
            problems = list(listing.problems)
            for entry in listing.entries:
                read = _read(entry, max_bytes)
                if isinstance(read, SourceFile):
                    files.append(read)
                else:
                    problems.append(read)
            if _list(given, max_bytes, tests) != listing:
                raise _Changed
        except _Changed:
            time.sleep(0.01 * (attempt + 1))  # let a writer finish its rename or copy
            continue
        return Snapshot(files, problems)
    message = (
        f"the policy files kept changing while being read ({ATTEMPTS} attempts); "
        "write them elsewhere and rename them into place"
    )
    return Snapshot([], [Problem(str(given), message)])


def _list(given: Path, max_bytes: int, tests: bool) -> _Listing:
    """What a read would open (resolved paths and identities) and what it refuses."""
    try:
        base = os.path.realpath(given, strict=True)
        if os.path.isdir(os.path.join(base, CONFIGMAP_LINK)):
            base = os.path.realpath(os.path.join(base, CONFIGMAP_LINK), strict=True)
        info = os.stat(base)
    except OSError as exc:
        return _Listing("", problems=[Problem(str(given), _os_message(exc))])
    listing = _Listing(base)
    if stat.S_ISDIR(info.st_mode):
        _Walk(given, listing, tests).run(_key(info))
    elif stat.S_ISREG(info.st_mode):
        listing.entries.append(_Entry(str(given), given.name, base, _identity(info)))
    else:
        listing.problems.append(Problem(str(given), _not_regular(info.st_mode)))
    _check_sizes(given, listing, max_bytes)
    return listing


_Ancestors = dict[tuple[int, int], str]  # folder identity -> its path below the root


class _Walk:
    """Every policy file below the resolved root, skipping dot entries (`..data`, `..2026_…`,
    editors' swap files). Real folders first; then symlinked folders, each followed if it leads
    to no folder read already (so the link, not the folder, is what gets refused). Iterative and
    bounded (MAX_DEPTH folders deep, MAX_ENTRIES entries): a folder tree of any shape is a
    problem to report, never a crash."""

    def __init__(self, given: Path, listing: _Listing, tests: bool) -> None:
        self.given, self.listing, self.tests = given, listing, tests
        self.seen: _Ancestors = {}
        self.links: list[tuple[str, str, str, tuple[int, int], _Ancestors]] = []
        self.folders: list[tuple[str, str, _Ancestors]] = []  # still to read
        self.entries = 0

    def run(self, root: tuple[int, int]) -> None:
        self.seen[root] = ""
        self.folders.append((self.listing.base, "", {root: ""}))
        self.drain()
        while self.links:
            label, relative, real, key, ancestors = self.links.pop(0)
            if key in ancestors:
                where = ancestors[key] or "the policy folder"
                self.refuse(label, f"symlink loop: leads back to {where}")
            elif key in self.seen:
                self.refuse(label, f"symlink to a folder read already (as {self.seen[key]})")
            else:
                self.seen[key] = relative
                self.folders.append((real, relative, {**ancestors, key: relative}))
                self.drain()
        # The order the revision hashes in, and `attrgate check` prints in: by path.
        self.listing.entries.sort(key=lambda e: path_order(e.relative))
        self.listing.problems.sort(key=lambda p: p.label.split(os.sep))

    def refuse(self, label: str, message: str) -> None:
        self.listing.problems.append(Problem(label, message))

    def drain(self) -> None:
        while self.folders:
            folder, prefix, ancestors = self.folders.pop()
            if len(ancestors) - 1 > MAX_DEPTH:  # the root is one of them, at depth 0
                self.refuse(str(self.given / prefix), f"folders nested deeper than {MAX_DEPTH}")
                continue
            try:
                names = sorted(os.listdir(folder))
            except FileNotFoundError:
                raise _Changed from None  # listed a moment ago: deleted meanwhile (a swap)
            except OSError as exc:
                self.refuse(str(self.given / prefix), _os_message(exc))
                continue
            for name in names:
                if name.startswith(".") or name == TEST_DATA:
                    continue
                if is_test_file(name) and not self.tests:
                    continue
                self.entries += 1
                if self.entries > MAX_ENTRIES:
                    self.folders.clear()
                    self.links.clear()
                    self.refuse(str(self.given), f"more than {MAX_ENTRIES} entries in the folder")
                    return
                self.entry(os.path.join(folder, name), os.path.join(prefix, name), ancestors)

    def entry(self, path: str, relative: str, ancestors: _Ancestors) -> None:
        label = str(self.given / relative)
        policy_name = relative.endswith(POLICY_SUFFIXES)
        real, base = path, self.listing.base
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            raise _Changed from None  # listed a moment ago: deleted meanwhile (a swap)
        except OSError as exc:
            self.refuse(label, _os_message(exc))
            return
        try:
            if stat.S_ISLNK(info.st_mode):
                real = os.path.realpath(path, strict=True)
                info = os.stat(real)
                # Only what would be read matters: a policy file or a folder that may hold some.
                if not (policy_name or stat.S_ISDIR(info.st_mode)):
                    return
                if os.path.commonpath((base, real)) != base:
                    self.refuse(label, f"symlink leads outside the policy folder (to {real})")
                    return
        except FileNotFoundError:
            if policy_name:  # a dangling link (a file deleted since listed: the re-list sees it)
                self.refuse(label, "no such file (a dangling symlink?)")
            return
        except OSError as exc:
            if policy_name or exc.errno == errno.ELOOP:
                self.refuse(label, _os_message(exc))
            return
        if stat.S_ISDIR(info.st_mode):
            key = _key(info)
            if real == path:
                self.seen[key] = relative
                self.folders.append((path, relative, {**ancestors, key: relative}))
            else:
                self.links.append((label, relative, real, key, ancestors))
        elif not policy_name:
            return
        elif stat.S_ISREG(info.st_mode):
            self.listing.entries.append(_Entry(label, relative, real, _identity(info)))
        else:
            self.refuse(label, _not_regular(info.st_mode))


def _check_sizes(given: Path, listing: _Listing, max_bytes: int) -> None:
    """One limit for each file and for the set, so the bytes held in memory stay below it."""
    total = 0
    for entry in listing.entries:
        size = entry.identity[2]
        total += size
        if size > max_bytes:
            listing.oversized = True
            listing.problems.append(
                Problem(entry.label, f"{size} bytes, over the {_LIMIT} of {max_bytes}")
            )
    if total > max_bytes and not listing.oversized:
        listing.oversized = True
        listing.problems.append(
            Problem(
                str(given),
                f"the policy files hold {total} bytes together, over the {_LIMIT} of {max_bytes}",
            )
        )


_LIMIT = "--policy-max-bytes limit"


def _read(entry: _Entry, max_bytes: int) -> SourceFile | Problem:
    """The file `entry` listed, or _Changed when it is no longer that file (a FIFO put in its
    place since the listing does not block the open, and fstat refuses it)."""
    try:
        info, data = read_regular(entry.real, max_bytes, follow_links=False)
    except NotRegularFile:
        raise _Changed from None
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):
            raise _Changed from None  # removed, or replaced by a symlink
        return Problem(entry.label, _os_message(exc))
    if _identity(info) != entry.identity or len(data) != entry.identity[2]:
        raise _Changed  # replaced, or written to since the listing
    return SourceFile(entry.label, entry.relative, data)


def _identity(info: os.stat_result) -> _Identity:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def _key(info: os.stat_result) -> tuple[int, int]:
    return (info.st_dev, info.st_ino)


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str:
    kind = next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")
    return f"refused: {kind}, not a regular file"


def _os_message(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "no such file or folder"
    return f"cannot read: {exc.strerror}"
