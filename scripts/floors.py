"""Print `name==version` constraints pinning every direct dependency of pyproject.toml that has
a lower bound to the lowest released version it allows (`make test-floors` installs them).

Asks the package index (`pip index versions`) once per such dependency; nothing else.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version


def released(name: str) -> list[Version]:
    answer = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "--pre", name],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    listed = next(line for line in answer.splitlines() if line.startswith("Available versions:"))
    found = []
    for text in listed.split(":", 1)[1].split(","):
        try:
            found.append(Version(text.strip()))
        except InvalidVersion:
            continue
    return found


def main() -> int:
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if not any(spec.operator == ">=" for spec in requirement.specifier):
            continue  # pinned (==) or unbounded: nothing lower to try
        spec = requirement.specifier
        allowed = [v for v in released(requirement.name) if spec.contains(v, prereleases=True)]
        if not allowed:
            print(f"no released version of {requirement}", file=sys.stderr)
            return 1
        print(f"{requirement.name}=={min(allowed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
