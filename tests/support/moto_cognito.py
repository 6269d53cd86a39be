"""moto's Cognito in its own process, with SigV4 request authentication switched on.

Two IAM users: `admin` (everything, for test set-up) and `attrgate` (only the actions attrgate
needs), so an unsigned, badly signed or over-reaching request from attrgate fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import boto3

REGION = "us-east-1"
ATTRGATE_ACTIONS = [
    "cognito-idp:AdminUpdateUserAttributes",
    "cognito-idp:DescribeUserPool",
    "cognito-idp:AdminGetUser",
]


def allow_only(iam: Any, user: str, actions: Sequence[str]) -> None:
    """The IAM user `user` may do `actions` and nothing else."""
    statement = {"Effect": "Allow", "Action": list(actions), "Resource": "*"}
    document = {"Version": "2012-10-17", "Statement": [statement]}
    iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps(document))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Keys:
    access_key_id: str
    secret_access_key: str


class MotoCognito:
    """`attrgate_actions`: what attrgate's IAM user may do (another test's needs, e.g.
    s3:GetObject for policy bundles served from this same moto server)."""

    def __init__(self, attrgate_actions: Sequence[str] = tuple(ATTRGATE_ACTIONS)) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # moto's recorder writes every request it gets here within `recording()`.
        handle, self._recording = tempfile.mkstemp(prefix="moto-recording-")
        os.close(handle)
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "MOTO_RECORDER_FILEPATH": self._recording},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).close()  # noqa: S310
                break
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        bootstrap = self.client("iam", Keys("bootstrap", "bootstrap"))
        self.admin_keys = self._iam_user(bootstrap, "admin", ["*"])
        self.attrgate_keys = self._iam_user(bootstrap, "attrgate", list(attrgate_actions))
        self._enforce_auth()
        self.admin = self.client("cognito-idp", self.admin_keys)

    def client(self, service: str, keys: Keys) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key,
        )

    @staticmethod
    def _iam_user(iam: Any, name: str, actions: list[str]) -> Keys:
        iam.create_user(UserName=name)
        allow_only(iam, name, actions)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Keys(key["AccessKeyId"], key["SecretAccessKey"])

    def _enforce_auth(self) -> None:
        request = urllib.request.Request(  # noqa: S310
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0",
            headers={"Content-Type": "text/plain"},
            method="POST",
        )
        urllib.request.urlopen(request, timeout=5).close()  # noqa: S310

    def create_pool(self, name: str = "pool", **kwargs: Any) -> str:
        pool_id: str = self.admin.create_user_pool(PoolName=name, **kwargs)["UserPool"]["Id"]
        return pool_id

    def create_user(self, pool_id: str, username: str, **attributes: str) -> None:
        self.admin.admin_create_user(
            UserPoolId=pool_id,
            Username=username,
            UserAttributes=[{"Name": k, "Value": v} for k, v in attributes.items()],
            MessageAction="SUPPRESS",
        )

    def attributes(self, pool_id: str, username: str) -> dict[str, str]:
        user = self.admin.admin_get_user(UserPoolId=pool_id, Username=username)
        return {a["Name"]: a["Value"] for a in user["UserAttributes"]}

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Within: moto records what it receives (for `received`), having forgotten the rest."""
        for action in ("reset-recording", "start-recording"):
            self._moto_api(f"recorder/{action}")
        try:
            yield
        finally:
            self._moto_api("recorder/stop-recording")

    def received(self, operation: str) -> int:
        """How many `operation` requests attrgate's credentials sent in the last `recording()`."""
        with urllib.request.urlopen(  # noqa: S310
            f"{self.endpoint}/moto-api/recorder/download-recording", timeout=10
        ) as answer:
            lines = answer.read().decode().splitlines()
        credential = f"Credential={self.attrgate_keys.access_key_id}/"
        found = 0
        for line in lines:
            headers = {k.lower(): v for k, v in json.loads(line)["headers"].items()}
            if headers.get("x-amz-target", "").endswith("." + operation) and credential in (
                headers.get("authorization", "")
            ):
                found += 1
        return found

    def _moto_api(self, path: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/moto-api/{path}", method="POST")  # noqa: S310
        urllib.request.urlopen(request, timeout=5).close()  # noqa: S310

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)
        os.unlink(self._recording)
