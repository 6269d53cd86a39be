"""The policy set as the analysis sees it: every AttributePolicy with its entries and their
lines, and where each policy applies (its region: callers x user pools).

A request's applicable policies depend on its caller and pool only through which callers globs
and which userPools globs match them. So the (caller, pool) plane falls into finitely many
cells, one per realisable combination, and every question of the form "wherever this policy
applies, ..." is answered exactly by asking it of each cell. Cells are found by walking the
product of the policies' glob automata (`signatures`), restricted to valid callers and pool ids,
with a shortest caller and pool for each: the counterexamples' caller and pool.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from attrgate.analyze.domains import Names, Words
from attrgate.analyze.globalgebra import Globs, Neighbours, globs, may_meet, run, signatures
from attrgate.domain import PoolDescription
from attrgate.policy.constraints import CompiledAllow
from attrgate.policy.globs import compile_glob, is_glob
from attrgate.policy.load import LoadedPolicy
from attrgate.policy.model import AttributePolicy
from attrgate.policy.yamlsource import Document


@dataclass(frozen=True, eq=False)
class Entry:
    policy: PolicyView
    index: int
    attribute: str
    line: int
    kind: ClassVar[str] = ""

    @property
    def label(self) -> str:
        """As decisions name it: `allow[2]`, `deny[0]`."""
        return f"{self.kind}[{self.index}]"

    @property
    def ref(self) -> str:
        return f"{self.policy.name} {self.label} ({self.attribute})"


@dataclass(frozen=True, eq=False)
class Allow(Entry):
    compiled: CompiledAllow
    kind: ClassVar[str] = "allow"

    @property
    def is_glob(self) -> bool:
        return is_glob(self.attribute)


@dataclass(frozen=True, eq=False)
class Deny(Entry):
    kind: ClassVar[str] = "deny"


@dataclass(eq=False)
class PolicyView:
    index: int  # position in the set, in load order (the engine's order)
    name: str
    file: str
    line: int  # metadata.name
    enforce: bool
    callers: tuple[str, ...]
    pools: tuple[str, ...]
    pool_lines: tuple[int, ...]
    keys: frozenset[str]
    allows: tuple[Allow, ...] = ()
    denies: tuple[Deny, ...] = ()

    @cached_property
    def caller_globs(self) -> Globs:
        return globs(self.callers)

    @cached_property
    def pool_globs(self) -> Globs:
        return globs(self.pools)

    @cached_property
    def deny_globs(self) -> Globs:
        return globs(tuple(d.attribute for d in self.denies), True)

    def applies_to_pool(self, pool: str) -> bool:
        return any(compile_glob(p)(pool) for p in self.pools)


def policy_views(loaded: Sequence[LoadedPolicy]) -> list[PolicyView]:
    views: list[PolicyView] = []
    for item in loaded:
        policy = item.document
        if not isinstance(policy, AttributePolicy):
            continue
        source = item.source or Document(0, None, {}, item.line)

        def line(*path: str | int, source: Document = source) -> int:
            return source.line_of(("spec", *path))

        spec = policy.spec
        view = PolicyView(
            index=len(views),
            name=policy.metadata.name,
            file=item.file,
            line=source.line_of(("metadata", "name")),
            enforce=spec.mode == "enforce",
            callers=tuple(spec.callers),
            pools=tuple(spec.user_pools),
            pool_lines=tuple(line("userPools", i) for i in range(len(spec.user_pools))),
            keys=frozenset(spec.client_metadata.allow_keys),
        )
        view.allows = tuple(
            Allow(view, i, e.attribute, line("allow", i), CompiledAllow(e, i))
            for i, e in enumerate(spec.allow)
        )
        view.denies = tuple(
            Deny(view, i, e.attribute, line("deny", i)) for i, e in enumerate(spec.deny)
        )
        views.append(view)
    return views


# What a star stands for in a witness, then whole typical ids to try first.
_CALLER_LOOKS = ("api", "svc", "billing")
_POOL_LOOKS = ("AbCdEf123", "Zx9Yw8Vu7", "us-east-1_AbCdEf123", "eu-west-1_AbCdEf123")


@dataclass(frozen=True)
class Cell:
    """A caller and a pool, and exactly the policies (indices) that apply to both."""

    caller: str
    pool: str
    applicable: frozenset[int]


class World:
    """A policy set's policies, the searches over its names, callers and pools, and its
    regions."""

    def __init__(
        self, policies: Sequence[PolicyView], pools: Mapping[str, PoolDescription] | None = None
    ) -> None:
        self.policies = tuple(policies)
        self.enforce = tuple(p for p in policies if p.enforce)
        # Pools described by --pool-file: their schema is checked, and they are the preferred
        # pools of counterexamples.
        self.described = dict(pools or {})
        self.names = Names()
        self.callers = Words(pools=False)
        self.pools = Words(pools=True)
        self.known_pools = tuple(p for p in self.described if self.pools.valid(p))
        self._by_caller = Neighbours((c, p) for p in policies for c in p.callers)
        self._neighbours: dict[int, tuple[PolicyView, ...]] = {}
        self._pairs: dict[tuple[int, int], bool] = {}
        self._covers: dict[tuple[int, int], bool] = {}
        self._cells: dict[tuple[int, frozenset[int]], list[Cell]] = {}

    # --- regions ------------------------------------------------------------------------------

    def pool_reachable(self, pattern: str) -> str | None:
        """A valid pool id `pattern` matches (a known pool first), or None."""
        glob = globs((pattern,))
        known = next((p for p in self.known_pools if run(glob, p)), None)
        return known or self.pools.find([glob])

    def neighbours(self, policy: PolicyView) -> list[PolicyView]:
        """The other enforce policies that apply to some (caller, pool) `policy` applies to, in
        load order."""
        found = self._neighbours.get(policy.index)
        if found is None:
            near = {q.index: q for c in policy.callers for q in self._by_caller.near(c)}
            found = self._neighbours[policy.index] = tuple(
                near[i] for i in sorted(near) if i != policy.index and self.overlap(policy, near[i])
            )
        return [q for q in found if q.enforce]

    def overlap(self, first: PolicyView, second: PolicyView) -> bool:
        """Whether some valid (caller, pool) lies in both regions."""
        key = (min(first.index, second.index), max(first.index, second.index))
        found = self._pairs.get(key)
        if found is None:
            found = self._pairs[key] = (
                _may_meet(first.callers, second.callers)
                and _may_meet(first.pools, second.pools)
                and self.callers.find([first.caller_globs, second.caller_globs]) is not None
                and self.pools.find([first.pool_globs, second.pool_globs]) is not None
            )
        return found

    def covers(self, outer: PolicyView, inner: PolicyView) -> bool:
        """Whether `outer` applies wherever `inner` does."""
        key = (outer.index, inner.index)
        found = self._covers.get(key)
        if found is None:
            found = self._covers[key] = (
                self.overlap(outer, inner)
                and self.callers.find([inner.caller_globs], [outer.caller_globs]) is None
                and self.pools.find([inner.pool_globs], [outer.pool_globs]) is None
            )
        return found

    def cells(self, policy: PolicyView, others: Iterable[PolicyView]) -> list[Cell]:
        """Every realisable combination of `others` applying where `policy` applies, one cell
        each (with `policy` among the applicable): cells on the known pools first, then by
        fewest applicable policies."""
        members = [o for o in dict.fromkeys(others) if o is not policy]
        key = (policy.index, frozenset(m.index for m in members))
        cached = self._cells.get(key)
        if cached is None:
            cached = self._cells[key] = self._find_cells(policy, members)
        return cached

    def _find_cells(self, policy: PolicyView, members: Sequence[PolicyView]) -> list[Cell]:
        caller_cells = self._signatures(self.callers, policy.caller_globs, members, callers=True)
        pool_cells = self._signatures(self.pools, policy.pool_globs, members, callers=False)
        for known in self.known_pools:
            if policy.applies_to_pool(known):
                signature = frozenset(i for i, m in enumerate(members) if m.applies_to_pool(known))
                pool_cells.insert(0, (signature, known))
        found: dict[frozenset[int], Cell] = {}
        for pool_signature, pool in pool_cells:
            for caller_signature, caller in caller_cells:
                applicable = frozenset(
                    members[i].index for i in caller_signature & pool_signature
                ) | {policy.index}
                found.setdefault(applicable, Cell(caller, pool, applicable))
        on_known = [c for c in found.values() if c.pool in self.known_pools]
        rest = sorted(
            (c for c in found.values() if c.pool not in self.known_pools),
            key=lambda c: len(c.applicable),
        )
        return on_known + rest

    def _signatures(
        self, words: Words, within: Globs, members: Sequence[PolicyView], callers: bool
    ) -> list[tuple[frozenset[int], str]]:
        automata = [m.caller_globs if callers else m.pool_globs for m in members]
        alphabet = words.alphabet([within, *automata])
        found = signatures(alphabet, [words.domain, within], automata)
        fresh = alphabet[-1]
        fillers: tuple[str, ...] = _CALLER_LOOKS if callers else _POOL_LOOKS[:2]
        typical: tuple[str, ...] = () if callers else _POOL_LOOKS[2:]
        spelled = [p.replace("*", f) for f in fillers for p in within.patterns]

        def looks_real(signature: frozenset[int], word: str) -> str:
            """A real-looking word with the same signature, when one is near: a typical id,
            a glob of the policy with its stars spelled out, the witness with its fresh
            character (where a star matched) spelled out; else the witness itself."""
            for candidate in (*typical, *spelled, word.replace(fresh, fillers[0])):
                if (
                    words.valid(candidate)
                    and run(within, candidate)
                    and frozenset(i for i, a in enumerate(automata) if run(a, candidate))
                    == signature
                ):
                    return candidate
            return word

        return [(s, looks_real(s, w)) for s, w in found.items() if len(w) <= words.longest]

    def enforcing(self, cell: Cell) -> list[PolicyView]:
        """The enforce policies that apply in `cell`, in load order."""
        return [self.policies[i] for i in sorted(cell.applicable) if self.policies[i].enforce]


def _may_meet(first: Sequence[str], second: Sequence[str]) -> bool:
    return any(may_meet(a, b) for a in first for b in second)
