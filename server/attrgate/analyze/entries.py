"""The findings about one entry: names no request can carry, allows a deny always overrides,
verified flags a glob cannot grant, allows another entry shadows (see analysis.py for the
engine's rules as the checks read them)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from attrgate.analyze.counterexample import (
    Counterexample,
    NotDecidedBy,
    denied_by_entries,
    refused_for,
)
from attrgate.analyze.findings import Code
from attrgate.analyze.globalgebra import Automaton, globs, run
from attrgate.analyze.values import NAME_EXAMPLES, value_for
from attrgate.analyze.world import Allow, Cell, Deny, Entry, PolicyView
from attrgate.domain import PoolDescription
from attrgate.policy.globs import compile_glob
from attrgate.policy.model import VERIFIED_FLAGS
from attrgate.schema import schema_violations

if TYPE_CHECKING:
    from attrgate.analyze.analysis import Analysis


def deny_name(analysis: Analysis, deny: Deny) -> None:
    glob = globs((deny.attribute,), True)
    if analysis.names.find([glob]) is not None:
        return
    analysis.add(
        Code.DENY_UNREACHABLE_NAME,
        deny.policy.file,
        deny.line,
        f"{deny.ref} matches no attribute name a request can carry: {_why_none(analysis, glob)}",
    )


def allow_name(analysis: Analysis, allow: Allow) -> bool:
    if analysis.names.find([analysis.grant(allow)]) is not None:
        return True
    analysis.add(
        Code.ALLOW_UNREACHABLE_NAME,
        allow.policy.file,
        allow.line,
        f"{allow.ref} grants no attribute name a request can carry: "
        f"{_why_none(analysis, analysis.grant(allow))}",
    )
    return False


def _why_none(analysis: Analysis, automaton: Automaton) -> str:
    if analysis.names.find([automaton], reserved=True) is not None:
        return "the names it matches are reserved (sub, identities, cognito:*; any case)"
    if analysis.names.find([automaton], any_length=True) is not None:
        return "the names it matches are longer than 32 characters"
    return "the names it matches hold characters (or white space at an end) Cognito refuses"


def always_denied(analysis: Analysis, allow: Allow) -> bool:
    relevant = analysis.deny_overlaps(allow)
    if not relevant:
        return False
    cells = analysis.world.cells(allow.policy, relevant)
    grant = analysis.grant(allow)
    if any(analysis.names.find([grant], [analysis.denies_in(c)]) is not None for c in cells):
        return False
    deniers = [
        d
        for q in relevant
        for d in q.denies
        if analysis.names.find([grant, globs((d.attribute,), True)]) is not None
    ]
    cell = cells[0]
    name = analysis.names.find([grant], prefer=analysis.preferred_names(allow, cell.pool))
    assert name is not None  # the entry grants some name (checked before)
    value = value_for(allow.compiled, name) or NAME_EXAMPLES.get(name, "x")
    analysis.add(
        Code.ALLOW_ALWAYS_DENIED,
        allow.policy.file,
        allow.line,
        f"{allow.ref} never grants anything: wherever it applies, {_refs(deniers)} "
        f"{'denies' if len(deniers) == 1 else 'deny'} every name it matches",
        Counterexample(cell.caller, cell.pool, ((name, value),)),
        denied_by_entries(name, {(d.policy.name, d.label) for d in deniers}),
    )
    return True


def verified_flags(analysis: Analysis, allow: Allow) -> None:
    refused: dict[str, Cell] = {}
    for flag in sorted(VERIFIED_FLAGS):
        if compile_glob(allow.attribute)(flag):
            cell = _flag_left_to_glob(analysis, allow, flag)
            if cell is not None:
                refused[flag] = cell
    if not refused:
        return
    flag, cell = next(iter(refused.items()))
    value = "true" if not allow.compiled.check("true") else None
    value = value or value_for(allow.compiled, flag) or "true"
    analysis.add(
        Code.VERIFIED_FLAG_BY_GLOB,
        allow.policy.file,
        allow.line,
        f"{allow.ref} matches {' and '.join(refused)}, which only an allow entry naming "
        "the flag exactly grants: where no other entry decides it, writing it is refused "
        "VERIFIED_FLAG_NOT_GRANTED",
        Counterexample(cell.caller, cell.pool, ((flag, value),)),
        refused_for(flag, {"VERIFIED_FLAG_NOT_GRANTED"}),
    )


def _flag_left_to_glob(analysis: Analysis, allow: Allow, flag: str) -> Cell | None:
    """A cell where no applicable enforce policy denies `flag` or names it exactly."""
    policy = allow.policy
    relevant = [q for q in analysis.world.neighbours(policy) if _decides_flag(q, flag)]
    for cell in analysis.world.cells(policy, relevant):
        if not any(_decides_flag(q, flag) for q in analysis.world.enforcing(cell)):
            return cell
    return None


def _decides_flag(policy: PolicyView, flag: str) -> bool:
    """Whether `policy` (applying) takes the flag out of a glob's hands: a deny entry matching
    it or an allow entry naming it."""
    return run(policy.deny_globs, flag) or any(a.attribute == flag for a in policy.allows)


def shadowed(analysis: Analysis, allow: Allow) -> None:
    shadow = _shadow(analysis, allow)
    if shadow is None:
        return
    found = analysis.open_name(
        allow, analysis.world.cells(allow.policy, analysis.deny_overlaps(allow))
    )
    if found is None:
        return  # no value it accepts: nothing to show
    cell, name, value = found
    where = "" if shadow.policy is allow.policy else " and applies wherever it does"
    analysis.add(
        Code.ALLOW_SHADOWED,
        allow.policy.file,
        allow.line,
        f"{allow.ref} never decides: {shadow.ref} accepts every value it accepts for every "
        f"name it matches{where}",
        Counterexample(cell.caller, cell.pool, ((name, value),)),
        NotDecidedBy(name, allow.policy.name, allow.label),
    )


def _shadow(analysis: Analysis, allow: Allow) -> Allow | None:
    """An entry the engine tries before `allow`, for every name `allow` matches, that accepts
    whatever `allow` grants wherever it applies: `allow` then never decides."""
    policy = allow.policy
    others = [b for b in policy.allows if b is not allow] + [
        b
        for q in analysis.world.neighbours(policy)
        if analysis.world.covers(q, policy)
        for b in q.allows
    ]
    # Named: the first of them the engine tries (what decides a value both accept).
    others.sort(key=_engine_order)
    for other in others:
        if _tried_before(other, allow) and analysis.within(allow, other):
            return other
    return None


def _engine_order(entry: Allow) -> tuple[int, int, int, int, int]:
    """Where the engine tries `entry` among the allow entries matching a name: enforce policies
    in load order; in one policy, entries naming the attribute exactly first (in order), then
    globs by the length of their literal prefix, each glob's entries in the order its first
    entry was written (compile.CompiledPolicy.allows_for, globs.GlobIndex.match)."""
    if not entry.is_glob:
        return (entry.policy.index, 0, 0, entry.index, entry.index)
    first = next(e.index for e in entry.policy.allows if e.attribute == entry.attribute)
    prefix = len(entry.attribute.split("*", 1)[0])
    return (entry.policy.index, 1, prefix, first, entry.index)


def _tried_before(other: Allow, allow: Allow) -> bool:
    """Whether the engine tries `other` before `allow` for every name both match."""
    return _engine_order(other) < _engine_order(allow)


def schema_takes(pool: PoolDescription, cell: Cell, name: str) -> Callable[[str], bool]:
    """Whether the pool's schema takes a value for `name`."""

    def takes(value: str) -> bool:
        request = Counterexample(cell.caller, cell.pool, ((name, value),)).request()
        return not schema_violations(pool, request)

    return takes


def _refs(entries: Iterable[Entry]) -> str:
    return ", ".join(e.ref for e in entries)
