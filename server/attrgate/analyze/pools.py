"""Findings against user pools described with --pool-file (DescribeUserPool answers): allow
entries of the enforce policies that apply to a pool, for attributes the pool does not have or
cannot change, or with values its schema refuses anyway.

The pool stage's own code (schema.schema_violations) judges every value, and a finding is made
only with a request that passes the policy stage and that the pool stage then refuses: a deny
entry that already stops the name, or an entry whose values are all accepted, gives none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial

from attrgate.analyze.analysis import Analysis
from attrgate.analyze.counterexample import USERNAME, Counterexample, refused_for
from attrgate.analyze.findings import Code
from attrgate.analyze.globalgebra import globs, run
from attrgate.analyze.values import finite_values, value_for
from attrgate.analyze.world import Allow
from attrgate.domain import Attribute, AttributeSchema, PoolDescription, UpdateRequest, Violation
from attrgate.schema import DEFAULT_MAX_LENGTH, schema_violations

_VALUE_REASONS = {"SCHEMA_TYPE", "SCHEMA_CONSTRAINT"}
_Accept = Callable[[str, str], bool]  # (name, value): whether a counterexample may use them


def pool_findings(analysis: Analysis, files: Mapping[str, str]) -> None:
    """Add the findings for every described pool (`files`: pool id -> the file describing it)."""
    world = analysis.world
    for pool_id, description in world.described.items():
        for policy in world.enforce:
            if (
                policy.index in analysis.unreachable
                or policy.index in analysis.irrelevant
                or not policy.applies_to_pool(pool_id)
            ):
                continue
            check = _PoolCheck(analysis, pool_id, files[pool_id], description)
            for allow in policy.allows:
                if allow not in analysis.dead:
                    analysis.guarded(check.pool_entry, allow)


class _PoolCheck:
    def __init__(
        self, analysis: Analysis, pool_id: str, file: str, description: PoolDescription
    ) -> None:
        self.analysis = analysis
        self.pool_id = pool_id
        self.where = f"pool {pool_id} ({file})"
        self.description = description

    def pool_entry(self, analysis: Analysis, allow: Allow) -> None:
        names = self.analysis.names
        grant = self.analysis.grant(allow)
        schema = self.description.attributes
        known = sorted(n for n in schema if names.valid(n) and run(grant, n))
        writable = [n for n in known if schema[n].mutable]
        if allow.is_glob:
            if writable:
                return
            immutable = [n for n in known if not schema[n].mutable]
            if immutable:
                self._immutable(allow, immutable)
                return
            unknown = names.find(
                [grant], [globs(tuple(sorted(schema)))], prefer=[allow.attribute.replace("*", "x")]
            )
            if unknown is not None:
                self._unknown(allow, [unknown], f"{allow.ref} grants no attribute")
            return
        if allow.attribute not in schema:
            self._unknown(allow, [allow.attribute], f"{allow.attribute} is not an attribute")
        elif not schema[allow.attribute].mutable:
            self._immutable(allow, [allow.attribute])
        else:
            self._values(allow)

    def _unknown(self, allow: Allow, candidates: Sequence[str], what: str) -> None:
        found = self._example(allow, candidates, lambda n, v: True)
        if found is not None:
            self._add(
                Code.POOL_UNKNOWN_ATTRIBUTE,
                allow,
                f"{what} of {self.where}: writes are refused SCHEMA_UNKNOWN_ATTRIBUTE",
                found,
                {"SCHEMA_UNKNOWN_ATTRIBUTE"},
            )

    def _immutable(self, allow: Allow, candidates: Sequence[str]) -> None:
        found = self._example(allow, candidates, lambda n, v: True)
        if found is not None:
            self._add(
                Code.POOL_IMMUTABLE_ATTRIBUTE,
                allow,
                f"{', '.join(candidates)} cannot change in {self.where} (immutable): "
                f"{allow.ref} only leads to SCHEMA_IMMUTABLE",
                found,
                {"SCHEMA_IMMUTABLE"},
            )

    def _values(self, allow: Allow) -> None:
        name = allow.attribute
        finite = finite_values(allow.compiled)
        if finite is not None:
            refused = [v for v in finite if self._refusal(name, v)]
            if not refused:
                return
            found = self._example(allow, [name], lambda n, v: v in refused)
            listed = ", ".join(repr(v) for v in refused[:5]) + (" ..." if len(refused) > 5 else "")
            what = f"{len(refused)} of its {len(finite)} values ({listed})"
        else:
            found = self._example(allow, [name], lambda n, v: bool(v) and bool(self._refusal(n, v)))
            what = "values"
        if found is None:
            return
        refusal = self._refusal(name, found.attributes[0][1])
        assert refusal is not None
        self._add(
            Code.POOL_VALUE_REFUSED,
            allow,
            f"{allow.ref} accepts {what} that {self.where} refuses: {refusal.message}",
            found,
            _VALUE_REASONS,
        )

    def _refusal(self, name: str, value: str) -> Violation | None:
        request = UpdateRequest(self.pool_id, USERNAME, (Attribute(name, value),))
        found = schema_violations(self.description, request)
        return found[0] if found else None

    def _example(
        self, allow: Allow, candidates: Iterable[str], accept: _Accept
    ) -> Counterexample | None:
        """A request to the pool that the policy stage lets through, writing one of
        `candidates` with a value `allow` accepts and `accept` likes."""
        analysis = self.analysis
        relevant = [q for q in analysis.deny_overlaps(allow) if q.applies_to_pool(self.pool_id)]
        for cell in analysis.world.cells(allow.policy, relevant):
            if cell.pool != self.pool_id:
                continue
            for name in candidates:
                if run(analysis.denies_in(cell), name):
                    continue
                schema = self.description.attributes.get(name)
                value = value_for(
                    allow.compiled, name, partial(accept, name), _lengths(schema), _numbers(schema)
                )
                if value is not None:
                    return Counterexample(cell.caller, cell.pool, ((name, value),))
        return None

    def _add(
        self, code: Code, allow: Allow, message: str, example: Counterexample, reasons: set[str]
    ) -> None:
        name = example.attributes[0][0]
        claim = refused_for(name, reasons)
        self.analysis.add(
            code,
            allow.policy.file,
            allow.line,
            message,
            example,
            lambda d: d.denied_by == "pool_schema" and claim(d),
        )


def _lengths(schema: AttributeSchema | None) -> list[int]:
    """Lengths just past the pool's String bounds."""
    if schema is None or schema.data_type != "String":
        return []
    longest = schema.max_length if schema.max_length is not None else DEFAULT_MAX_LENGTH
    found = [longest + 1]
    if schema.min_length:
        found.append(schema.min_length - 1)
    return found


def _numbers(schema: AttributeSchema | None) -> list[str]:
    """Numbers just past the pool's Number bounds."""
    if schema is None or schema.data_type != "Number":
        return []
    found = []
    if schema.max_value is not None:
        found.append(str(schema.max_value + 1))
    if schema.min_value is not None:
        found.append(str(schema.min_value - 1))
    return found
