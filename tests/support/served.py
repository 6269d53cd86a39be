"""`attrgate serve` as its own process, plaintext on loopback, deciding without a Cognito
(pool metadata fails open; the endpoint is a closed port): for tests of what a real process does
with signals, files and exporters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support.moto_cognito import free_port


def start_serve(policies: Path, port: int, *extra: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "attrgate", "serve", "--insecure", "--region", "us-east-1"),
            *("--policies", str(policies), "--listen", f"127.0.0.1:{port}"),
            *("--pool-metadata-fail-open", "--cognito-endpoint", f"http://127.0.0.1:{free_port()}"),
            *extra,
        ],
        env={
            **os.environ,
            "AWS_ACCESS_KEY_ID": "k",
            "AWS_SECRET_ACCESS_KEY": "s",
            "AWS_EC2_METADATA_DISABLED": "true",
            **env,
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
