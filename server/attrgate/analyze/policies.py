"""The findings about whole policies: pools no glob can match, policies another one makes
irrelevant, audit policies that can never report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from attrgate.analyze.counterexample import Counterexample, DecisionClaim, nothing_found_by
from attrgate.analyze.findings import Code
from attrgate.analyze.globalgebra import globs, run
from attrgate.analyze.values import NAME_EXAMPLES, accepts_nothing
from attrgate.analyze.world import Cell, PolicyView

if TYPE_CHECKING:
    from attrgate.analyze.analysis import Analysis


def reach(analysis: Analysis, policy: PolicyView) -> None:
    dead = [i for i, g in enumerate(policy.pools) if analysis.world.pool_reachable(g) is None]
    if len(dead) == len(policy.pools):
        analysis.unreachable.add(policy.index)
        analysis.add(
            Code.POLICY_UNREACHABLE,
            policy.file,
            policy.pool_lines[0],
            f"policy {policy.name} never applies: no userPools glob matches a user pool id "
            "(letters, digits, - and _, ending in _ and letters or digits; at most 55)",
        )
        return
    for i in dead:
        analysis.add(
            Code.POOL_GLOB_UNREACHABLE,
            policy.file,
            policy.pool_lines[i],
            f"policy {policy.name}: userPools glob {policy.pools[i]!r} matches no user pool "
            "id (letters, digits, - and _, ending in _ and letters or digits; at most 55)",
        )


def irrelevant(analysis: Analysis, policy: PolicyView) -> None:
    for other in analysis.world.neighbours(policy):
        if not _redundant(analysis, policy, other):
            continue
        if other.index > policy.index and _redundant(analysis, other, policy):
            continue  # the same policy twice: the later one is reported
        analysis.irrelevant.add(policy.index)
        analysis.add(
            Code.POLICY_UNREACHABLE,
            policy.file,
            policy.line,
            f"policy {policy.name} changes no decision: {other.name} applies wherever it "
            "does, grants every name and value it grants, denies every name it denies and "
            "allows its clientMetadata keys",
        )
        return


def _redundant(analysis: Analysis, policy: PolicyView, other: PolicyView) -> bool:
    """Whether removing `policy` changes nothing, given `other`."""
    return (
        analysis.world.covers(other, policy)
        and policy.keys <= other.keys
        and all(
            analysis.names.find([globs((d.attribute,), True)], [other.deny_globs]) is None
            for d in policy.denies
        )
        and all(
            a in analysis.dead or any(analysis.within(a, b) for b in other.allows)
            for a in policy.allows
        )
    )


def audit_policy(analysis: Analysis, audit: PolicyView) -> None:
    world = analysis.world
    relevant = world.neighbours(audit)
    if not relevant:
        _audit_alone(analysis, audit)
        return
    if not audit.denies:
        analysis.add(
            Code.AUDIT_EQUALS_ENFORCE,
            audit.file,
            audit.line,
            f"audit policy {audit.name} can never report anything: audit policies report "
            "what their deny entries match, and it has none",
        )
        return
    cells = [c for c in world.cells(audit, relevant) if world.enforcing(c)]
    if any(_audit_finds(analysis, audit, cell) for cell in cells):
        return
    cell = cells[0]
    spelled = [d.attribute.replace("*", "x") for d in audit.denies]
    name = analysis.names.find(
        [audit.deny_globs, analysis.denies_in(cell)], prefer=spelled
    ) or analysis.names.find([audit.deny_globs], prefer=spelled)
    example = None
    if name is not None:
        value = NAME_EXAMPLES.get(name, "x")
        example = Counterexample(cell.caller, cell.pool, ((name, value),))
    analysis.add(
        Code.AUDIT_EQUALS_ENFORCE,
        audit.file,
        audit.line,
        f"audit policy {audit.name} can never report anything: wherever it applies, the "
        "enforce policies already deny (or never allow) every name its deny entries match",
        example,
        _denied_and_nothing_found(audit.name),
    )


def _audit_alone(analysis: Analysis, audit: PolicyView) -> None:
    cell = analysis.world.cells(audit, [])[0]
    spelled = [d.attribute.replace("*", "x") for d in audit.denies]
    name = analysis.names.find([audit.deny_globs], prefer=spelled) or "given_name"
    analysis.add(
        Code.POLICY_UNREACHABLE,
        audit.file,
        audit.line,
        f"audit policy {audit.name} never reports: no enforce policy applies to any "
        "caller and pool it applies to, and audit findings come only beside an enforce "
        "decision",
        Counterexample(cell.caller, cell.pool, ((name, NAME_EXAMPLES.get(name, "x")),)),
        _no_policy_and_nothing_found(audit.name),
    )


def _audit_finds(analysis: Analysis, audit: PolicyView, cell: Cell) -> bool:
    """Whether some name `audit` denies is granted (with some value) in `cell`."""
    enforcing = analysis.world.enforcing(cell)
    denied = analysis.denies_in(cell)
    allows = [a for p in enforcing for a in p.allows if not accepts_nothing(a.compiled)]
    patterns = [a.attribute for a in allows if a.is_glob]
    if patterns and (
        analysis.names.find(
            [audit.deny_globs, globs(tuple(patterns))], [denied, analysis.names.flags]
        )
        is not None
    ):
        return True
    return any(
        not a.is_glob
        and analysis.names.valid(a.attribute)
        and run(audit.deny_globs, a.attribute)
        and not run(denied, a.attribute)
        for a in allows
    )


def _no_policy_and_nothing_found(policy: str) -> DecisionClaim:
    found = nothing_found_by(policy)
    return lambda decision: (
        found(decision) and any(v.reason == "NO_APPLICABLE_POLICY" for v in decision.violations)
    )


def _denied_and_nothing_found(policy: str) -> DecisionClaim:
    found = nothing_found_by(policy)
    return lambda decision: found(decision) and not decision.allowed
