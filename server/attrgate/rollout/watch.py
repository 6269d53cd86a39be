"""Reloading a local policy file or folder when it changes.

The kernel's events (inotify, through `watchfiles`) only say *that* something changed; what
changed is read by the reloader as one consistent snapshot (policy/snapshot.py), so every event
kind counts and none is interpreted: a Kubernetes ConfigMap swap (a new `..2026_…` folder, a
`..data_tmp` link renamed over `..data`, the old folder removed) shows up as creates, moves and
deletes of dot entries, an editor's save as a modify or a rename into place.

A reload waits until the path has been quiet for `debounce` seconds, so a writer that truncates
a file and then completes it within the debounce never activates the half-written set; churn
that never stops postpones it at most CHURN_CAP debounces (the snapshot reader then refuses a
set that keeps changing under it).

A watch never leaves the policy folder: watchfiles' recursive watch follows symlinks as it
walks, so a link to `/` in the folder would put a watch on every folder of the host (and use up
the user's inotify watches, for every process). So each real folder inside the resolved root is
watched on its own, not recursively, found by a walk that follows no symlink (folders_to_watch),
and the watch is armed again when that set of folders changes: looked at after any batch that
adds, removes or moves something, and after each reload. A symlink to a folder inside the root
leads to a real folder watched as itself; one that leads out is refused by the loader and never
watched.

An inotify watch dies with the folder it was put on: a folder deleted and re-created, or
replaced by a rename, would go unwatched. The watcher looks at the folder's identity every
`debounce / 4` seconds (at most IDENTITY_EVERY) and at events naming the folder itself, and
re-arms on a new one, reloading after. A path that is missing is reported once per absence
by a reload (the source unavailable: `attrgate status` shows it) and looked for again every
MISSING_RETRY seconds; the server keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass

from watchfiles import Change, awatch

from attrgate.policy.snapshot import CONFIGMAP_LINK, MAX_DEPTH, MAX_ENTRIES, TEST_DATA
from attrgate.reloading import PolicyReloader

log = logging.getLogger("attrgate")
# watchfiles logs every batch of changes at INFO: its news is the reload's log line.
logging.getLogger("watchfiles").setLevel(logging.WARNING)

CHURN_CAP = 10  # debounces a reload may be postponed by events that keep coming
IDENTITY_EVERY = 1.0  # seconds, at most, between two looks at the watched folder's identity
MISSING_RETRY = 1.0  # seconds between looks for a watched folder that is missing
POLL_EVERY_MS = 1000  # when the kernel refuses another watch (inotify limits): polling
STEP_MS = 50  # watchfiles groups the events of one step before handing them over
GROUP_MS = 200  # ... and hands a batch over at least this often while events keep coming
RESTART_FIRST, RESTART_MAX = 1.0, 30.0  # seconds before a failed watcher starts again
STEADY = 60.0  # a watcher that ran this long before failing restarts after RESTART_FIRST again

SINGLE_FILE_NOTE = (
    "policy watch: %s is a single file: changes are picked up only when the file itself is "
    "rewritten or renamed into place; a Kubernetes subPath mount never updates (mount the "
    "ConfigMap as a folder instead)"
)


@dataclass(frozen=True)
class Target:
    """What is watched: a folder and the real folders inside it, or a file's folder of which
    only the file's name, and a ConfigMap's `..data` link it may lead through, matter."""

    folder: str  # absolute, as given (not resolved)
    names: frozenset[str] | None = None  # None: everything below `folder`

    def concerns(self, path: str) -> bool:
        return self.names is None or os.path.basename(path) in self.names


def target_for(path: str) -> Target:
    absolute = os.path.abspath(path)
    if os.path.isdir(absolute):
        return Target(absolute)
    name = os.path.basename(absolute)
    return Target(os.path.dirname(absolute), frozenset({name, CONFIGMAP_LINK}))


def folders_to_watch(target: Target) -> frozenset[str]:
    """The real folders a change of the set can happen in, each to be watched on its own: a
    file's folder; or the folder resolved, `..data`'s target (the root the loader reads), and
    every folder below them that the loader may read (not dot folders, not `testdata`), found
    without following any symlink. Bounded like the snapshot reader: MAX_DEPTH folders deep,
    MAX_ENTRIES names in all (past them the loader refuses the set anyway)."""
    if target.names is not None:
        return frozenset({target.folder})
    root = os.path.realpath(target.folder)
    roots = [root]
    data = os.path.join(root, CONFIGMAP_LINK)
    if os.path.isdir(data):
        roots.append(os.path.realpath(data))
    found: set[str] = set()
    to_list = [(folder, 0) for folder in roots]
    entries = 0
    while to_list:
        folder, depth = to_list.pop()
        if folder in found:
            continue
        found.add(folder)
        if depth >= MAX_DEPTH:
            continue
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    entries += 1
                    if entries > MAX_ENTRIES:
                        return frozenset(found)
                    if entry.name.startswith(".") or entry.name == TEST_DATA:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        to_list.append((entry.path, depth + 1))
        except OSError:
            continue  # gone meanwhile (the arming or the next look sees it), or unreadable
    return frozenset(found)


class Debounce:
    """When a reload is due: `quiet` seconds after the last event, or `cap` seconds after the
    first one that is still waiting, whichever comes first."""

    def __init__(self, quiet: float, cap: float) -> None:
        self.quiet, self.cap = quiet, cap
        self._first: float | None = None
        self._last = 0.0

    def event(self, now: float) -> None:
        if self._first is None:
            self._first = now
        self._last = now

    def due(self, now: float) -> bool:
        if self._first is None:
            return False
        return now - self._last >= self.quiet or now - self._first >= self.cap

    @property
    def waiting(self) -> bool:
        return self._first is not None

    def clear(self) -> None:
        self._first = None


_Identity = tuple[int, int]  # st_dev, st_ino


def _identity(folder: str) -> _Identity | None:
    try:
        info = os.stat(folder)
    except OSError:
        return None
    return info.st_dev, info.st_ino


async def watch_and_reload(reloader: PolicyReloader, debounce: float) -> None:
    """Runs until cancelled: reload `reloader` (force=False: an unchanged set stays, a rejection
    is logged once) whenever its local path changed and then stayed quiet for `debounce`
    seconds. A watcher that fails is logged and started again, never silently gone."""
    path = reloader.source.source
    watcher = _Watcher(reloader, path, debounce)
    if watcher.target.names is not None:
        log.info(SINGLE_FILE_NOTE, path)
    log.info("policy watch: following %s (reload after %gs without changes)", path, debounce)
    delay = RESTART_FIRST
    while True:
        started = time.monotonic()
        try:
            await watcher.run()
            raise RuntimeError("the watch ended by itself")
        except Exception:  # whatever it was, the watcher must come back
            if time.monotonic() - started > STEADY:
                delay = RESTART_FIRST
            log.exception("policy watch of %s failed; starting it again in %gs", path, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RESTART_MAX)


async def _folders(target: Target) -> frozenset[str]:
    if target.names is not None:
        return frozenset({target.folder})  # nothing to walk
    return await asyncio.to_thread(folders_to_watch, target)


class _Watcher:
    def __init__(self, reloader: PolicyReloader, path: str, debounce: float) -> None:
        self.reloader = reloader
        self.path = path
        self.target = target_for(path)
        self.pending = Debounce(debounce, CHURN_CAP * debounce)
        # How often an otherwise quiet watch wakes up: to reload on time, and to notice a
        # folder replaced under it.
        self.wake_ms = max(STEP_MS, int(min(IDENTITY_EVERY, debounce / 4) * 1000))
        self.missing = False
        self.polling = False
        self.reshaped = False  # the last watch ended because folders came or went

    async def run(self) -> None:
        while True:
            identity = await self._wait_for_folder()
            # Anything may have changed while nothing watched (before the first arming too:
            # the set was loaded before the watch began): reload once things are quiet. Armed
            # again because folders came or went, a reload already waiting covers that (it
            # reads after this arming) and is not put off.
            if not (self.reshaped and self.pending.waiting):
                self.pending.event(time.monotonic())
            self.reshaped = False
            try:
                await self._watch(identity)
            except FileNotFoundError:
                continue  # gone between the look and the arming
            except OSError as exc:
                if self.polling:
                    raise
                # The kernel refused another watch (fs.inotify.max_user_watches or
                # max_user_instances): the same, by polling.
                log.warning(
                    "policy watch: cannot watch %s (%s); polling it every %gs instead",
                    self.target.folder,
                    exc,
                    POLL_EVERY_MS / 1000,
                )
                self.polling = True

    async def _wait_for_folder(self) -> _Identity:
        while True:
            identity = _identity(self.target.folder)
            if identity is not None:
                if self.missing:
                    log.info("policy watch: %s is back; watching it again", self.target.folder)
                    self.missing = False
                return identity
            if not self.missing:
                self.missing = True
                # The reload finds the source missing: counted, logged and shown by `attrgate
                # status` until a reload reads it again (once per absence: a reload of the
                # last batch may have reported it already).
                if not self.reloader.status.source_errors:
                    await self.reloader.reload(force=False)
            await asyncio.sleep(MISSING_RETRY)

    async def _watch(self, identity: _Identity) -> None:
        """Until the watched folder is replaced or gone, or the folders inside it change."""
        target = self.target
        folders = await _folders(target)
        changes = awatch(
            *sorted(folders),
            watch_filter=None,  # `..data`, `..2026_…` and other dot entries matter
            recursive=False,  # see folders_to_watch: a recursive watch follows symlinks out
            step=STEP_MS,
            debounce=GROUP_MS,
            rust_timeout=self.wake_ms,
            yield_on_timeout=True,
            force_polling=self.polling,
            poll_delay_ms=POLL_EVERY_MS,
        )
        itself = {target.folder, await asyncio.to_thread(os.path.realpath, target.folder)}
        async with contextlib.aclosing(changes):
            async for batch in changes:
                now = time.monotonic()
                if any(target.concerns(path) for _, path in batch):
                    self.pending.event(now)
                if any(path in itself for _, path in batch):
                    return  # the folder itself was deleted or moved (its inode may come back)
                if _identity(target.folder) != identity:
                    return
                reshaped = any(kind != Change.modified or path in folders for kind, path in batch)
                if reshaped and await _folders(target) != folders:
                    self.reshaped = True
                    return  # arm again, on the folders there are now
                if self.pending.due(now):
                    self.pending.clear()
                    await self.reloader.reload(force=False)
                    # A folder made and renamed into place between two looks leaves no event
                    # that says so to a watch armed after it: look again after each reload.
                    if await _folders(target) != folders:
                        return
