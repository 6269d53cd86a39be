"""Loading the policy set, at start and again on SIGHUP: one consistent snapshot, compiled, and
swapped into the pipeline whole, or rejected in one line while the serving set stays."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable, Iterator

from attrgate.config import ConfigError
from attrgate.pipeline import Pipeline
from attrgate.policy.compile import PolicySet, compile_policy_set
from attrgate.policy.load import load_policy_set
from attrgate.policy.snapshot import DEFAULT_MAX_BYTES

log = logging.getLogger("attrgate")
# A set at --policy-max-bytes loads in a second or two; a reload taking far longer is rejected.
RELOAD_TIMEOUT = 30.0


def load_policies(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> PolicySet:
    """Load one consistent snapshot and compile it, or raise ConfigError with the first error in
    one line."""
    # Loading builds many small objects and collects none: the cyclic GC's passes would only
    # add time (a 2 MiB set: ~2x). Paused for the load, whatever thread runs it.
    with _gc_paused():
        result = load_policy_set(path, max_bytes)
        if not result.ok:
            more = len(result.errors) - 1
            suffix = f" (and {more} more; run `attrgate check {path}`)" if more else ""
            raise ConfigError(f"invalid policy set: {result.errors[0]}{suffix}")
        return compile_policy_set(result.policies, result.revision)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class PolicyReloader:
    """Reloads run one at a time; `refuse` says why a loaded set cannot serve here (e.g.
    SmsGuards on a server started without a counting store), or None."""

    def __init__(
        self,
        path: str,
        max_bytes: int,
        pipeline: Pipeline,
        counted: Callable[[str], None],
        refuse: Callable[[PolicySet], str | None],
        timeout: float = RELOAD_TIMEOUT,
    ) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._pipeline = pipeline
        self._counted = counted  # told "loaded" or "rejected"
        self._refuse = refuse
        self.timeout = timeout
        self._lock = asyncio.Lock()

    async def reload(self) -> bool:
        """Load the policy files again and swap the new set in whole; or, when they do not load,
        keep serving the current set and say why in one line. Requests already deciding finish
        under the set they started with."""
        pipeline, path = self._pipeline, self._path
        async with self._lock:
            serving = pipeline.policy_set
            try:
                # Off the event loop: a large set takes a while to parse and compile. The thread
                # cannot be stopped, but the snapshot reader opens nothing that blocks and reads
                # at most --policy-max-bytes, so it ends; a reload still never waits past this.
                loading = asyncio.to_thread(load_policies, path, self._max_bytes)
                try:
                    fresh = await asyncio.wait_for(loading, self.timeout)
                except TimeoutError:
                    raise ConfigError(
                        f"loading {path} took longer than {self.timeout:g}s"
                    ) from None
                refusal = self._refuse(fresh)
                if refusal:
                    raise ConfigError(refusal)
            except Exception as exc:  # whatever the files hold, the server keeps serving
                self._counted("rejected")
                log.error(
                    "policy reload rejected; still serving revision %s: %s",
                    serving.revision,
                    exc,
                    # A ConfigError says all; anything else is a bug worth its traceback.
                    exc_info=not isinstance(exc, ConfigError),
                )
                return False
            pipeline.policy_set = fresh
            self._counted("loaded")
            log.info(
                "policies reloaded: revision %s (%d documents); was %s",
                fresh.revision,
                fresh.size,
                serving.revision,
            )
            return True
