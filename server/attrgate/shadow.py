"""Shadow mode for adoption (serve --shadow): every AttributePolicy acts as in audit mode.

Not a second engine: the serving set decides as always, and a policy denial is then turned into
an allowed decision whose findings move to would_deny. Validation, the pool schema and enforcing
SmsGuards come after and still deny. It is loud on purpose: a warning at start and every
REMIND_EVERY seconds while serving, the attrgate_shadow_mode gauge, and Decision.shadow.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from attrgate.domain import Decision

log = logging.getLogger("attrgate")

REMIND_EVERY = 60.0
WARNING = (
    "SHADOW MODE (--shadow): AttributePolicies are NOT enforced; requests they deny are "
    "forwarded to Cognito with would_deny findings (validation, pool schema and enforcing "
    "SmsGuards still apply)"
)


def shadowed(decision: Decision) -> Decision:
    """`decision` (the policy stage's) as shadow mode has it: marked shadow, and a denial
    allowed, its violations reported in would_deny (first, before any audit findings)."""
    if decision.allowed:
        return replace(decision, shadow=True)
    return replace(
        decision,
        allowed=True,
        violations=(),
        would_deny=decision.violations + decision.would_deny,
        denied_by="",
        shadow=True,
        shadow_allowed=True,
    )


def warn() -> None:
    log.warning(WARNING)


async def remind(period: float = REMIND_EVERY) -> None:
    """Repeat the warning every `period` seconds until cancelled (the server stops)."""
    while True:
        await asyncio.sleep(period)
        warn()
