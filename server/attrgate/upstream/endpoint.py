"""Where and how a Cognito request goes, as the boto3 client itself would send it.

boto3 stays the source of truth for everything but the bytes on the wire: the client resolves the
endpoint (the service model's rules, `--cognito-endpoint`, FIPS and dual-stack settings), the
signing region and name, and its user agent. `rehearse` asks it once, at start, by making one call
whose request is caught right before it would be sent (botocore's `before-send` event answers it
instead): nothing leaves the process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from botocore.awsrequest import AWSResponse

# What the rehearsal call sends: never sent, only signed.
_REHEARSAL = {"UserPoolId": "us-east-1_rehearsal", "Username": "rehearsal", "UserAttributes": []}
_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str  # with the path: "https://cognito-idp.us-east-1.amazonaws.com/"
    signing_region: str
    signing_name: str
    user_agent: str


class _EmptyBody:
    def stream(self, **_: Any) -> Any:
        yield b"{}"


def rehearse(client: Any) -> Endpoint:
    """The endpoint, signing scope and user agent of `client`'s AdminUpdateUserAttributes."""
    seen: list[Any] = []

    def catch(request: Any, **_: Any) -> AWSResponse:
        seen.append(request)
        return AWSResponse(request.url, 200, {}, _EmptyBody())

    events = client.meta.events
    event = "before-send.cognito-idp.AdminUpdateUserAttributes"
    # First, so no other before-send handler (a retry gate) sees the rehearsal.
    events.register_first(event, catch, unique_id="attrgate-rehearsal")
    try:
        client.admin_update_user_attributes(**_REHEARSAL)
    finally:
        events.unregister(event, unique_id="attrgate-rehearsal")
    request = seen[0]
    authorization = _text(request.headers.get("Authorization", b""))
    scope = _SCOPE.search(authorization)
    if scope is None:
        raise ValueError("the Cognito client does not sign its requests with SigV4")
    return Endpoint(
        url=request.url,
        signing_region=scope.group(1),
        signing_name=scope.group(2),
        user_agent=_text(request.headers.get("User-Agent", b"")),
    )


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
