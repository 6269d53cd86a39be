"""`attrgate status`: ask a server's admin listener (attrgate.v1.Admin/Status) what serves, and
print it for a person (text) or a script (json)."""

from __future__ import annotations

import datetime
import json
import sys
import time
from typing import TextIO

import grpc
from google.protobuf import json_format

from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc

EXIT_OK, EXIT_FAILED = 0, 1
_FOLLOWS = {
    "watch": "reloaded on change and on SIGHUP",
    "poll": "polled for new bundles, and reloaded on SIGHUP",
    "sighup": "reloaded on SIGHUP only",
}


def fetch_status(channel: grpc.Channel, timeout: float) -> pb.StatusResponse:
    stub = pb_grpc.AdminStub(channel)
    reply: pb.StatusResponse = stub.Status(pb.StatusRequest(), timeout=timeout)
    return reply


def show_status(
    channel: grpc.Channel, target: str, output: str, timeout: float, out: TextIO = sys.stdout
) -> int:
    """Print the status of the server whose admin listener is `target`; exit status."""
    try:
        reply = fetch_status(channel, timeout)
    except grpc.RpcError as error:
        hint = (
            " (is it the --admin-listen address? the main listener has no status)"
            if error.code() == grpc.StatusCode.UNIMPLEMENTED
            else ""
        )
        print(f"attrgate status: {target}: {error.code().name}{hint}", file=sys.stderr)
        return EXIT_FAILED
    if output == "json":
        as_dict = json_format.MessageToDict(
            reply,
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        print(json.dumps(as_dict, indent=2, sort_keys=True), file=out)
    else:
        print(render_text(reply, time.time()), file=out)
    return EXIT_OK


def render_text(reply: pb.StatusResponse, now: float) -> str:
    lines = [f"attrgate {reply.version}"]
    if reply.shadow:
        lines.append(
            "SHADOW MODE: requests the policies deny are forwarded anyway (serve --shadow); "
            "their findings are in would_deny"
        )
    lines += _set_lines("policies", reply.policies, now)
    if reply.HasField("candidate"):
        lines += _set_lines("candidate policies (evaluated, never enforced)", reply.candidate, now)
    return "\n".join(lines)


def _set_lines(title: str, found: pb.PolicySetStatus, now: float) -> list[str]:
    lines = [
        f"{title}:",
        f"  source:      {found.source} ({_FOLLOWS.get(found.follows, found.follows)})",
        f"  revision:    {found.revision} ({found.documents} "
        f"document{'' if found.documents == 1 else 's'}), loaded "
        f"{_when(found.loaded_at_unix_ms, now)}",
    ]
    if found.fallback:
        lines.append("  FALLBACK:    serving --policies-fallback: no valid bundle could be had yet")
    if found.last_result:
        lines.append(f"  last reload: {found.last_result} {_when(found.last_attempt_unix_ms, now)}")
    if found.last_error:
        lines.append(f"  last error:  {found.last_error}")
    if found.source_error:
        lines.append(
            f"  UNREACHABLE: {found.source_error} ({found.source_errors} attempts in a row, "
            f"since {_when(found.source_error_since_unix_ms, now)}); the revision above serves"
        )
    return lines


def _when(unix_ms: int, now: float) -> str:
    if not unix_ms:
        return "never"
    at = datetime.datetime.fromtimestamp(unix_ms / 1000, datetime.UTC)
    ago = max(0, int(now - unix_ms / 1000))
    return f"{at:%Y-%m-%dT%H:%M:%SZ} ({_ago(ago)} ago)"


def _ago(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"
