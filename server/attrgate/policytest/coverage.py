"""Which entries of the policy set the cases exercised, read from the engine's own trace.

Counted: every allow entry, every deny entry and every `clientMetadata.allowKeys` key of every
AttributePolicy, audit policies' too. An allow or deny entry is exercised when it decided an
attribute in some case (it is among the attribute's `determining` entries: the allow entry that
accepted, every allow entry that refused when none accepted, every deny entry that matched); an
audit policy's deny entry when it found something (a would-deny); a key when the policy is the
one whose allowKeys let it through. An audit policy's allow entries and keys never decide (audit
only reports what its denies would deny), so they stay unexercised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from attrgate.policy.load import LoadedPolicy
from attrgate.policy.model import AttributePolicy
from attrgate.policy.trace import Trace
from attrgate.policy.yamlsource import Path


@dataclass(frozen=True, slots=True)
class CoverageEntry:
    policy: str
    entry: str  # allow[0], deny[1], clientMetadata.allowKeys[0]
    name: str  # the attribute name or glob, or the metadata key
    file: str
    line: int


class Coverage:
    def __init__(self, policies: Sequence[LoadedPolicy]) -> None:
        entries: list[CoverageEntry] = []
        self._keys: dict[tuple[str, str], str] = {}  # (policy, metadata key) -> entry label
        for item in policies:
            document = item.document
            if not isinstance(document, AttributePolicy):
                continue
            name, spec = document.metadata.name, document.spec
            # An audit policy never grants: only its deny entries can decide anything (a
            # would-deny finding), so its allows and allowKeys are not counted.
            enforce = spec.mode == "enforce"
            listed: list[tuple[str, str, Path]] = [
                (f"allow[{i}]", a.attribute, ("spec", "allow", i))
                for i, a in enumerate(spec.allow)
                if enforce
            ]
            listed += [
                (f"deny[{i}]", d.attribute, ("spec", "deny", i)) for i, d in enumerate(spec.deny)
            ]
            for i, key in enumerate(spec.client_metadata.allow_keys if enforce else ()):
                label = f"clientMetadata.allowKeys[{i}]"
                if (name, key) in self._keys:
                    continue  # listed twice: the first names it
                self._keys[(name, key)] = label
                listed.append((label, key, ("spec", "clientMetadata", "allowKeys", i)))
            for label, shown, path in listed:
                line = item.source.line_of(path) if item.source is not None else item.line
                entries.append(CoverageEntry(name, label, shown, item.file, line))
        # By file and line: the order a reader meets them (load order within a line).
        self.entries = sorted(entries, key=lambda e: (e.file, e.line))
        self._exercised: set[tuple[str, str]] = set()

    def record(self, trace: Trace) -> None:
        """Mark what one decision's trace shows decided."""
        exercised = self._exercised
        for attribute in trace.attributes:
            for found in attribute.determining:
                exercised.add((found.policy, found.entry))
            for found in attribute.audit:
                if found.outcome == "denied":  # "skipped": denied anyway, never asked
                    exercised.add((found.policy, found.entry))
        for key in trace.metadata:
            if key.policy is not None:
                label = self._keys.get((key.policy, key.key))
                if label is not None:
                    exercised.add((key.policy, label))

    def exercised(self, entry: CoverageEntry) -> bool:
        return (entry.policy, entry.entry) in self._exercised

    @property
    def counts(self) -> tuple[int, int]:
        """(exercised, all) entries."""
        return sum(1 for e in self.entries if self.exercised(e)), len(self.entries)

    @property
    def percent(self) -> float:
        done, total = self.counts
        return 100.0 * done / total if total else 100.0

    def shown(self, places: int) -> float:
        """The percentage rounded down: 99.96 % is no 100 % (--min-coverage compares the exact
        value, and a report must not say it met a minimum it missed)."""
        done, total = self.counts
        scale = 10**places
        return (done * 100 * scale // total) / scale if total else 100.0
