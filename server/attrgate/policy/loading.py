"""Loading a policy set in one call: one consistent snapshot compiled, or refused with its first
error in one line. Shared by `attrgate check`, the bundle reader and every policy source (below
all of them: it knows no event loop, no reloader and no bundle)."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from attrgate.config import ConfigError
from attrgate.policy.compile import PolicySet, load_and_compile
from attrgate.policy.load import LoadResult
from attrgate.policy.snapshot import DEFAULT_MAX_BYTES


def load_policies(
    path: str, max_bytes: int = DEFAULT_MAX_BYTES, pause_gc: bool = False
) -> PolicySet:
    """Load one consistent snapshot and compile it, or raise ConfigError with the first error in
    one line. `pause_gc`: only before the server serves (the switch is process-wide)."""
    # Loading builds many small objects and collects none: the cyclic GC's passes would only
    # add time (a 2 MiB set: ~2x).
    with gc_paused() if pause_gc else contextlib.nullcontext():
        loaded = load_and_compile(path, max_bytes)
    return compiled_or_refused(loaded, f"attrgate check {path}")


def compiled_or_refused(loaded: tuple[LoadResult, PolicySet | None], command: str) -> PolicySet:
    """The compiled set, or ConfigError with the load's first error in one line (and the
    `command` that lists them all)."""
    result, policy_set = loaded
    if policy_set is None:
        more = len(result.errors) - 1
        suffix = f" (and {more} more; run `{command}`)" if more else ""
        raise ConfigError(f"invalid policy set: {result.errors[0]}{suffix}")
    return policy_set


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
