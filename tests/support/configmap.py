"""A Kubernetes ConfigMap volume, written the way the kubelet's AtomicWriter does it: the files
go into a new timestamped folder (`..2026_12_01_19_44_00.123456789`), a `..data_tmp` symlink to
it is renamed over `..data`, top-level symlinks `NAME -> ..data/NAME` name each file, and the
old folder is removed. Also what the kubelet never does but operators and tests do: files
rewritten in place, the whole folder deleted and re-created."""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

from attrgate.policy.loading import load_policies

DATA = "..data"
_serial = itertools.count()


class ConfigMapVolume:
    def __init__(self, root: Path) -> None:
        self.root = root

    def publish(self, files: dict[str, str]) -> float:
        """Swap `files` in as the volume's new content; time.monotonic() of the `..data`
        rename (the moment the kubelet's swap takes effect)."""
        self.root.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S", time.gmtime())
        folder = self.root / f"..{stamp}.{os.getpid()}{next(_serial):06d}"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        old = self.current()
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(folder.name)
        os.rename(tmp, self.root / DATA)
        swapped = time.monotonic()
        for name in files:
            link = self.root / name
            if not link.is_symlink():
                link.symlink_to(f"{DATA}/{name}")
        for link in self.root.iterdir():
            if link.is_symlink() and link.name not in files and not link.name.startswith(".."):
                link.unlink()
        if old is not None:
            shutil.rmtree(old)
        return swapped

    def current(self) -> Path | None:
        """The timestamped folder `..data` leads to now."""
        data = self.root / DATA
        return self.root / os.readlink(data) if data.is_symlink() else None

    def delete(self) -> None:
        shutil.rmtree(self.root)


def revision_of(files: dict[str, str], scratch: Path) -> str:
    """The revision attrgate gives these files (relative names and bytes), loaded by its own
    loader from a scratch folder."""
    scratch.mkdir(parents=True, exist_ok=True)
    for old in scratch.iterdir():
        old.unlink()
    for name, text in files.items():
        (scratch / name).write_text(text)
    return load_policies(str(scratch)).revision
