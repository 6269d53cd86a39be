"""Start moto's Cognito in this process on a free loopback port and seed it."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import yaml

from attrgate.config import ConfigError

LOCAL_ACCESS_KEY = "local"
LOCAL_SECRET_KEY = "local-secret"  # noqa: S105 - the emulator accepts any key


@dataclass
class LocalCognito:
    endpoint: str
    region: str
    pool_id: str
    users: list[str]
    _server: Any

    def stop(self) -> None:
        self._server.stop()


def default_seed() -> str:
    return resources.files("attrgate.local").joinpath("seed.yaml").read_text(encoding="utf-8")


def start_local_cognito(region: str, seed_path: str | None = None) -> LocalCognito:
    try:
        import boto3
        import botocore.exceptions
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise ConfigError(
            "--local-cognito needs the local extra: pip install 'attrgate[local]'"
        ) from None
    try:
        return _start(boto3, ThreadedMotoServer, region, seed_path)
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigError(f"cannot start the local Cognito: {exc}") from None
    except (OSError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot seed the local Cognito from {seed_path}: {exc}") from None


def _start(boto3: Any, server_class: Any, region: str, seed_path: str | None) -> LocalCognito:
    seed_text = Path(seed_path).read_text(encoding="utf-8") if seed_path else default_seed()
    seed = yaml.safe_load(seed_text)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = server_class(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.session.Session(
        aws_access_key_id=LOCAL_ACCESS_KEY,
        aws_secret_access_key=LOCAL_SECRET_KEY,
        region_name=region,
    ).client("cognito-idp", endpoint_url=endpoint)
    pool_seed = seed["userPool"]
    pool = client.create_user_pool(
        PoolName=pool_seed["name"],
        AutoVerifiedAttributes=pool_seed.get("autoVerifiedAttributes", []),
        Schema=[
            {"Name": c["name"], "AttributeDataType": c.get("type", "String"), "Mutable": True}
            for c in pool_seed.get("customAttributes", [])
        ],
    )["UserPool"]
    users = []
    for user in seed.get("users", []):
        client.admin_create_user(
            UserPoolId=pool["Id"],
            Username=user["username"],
            UserAttributes=[
                {"Name": k, "Value": str(v)} for k, v in user.get("attributes", {}).items()
            ],
            MessageAction="SUPPRESS",
        )
        users.append(user["username"])
    client.close()
    return LocalCognito(endpoint, region, pool["Id"], users, server)


def print_help(local: LocalCognito, host: str, port: int, admin_port: int, out: TextIO) -> None:
    """What `make run` prints: where everything is, and commands to try."""
    target = f"{host}:{port}"
    # The command as the user can run it from here, e.g. .venv/bin/attrgate under `make run`.
    program = sys.argv[0] if Path(sys.argv[0]).name == "attrgate" else "attrgate"
    user = local.users[0] if local.users else "USER"
    print(
        f"local Cognito (moto) at {local.endpoint}, region {local.region}\n"
        f"  user pool: {local.pool_id}\n"
        f"  users:     {', '.join(local.users)}\n"
        f"attrgate listening on {target} (plaintext; the caller names itself)"
        + (f", health and status on {host}:{admin_port}" if admin_port else "")
        + "\n"
        "try:\n"
        f"  {program} call --target {target} --caller profile-api --user-pool-id {local.pool_id} "
        f"--username {user} --user-attributes Name=given_name,Value=Augusta\n"
        f"  {program} call --target {target} --caller profile-api --user-pool-id {local.pool_id} "
        f"--username {user} --user-attributes Name=custom:role,Value=admin "
        "Name=email_verified,Value=true\n"
        + (f"  {program} status --target {host}:{admin_port}\n" if admin_port else "")
        + "read a user back (the emulator takes any credentials):\n"
        f"  AWS_ACCESS_KEY_ID=local AWS_SECRET_ACCESS_KEY=local aws --endpoint-url "
        f"{local.endpoint} --region {local.region} cognito-idp admin-get-user "
        f"--user-pool-id {local.pool_id} --username {user}\n",
        file=out,
        flush=True,
    )
