"""Policy patterns, compiled with RE2 within a budget.

RE2 matches in linear time on any input, so no policy pattern can stall a decision; compiling
still costs time and memory with the size of the program a pattern becomes, so each pattern and
all of a set's together are bounded, and a set's patterns are compiled once (validation and
compilation share them within one `pattern_scope`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import re2

# RE2 runs in linear time, but compiling costs time and memory with the size of the program a
# pattern becomes (`[^a]{1000}@`: 8,000 instructions, about 0.2 MB; 3,000 of those in a 181 KB
# file took 21 s and 680 MB). One pattern and all of a set's together are bounded.
MAX_PATTERN_PROGRAM = 100_000  # `\p{L}{1,64}` is 77,000
MAX_SET_PROGRAM = 2_000_000
# RE2 stops compiling a pattern once its program passes this much memory (about 120,000
# instructions), so one far past MAX_PATTERN_PROGRAM costs 20 ms to refuse, not seconds.
MAX_PATTERN_MEMORY = 2 << 20


class _Patterns:
    """The patterns of one policy set, each compiled once (validation and compilation share
    them), and their program sizes summed."""

    def __init__(self) -> None:
        self.compiled: dict[str, re2._Regexp] = {}
        self.size = 0


_patterns: contextvars.ContextVar[_Patterns | None] = contextvars.ContextVar(
    "attrgate_patterns", default=None
)


@contextlib.contextmanager
def pattern_scope() -> Iterator[None]:
    """Compile the patterns of one policy set (its load and its compilation) within one
    budget. A scope already open is joined."""
    if _patterns.get() is not None:
        yield
        return
    token = _patterns.set(_Patterns())
    try:
        yield
    finally:
        _patterns.reset(token)


def compile_pattern(pattern: str) -> re2._Regexp:
    """Compile with RE2: linear time on any input, so no policy pattern can stall the server.

    RE2 has no backreferences or lookaround; such patterns are rejected at load, and so are a
    pattern past MAX_PATTERN_PROGRAM instructions and a set past MAX_SET_PROGRAM. A rejected
    pattern is charged to the set too (compiling it cost as much), and once the set's budget is
    spent nothing more is compiled."""
    scope = _patterns.get()
    if scope is not None and pattern in scope.compiled:
        return scope.compiled[pattern]
    if scope is not None and scope.size >= MAX_SET_PROGRAM:
        raise ValueError(_SET_TOO_LARGE)
    options = re2.Options()
    options.log_errors = False
    options.max_mem = MAX_PATTERN_MEMORY
    try:
        compiled = re2.compile(pattern, options=options)
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        text = detail.decode("utf-8", "replace") if isinstance(detail, bytes) else str(detail)
        if text.startswith("pattern too large"):  # past max_mem: RE2 gave up compiling
            _charge(scope, MAX_PATTERN_PROGRAM)
            raise ValueError(_too_large(f"more than {MAX_PATTERN_PROGRAM}")) from None
        raise ValueError(f"invalid regular expression (RE2 syntax): {text}") from None
    size = int(compiled.programsize)
    if size > MAX_PATTERN_PROGRAM:
        del compiled  # its memory goes now, not with the error's traceback
        _charge(scope, size)
        raise ValueError(_too_large(str(size)))
    if scope is not None:
        if scope.size + size > MAX_SET_PROGRAM:
            _charge(scope, size)
            raise ValueError(_SET_TOO_LARGE)
        scope.size += size
        scope.compiled[pattern] = compiled
    return compiled


_SET_TOO_LARGE = (
    f"the set's patterns compile to more than {MAX_SET_PROGRAM} RE2 instructions together: "
    "share patterns or simplify them"
)


def _too_large(instructions: str) -> str:
    return (
        f"pattern too large: it compiles to {instructions} RE2 instructions (at most "
        f"{MAX_PATTERN_PROGRAM}); bound its repetitions"
    )


def _charge(scope: _Patterns | None, size: int) -> None:
    if scope is not None:
        scope.size += size
