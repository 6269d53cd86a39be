"""The findings about entries and policies, each decided exactly over names, callers and pools
(see world.py and globalgebra.py) and, for values, only where certain (values.py).

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

from attrgate.analyze.counterexample import (
    Claim,
    Counterexample,
    denied_by_entries,
    nothing_found_by,
    policy_allows,
    refused_for,
)
from attrgate.analyze.findings import Code, Finding
from attrgate.analyze.globalgebra import (
    Automaton,
    Difference,
    Globs,
    Undecided,
    globs,
    may_meet,
    run,
)
from attrgate.analyze.values import NAME_EXAMPLES, accepts_nothing, value_for, within
from attrgate.analyze.world import Allow, Cell, Deny, Entry, PolicyView, World
from attrgate.domain import PoolDescription
from attrgate.policy.globs import compile_glob
from attrgate.policy.model import VERIFIED_FLAGS
from attrgate.schema import schema_violations

_T = TypeVar("_T")
_R = TypeVar("_R")


class Analysis:
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
            self.guarded(self._reach, policy)
        live = [p for p in world.policies if p.index not in self.unreachable]
        for policy in live:
            for deny in policy.denies:
                self.guarded(self._deny_name, deny)
        enforce = [p for p in live if p.enforce]
        for policy in enforce:
            for allow in policy.allows:
                if not self.guarded(self._allow_name, allow, True) or self.guarded(
                    self._always_denied, allow, False
                ):
                    self.dead.add(allow)
                if allow.is_glob:
                    self.guarded(self._verified_flags, allow)
        for policy in enforce:
            self.guarded(self._irrelevant, policy)
        for policy in enforce:
            if policy.index not in self.irrelevant:
                for allow in policy.allows:
                    if allow not in self.dead:
                        self.guarded(self._shadowed, allow)
        for policy in live:
            if not policy.enforce:
                self.guarded(self._audit, policy)
        return self.findings

    def guarded(
        self, check: Callable[[_T], _R], subject: _T, default: _R | None = None
    ) -> _R | None:
        """Run one check; a question it leaves undecided (a search past its bound) reports
        nothing and is listed in `undecided`."""
        try:
            return check(subject)
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
                value = value_for(allow.compiled, name, _schema_takes(described, cell, name))
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

    # --- policies ------------------------------------------------------------------------------

    def _reach(self, policy: PolicyView) -> None:
        dead = [i for i, g in enumerate(policy.pools) if self.world.pool_reachable(g) is None]
        if len(dead) == len(policy.pools):
            self.unreachable.add(policy.index)
            self.add(
                Code.POLICY_UNREACHABLE,
                policy.file,
                policy.pool_lines[0],
                f"policy {policy.name} never applies: no userPools glob matches a user pool id "
                "(letters, digits, - and _, ending in _ and letters or digits; at most 55)",
            )
            return
        for i in dead:
            self.add(
                Code.POOL_GLOB_UNREACHABLE,
                policy.file,
                policy.pool_lines[i],
                f"policy {policy.name}: userPools glob {policy.pools[i]!r} matches no user pool "
                "id (letters, digits, - and _, ending in _ and letters or digits; at most 55)",
            )

    def _irrelevant(self, policy: PolicyView) -> None:
        for other in self.world.neighbours(policy):
            if not self._redundant(policy, other):
                continue
            if other.index > policy.index and self._redundant(other, policy):
                continue  # the same policy twice: the later one is reported
            self.irrelevant.add(policy.index)
            self.add(
                Code.POLICY_UNREACHABLE,
                policy.file,
                policy.line,
                f"policy {policy.name} changes no decision: {other.name} applies wherever it "
                "does, grants every name and value it grants, denies every name it denies and "
                "allows its clientMetadata keys",
            )
            return

    def _redundant(self, policy: PolicyView, other: PolicyView) -> bool:
        """Whether removing `policy` changes nothing, given `other`."""
        return (
            self.world.covers(other, policy)
            and policy.keys <= other.keys
            and all(
                self.names.find([globs((d.attribute,), True)], [other.deny_globs]) is None
                for d in policy.denies
            )
            and all(
                a in self.dead or any(self._within(a, b) for b in other.allows)
                for a in policy.allows
            )
        )

    def _audit(self, audit: PolicyView) -> None:
        world = self.world
        relevant = world.neighbours(audit)
        if not relevant:
            self._audit_alone(audit)
            return
        if not audit.denies:
            self.add(
                Code.AUDIT_EQUALS_ENFORCE,
                audit.file,
                audit.line,
                f"audit policy {audit.name} can never report anything: audit policies report "
                "what their deny entries match, and it has none",
            )
            return
        cells = [c for c in world.cells(audit, relevant) if world.enforcing(c)]
        if any(self._audit_finds(audit, cell) for cell in cells):
            return
        cell = cells[0]
        spelled = [d.attribute.replace("*", "x") for d in audit.denies]
        name = self.names.find(
            [audit.deny_globs, self.denies_in(cell)], prefer=spelled
        ) or self.names.find([audit.deny_globs], prefer=spelled)
        example = None
        if name is not None:
            value = NAME_EXAMPLES.get(name, "x")
            example = Counterexample(cell.caller, cell.pool, ((name, value),))
        self.add(
            Code.AUDIT_EQUALS_ENFORCE,
            audit.file,
            audit.line,
            f"audit policy {audit.name} can never report anything: wherever it applies, the "
            "enforce policies already deny (or never allow) every name its deny entries match",
            example,
            _denied_and_nothing_found(audit.name),
        )

    def _audit_alone(self, audit: PolicyView) -> None:
        cell = self.world.cells(audit, [])[0]
        spelled = [d.attribute.replace("*", "x") for d in audit.denies]
        name = self.names.find([audit.deny_globs], prefer=spelled) or "given_name"
        self.add(
            Code.POLICY_UNREACHABLE,
            audit.file,
            audit.line,
            f"audit policy {audit.name} never reports: no enforce policy applies to any "
            "caller and pool it applies to, and audit findings come only beside an enforce "
            "decision",
            Counterexample(cell.caller, cell.pool, ((name, NAME_EXAMPLES.get(name, "x")),)),
            _no_policy_and_nothing_found(audit.name),
        )

    def _audit_finds(self, audit: PolicyView, cell: Cell) -> bool:
        """Whether some name `audit` denies is granted (with some value) in `cell`."""
        enforcing = self.world.enforcing(cell)
        denied = self.denies_in(cell)
        allows = [a for p in enforcing for a in p.allows if not accepts_nothing(a.compiled)]
        patterns = [a.attribute for a in allows if a.is_glob]
        if patterns and (
            self.names.find([audit.deny_globs, globs(tuple(patterns))], [denied, self.names.flags])
            is not None
        ):
            return True
        return any(
            not a.is_glob
            and self.names.valid(a.attribute)
            and run(audit.deny_globs, a.attribute)
            and not run(denied, a.attribute)
            for a in allows
        )

    # --- entries -------------------------------------------------------------------------------

    def _deny_name(self, deny: Deny) -> None:
        glob = globs((deny.attribute,), True)
        if self.names.find([glob]) is not None:
            return
        self.add(
            Code.DENY_UNREACHABLE_NAME,
            deny.policy.file,
            deny.line,
            f"{deny.ref} matches no attribute name a request can carry: {self._why_none(glob)}",
        )

    def _allow_name(self, allow: Allow) -> bool:
        if self.names.find([self.grant(allow)]) is not None:
            return True
        self.add(
            Code.ALLOW_UNREACHABLE_NAME,
            allow.policy.file,
            allow.line,
            f"{allow.ref} grants no attribute name a request can carry: "
            f"{self._why_none(self.grant(allow))}",
        )
        return False

    def _why_none(self, automaton: Automaton) -> str:
        if self.names.find([automaton], reserved=True) is not None:
            return "the names it matches are reserved (sub, identities, cognito:*; any case)"
        if self.names.find([automaton], any_length=True) is not None:
            return "the names it matches are longer than 32 characters"
        return "the names it matches hold characters (or white space at an end) Cognito refuses"

    def _always_denied(self, allow: Allow) -> bool:
        relevant = self.deny_overlaps(allow)
        if not relevant:
            return False
        cells = self.world.cells(allow.policy, relevant)
        grant = self.grant(allow)
        if any(self.names.find([grant], [self.denies_in(c)]) is not None for c in cells):
            return False
        deniers = [
            d
            for q in relevant
            for d in q.denies
            if self.names.find([grant, globs((d.attribute,), True)]) is not None
        ]
        cell = cells[0]
        name = self.names.find([grant], prefer=self.preferred_names(allow, cell.pool))
        assert name is not None  # the entry grants some name (checked before)
        value = value_for(allow.compiled, name) or NAME_EXAMPLES.get(name, "x")
        self.add(
            Code.ALLOW_ALWAYS_DENIED,
            allow.policy.file,
            allow.line,
            f"{allow.ref} never grants anything: wherever it applies, {_refs(deniers)} "
            f"{'denies' if len(deniers) == 1 else 'deny'} every name it matches",
            Counterexample(cell.caller, cell.pool, ((name, value),)),
            denied_by_entries(name, {(d.policy.name, d.label) for d in deniers}),
        )
        return True

    def _verified_flags(self, allow: Allow) -> None:
        refused: dict[str, Cell] = {}
        for flag in sorted(VERIFIED_FLAGS):
            if compile_glob(allow.attribute)(flag):
                cell = self._flag_left_to_glob(allow, flag)
                if cell is not None:
                    refused[flag] = cell
        if not refused:
            return
        flag, cell = next(iter(refused.items()))
        value = "true" if not allow.compiled.check("true") else None
        value = value or value_for(allow.compiled, flag) or "true"
        self.add(
            Code.VERIFIED_FLAG_BY_GLOB,
            allow.policy.file,
            allow.line,
            f"{allow.ref} matches {' and '.join(refused)}, which only an allow entry naming "
            "the flag exactly grants: where no other entry decides it, writing it is refused "
            "VERIFIED_FLAG_NOT_GRANTED",
            Counterexample(cell.caller, cell.pool, ((flag, value),)),
            refused_for(flag, {"VERIFIED_FLAG_NOT_GRANTED"}),
        )

    def _flag_left_to_glob(self, allow: Allow, flag: str) -> Cell | None:
        """A cell where no applicable enforce policy denies `flag` or names it exactly."""
        policy = allow.policy
        relevant = [q for q in self.world.neighbours(policy) if self._decides_flag(q, flag)]
        for cell in self.world.cells(policy, relevant):
            if not any(self._decides_flag(q, flag) for q in self.world.enforcing(cell)):
                return cell
        return None

    @staticmethod
    def _decides_flag(policy: PolicyView, flag: str) -> bool:
        """Whether `policy` (applying) takes the flag out of a glob's hands: a deny entry
        matching it or an allow entry naming it."""
        return run(policy.deny_globs, flag) or any(a.attribute == flag for a in policy.allows)

    def _shadowed(self, allow: Allow) -> None:
        shadow = self._shadow(allow)
        if shadow is None:
            return
        found = self.open_name(allow, self.world.cells(allow.policy, self.deny_overlaps(allow)))
        if found is None:
            return  # no value it accepts: nothing to show
        cell, name, value = found
        where = "" if shadow.policy is allow.policy else " and applies wherever it does"
        self.add(
            Code.ALLOW_SHADOWED,
            allow.policy.file,
            allow.line,
            f"{allow.ref} never decides: {shadow.ref} accepts every value it accepts for every "
            f"name it matches{where}",
            Counterexample(cell.caller, cell.pool, ((name, value),)),
            policy_allows,
        )

    def _shadow(self, allow: Allow) -> Allow | None:
        """The first entry that accepts whatever `allow` grants, wherever it applies; of
        entries equivalent to each other, the first one shadows the later ones."""
        policy = allow.policy
        others = [b for b in policy.allows if b is not allow] + [
            b
            for q in self.world.neighbours(policy)
            if self.world.covers(q, policy)
            for b in q.allows
        ]
        # Name an entry that stays (not one of a policy reported as changing nothing) first.
        others.sort(key=lambda b: b.policy.index in self.irrelevant)
        for other in others:
            if not self._within(allow, other):
                continue
            same_place = other.policy is policy or self.world.covers(policy, other.policy)
            later = (other.policy.index, other.index) > (policy.index, allow.index)
            if later and same_place and self._within(other, allow):
                continue
            return other
        return None

    def _within(self, inner: Allow, outer: Allow) -> bool:
        """`outer` accepts every (name, value) `inner` accepts."""
        return (
            within(inner.compiled, outer.compiled)
            and self.names.find([self.grant(inner)], [self.grant(outer)]) is None
        )


def _schema_takes(pool: PoolDescription, cell: Cell, name: str) -> Callable[[str], bool]:
    """Whether the pool's schema takes a value for `name`."""

    def takes(value: str) -> bool:
        request = Counterexample(cell.caller, cell.pool, ((name, value),)).request()
        return not schema_violations(pool, request)

    return takes


def _refs(entries: Iterable[Entry]) -> str:
    return ", ".join(e.ref for e in entries)


def _no_policy_and_nothing_found(policy: str) -> Claim:
    found = nothing_found_by(policy)
    return lambda decision: (
        found(decision) and any(v.reason == "NO_APPLICABLE_POLICY" for v in decision.violations)
    )


def _denied_and_nothing_found(policy: str) -> Claim:
    found = nothing_found_by(policy)
    return lambda decision: found(decision) and not decision.allowed


def _describe(subject: object) -> str:
    if isinstance(subject, Entry):
        return f"{subject.ref} at {subject.policy.file}:{subject.line}"
    if isinstance(subject, PolicyView):
        return f"policy {subject.name} at {subject.file}:{subject.line}"
    return repr(subject)
