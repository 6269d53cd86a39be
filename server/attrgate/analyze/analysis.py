"""One analysis of a policy set: the checks in order (policies.py, entries.py; pools.py after),
what they learn along the way, and what they share. Each finding is decided exactly over names,
callers and pools (see world.py and globalgebra.py) and, for values, only where certain
(values.py).

The engine's rules, as the checks read them: a policy applies where a callers glob matches the
caller and a userPools glob the pool; a deny entry of an applicable enforce policy that matches
the name (casefolded) denies it; otherwise one allow entry of an applicable enforce policy that
matches the name exactly or by glob and accepts the value grants it, but a glob never grants a
verified flag; audit policies never grant, and report (wouldDeny) what their deny entries match
among attributes the enforce policies allow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from attrgate.analyze import entries, policies
from attrgate.analyze.counterexample import Claim, Counterexample
from attrgate.analyze.findings import Code, Finding
from attrgate.analyze.globalgebra import Automaton, Difference, Globs, Undecided, globs, may_meet
from attrgate.analyze.values import value_for, within
from attrgate.analyze.world import Allow, Cell, Entry, PolicyView, World

_T = TypeVar("_T")
_R = TypeVar("_R")


class Analysis:
    """Run once per policy set: `run`, then pools.pool_findings; `findings` holds the result."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.names = world.names
        self.findings: list[Finding] = []
        self.unreachable: set[int] = set()  # policies that never apply
        self.irrelevant: set[int] = set()  # policies another one makes irrelevant
        self.dead: set[Allow] = set()  # allow entries that never grant anything
        self.undecided: list[str] = []  # checks left open (see guarded)
        self._grants: dict[str, Automaton] = {}  # by the entry's name or glob
        self._denies: dict[frozenset[int], Globs] = {}

    def run(self) -> list[Finding]:
        world = self.world
        for policy in world.policies:
            self.guarded(policies.reach, policy)
        live = [p for p in world.policies if p.index not in self.unreachable]
        for policy in live:
            for deny in policy.denies:
                self.guarded(entries.deny_name, deny)
        enforce = [p for p in live if p.enforce]
        for policy in enforce:
            for allow in policy.allows:
                if not self.guarded(entries.allow_name, allow, True) or self.guarded(
                    entries.always_denied, allow, False
                ):
                    self.dead.add(allow)
                if allow.is_glob:
                    self.guarded(entries.verified_flags, allow)
        for policy in enforce:
            self.guarded(policies.irrelevant, policy)
        for policy in enforce:
            if policy.index not in self.irrelevant:
                for allow in policy.allows:
                    if allow not in self.dead:
                        self.guarded(entries.shadowed, allow)
        for policy in live:
            if not policy.enforce:
                self.guarded(policies.audit_policy, policy)
        return self.findings

    def guarded(
        self, check: Callable[[Analysis, _T], _R], subject: _T, default: _R | None = None
    ) -> _R | None:
        """Run one check on `subject`; a question it leaves undecided (a search past its
        bound) reports nothing and is listed in `undecided`."""
        try:
            return check(self, subject)
        except Undecided:
            self.undecided.append(f"{check.__name__.strip('_')} of {_describe(subject)}")
            return default

    # --- helpers -------------------------------------------------------------------------------

    def grant(self, allow: Allow) -> Automaton:
        """The names `allow` may grant: its glob, but for the verified flags when a glob."""
        found = self._grants.get(allow.attribute)
        if found is None:
            glob = globs((allow.attribute,))
            found = self._grants[allow.attribute] = (
                Difference(glob, self.names.flags) if allow.is_glob else glob
            )
        return found

    def denies_in(self, cell: Cell) -> Globs:
        """Every deny entry of the enforce policies applying in `cell`, as one automaton."""
        found = self._denies.get(cell.applicable)
        if found is None:
            found = self._denies[cell.applicable] = globs(
                tuple(d.attribute for p in self.world.enforcing(cell) for d in p.denies), True
            )
        return found

    def deny_overlaps(self, allow: Allow) -> list[PolicyView]:
        """The enforce policies sharing a (caller, pool) with `allow`'s policy whose deny
        entries match a name it may grant."""
        policy = allow.policy
        folded = allow.attribute.casefold()
        return [
            q
            for q in sorted([policy, *self.world.neighbours(policy)], key=lambda p: p.index)
            if any(may_meet(folded, d.attribute.casefold()) for d in q.denies)
            and self.names.find([self.grant(allow), q.deny_globs]) is not None
        ]

    def preferred_names(self, allow: Allow, pool: str) -> list[str]:
        """Names to try first in counterexamples: the pool's own attributes when it is
        described, then the glob with its stars spelled `x`."""
        described = self.world.described.get(pool)
        known = sorted(described.attributes) if described else []
        return [*known, allow.attribute.replace("*", "x")]

    def open_name(self, allow: Allow, cells: Iterable[Cell]) -> tuple[Cell, str, str] | None:
        """A cell, a name `allow` grants that no deny entry there matches, and a value it
        accepts (one the pool's schema takes too, where the pool is described)."""
        for cell in cells:
            name = self.names.find(
                [self.grant(allow)],
                [self.denies_in(cell)],
                prefer=self.preferred_names(allow, cell.pool),
            )
            if name is None:
                continue
            described = self.world.described.get(cell.pool)
            value = None
            if described is not None:
                value = value_for(allow.compiled, name, entries.schema_takes(described, cell, name))
            value = value if value is not None else value_for(allow.compiled, name)
            if value is not None:
                return cell, name, value
        return None

    def add(
        self,
        code: Code,
        file: str,
        line: int,
        message: str,
        example: Counterexample | None = None,
        claim: Claim | None = None,
    ) -> None:
        self.findings.append(Finding(code, file, line, message, example, claim))

    def within(self, inner: Allow, outer: Allow) -> bool:
        """`outer` accepts every (name, value) `inner` accepts."""
        return (
            within(inner.compiled, outer.compiled)
            and self.names.find([self.grant(inner)], [self.grant(outer)]) is None
        )


def _describe(subject: object) -> str:
    if isinstance(subject, Entry):
        return f"{subject.ref} at {subject.policy.file}:{subject.line}"
    if isinstance(subject, PolicyView):
        return f"policy {subject.name} at {subject.file}:{subject.line}"
    return repr(subject)
