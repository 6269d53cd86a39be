"""The example policies and the demo pool of `make run` agree: every attribute a policy names
exactly exists in the demo pool's schema, so the README's demo commands are not refused by it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from attrgate.local.emulator import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, LocalCognito
from attrgate.policy.globs import is_glob
from attrgate.policy.load import load_policy_set
from attrgate.policy.model import AttributePolicy
from attrgate.upstream.cognito import pool_description

EXAMPLES = Path(__file__).resolve().parent.parent / "policies"


@pytest.fixture(scope="module")
def demo() -> Iterator[LocalCognito]:
    from attrgate.local.emulator import start_local_cognito

    local = start_local_cognito("us-east-1")
    yield local
    local.stop()


def test_every_attribute_the_examples_name_exists_in_the_demo_pool(demo: LocalCognito) -> None:
    client = boto3.client(
        "cognito-idp",
        endpoint_url=demo.endpoint,
        region_name=demo.region,
        aws_access_key_id=LOCAL_ACCESS_KEY,
        aws_secret_access_key=LOCAL_SECRET_KEY,
    )
    described = client.describe_user_pool(UserPoolId=demo.pool_id)["UserPool"]
    schema = pool_description(demo.pool_id, described).attributes
    loaded = load_policy_set(EXAMPLES)
    assert loaded.ok, loaded.errors
    named = {
        entry.attribute
        for item in loaded.policies
        if isinstance(item.document, AttributePolicy)
        for entry in (*item.document.spec.allow, *item.document.spec.deny)
        if not is_glob(entry.attribute)
    }
    assert "custom:handle" in named  # the example the README's policy shows
    missing = sorted(name for name in named if name not in schema)
    assert not missing, f"the demo pool (server/attrgate/local/seed.yaml) lacks {missing}"
