"""Small policy documents the tests build their sets from."""

from __future__ import annotations


def svc_policy(allow: str = "[{attribute: given_name}]", metadata_keys: str = "") -> str:
    """An enforce AttributePolicy for the caller `svc` on every pool; `allow` is YAML."""
    metadata = f"\n  clientMetadata: {{allowKeys: {metadata_keys}}}" if metadata_keys else ""
    return (
        "apiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {name: p}\nspec:\n"
        f'  callers: [svc]\n  userPools: ["*"]\n  allow: {allow}{metadata}\n'
    )


def sms_guard(body: str, name: str = "sms") -> str:
    """A further document: an enforce SmsGuard on every pool; `body` is the YAML of its spec
    below `userPools` (limits, budget, countries)."""
    indented = "\n".join("  " + line for line in body.strip("\n").splitlines())
    return (
        f"---\napiVersion: attrgate/v1\nkind: SmsGuard\nmetadata: {{name: {name}}}\n"
        f"spec:\n  mode: enforce\n  userPools: ['*']\n{indented}\n"
    )
