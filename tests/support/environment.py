"""The environment of an attrgate process a test starts: the test runner's, with no ATTRGATE_*
or AWS_* setting leaking in from it, static AWS credentials, no probing of an instance-metadata
endpoint that does not exist here, unbuffered output, and no drain delay (SIGTERM ends a test's
server at once; tests of the drain set --drain-delay themselves)."""

from __future__ import annotations

import os


def clean_env(
    access_key_id: str = "k", secret_access_key: str = "s", **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATTRGATE_", "AWS_"))}
    env.update(
        AWS_ACCESS_KEY_ID=access_key_id,
        AWS_SECRET_ACCESS_KEY=secret_access_key,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        PYTHONUNBUFFERED="1",
        ATTRGATE_DRAIN_DELAY="0",
    )
    env.update(extra)
    return env
