"""Policy revisions that decide one probe request differently, and the probe: the caller `svc`
asking CheckUpdateUserAttributes to set family_name. What a server answers names the revision
that decided; the test knows what each revision it published must say."""

from __future__ import annotations

import grpc

from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.policies import svc_policy
from support.rpc import as_caller, attrs_request

POOL = "us-east-1_Pool1"
PROBE = attrs_request(POOL, [("family_name", "Lovelace")])
SVC = as_caller("svc")


def allowing(marker: str) -> str:
    """Allows the probe. `marker` makes each revision its own."""
    return f"# {marker}\n" + svc_policy("[{attribute: given_name}, {attribute: family_name}]")


def denying(marker: str) -> str:
    return f"# {marker}\n" + svc_policy("[{attribute: given_name}]")


def broken(marker: str) -> str:
    """Invalid: a second document that does not parse (line 9 of its file)."""
    return denying(marker) + "---\nkind: AttributePolicy\nspec: [\n"


# Denies the probe whole; cut before `deny:` it is still valid YAML, and allows it: a half-written
# file that activated would show.
TRAP_CUT = "  deny:"


def trap(marker: str) -> str:
    return (
        f"# {marker}\napiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {{name: p}}\n"
        'spec:\n  callers: [svc]\n  userPools: ["*"]\n  allow: [{attribute: "*"}]\n'
        f"{TRAP_CUT}\n    - attribute: family_name\n"
    )


def trap_head(marker: str) -> str:
    """What a reader sees of trap(marker) while the writer has written only its first part."""
    text = trap(marker)
    return text[: text.index(TRAP_CUT)]


def check(channel: grpc.Channel, timeout: float = 10) -> tuple[str, bool]:
    """The probe's answer: the revision that decided, and whether it allowed."""
    decision = pb_grpc.UserAttributesStub(channel).CheckUpdateUserAttributes(
        PROBE, metadata=SVC, timeout=timeout
    )
    return decision.policy_revision, bool(decision.allowed)
