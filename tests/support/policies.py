"""Small policy documents the tests build their sets from."""

from __future__ import annotations


def svc_policy(allow: str = "[{attribute: given_name}]", metadata_keys: str = "") -> str:
    """An enforce AttributePolicy for the caller `svc` on every pool; `allow` is YAML."""
    metadata = f"\n  clientMetadata: {{allowKeys: {metadata_keys}}}" if metadata_keys else ""
    return (
        "apiVersion: attrgate/v1\nkind: AttributePolicy\nmetadata: {name: p}\nspec:\n"
        f'  callers: [svc]\n  userPools: ["*"]\n  allow: {allow}{metadata}\n'
    )
