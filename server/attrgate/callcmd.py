"""`attrgate call`: one UpdateUserAttributes (or, with --check, CheckUpdateUserAttributes) from
the command line, its decision and errors printed for a person."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from attrgate.identity import CALLER_HEADER
from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _pairs(items: Sequence[str], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"attrgate call: {what} {item!r} is not NAME=VALUE", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG)
        pairs.append((name, value))
    return pairs


def run_call(args: argparse.Namespace, channel: grpc.Channel) -> int:
    """`attrgate call` over `channel`: the exit status."""
    request = pb.UpdateUserAttributesRequest(
        user_pool_id=args.pool,
        username=args.user,
        user_attributes=[
            pb.AttributeType(name=n, value=v) for n, v in _pairs(args.attributes, "attribute")
        ],
        client_metadata=dict(_pairs(args.metadata, "metadata")),
    )
    metadata = ((CALLER_HEADER, args.caller),) if args.caller else ()
    stub = pb_grpc.UserAttributesStub(channel)
    try:
        if args.check:
            decision = stub.CheckUpdateUserAttributes(
                request, timeout=args.timeout, metadata=metadata
            )
            print_decision(decision, sys.stdout)
            return EXIT_OK if decision.allowed else EXIT_FAILED
        response = stub.UpdateUserAttributes(request, timeout=args.timeout, metadata=metadata)
    except grpc.RpcError as error:
        print_error(error, sys.stderr)
        return EXIT_FAILED
    print(f"OK: updated; cognito_request_id={response.cognito_request_id}")
    if response.pending_verification:
        print(
            "  pending_verification: "
            f"{', '.join(response.pending_verification)} (held back until the user verifies)"
        )
    print_decision(response.decision, sys.stdout)
    return EXIT_OK


def print_decision(decision: pb.Decision, out: TextIO) -> None:
    print(f"decision: {'ALLOWED' if decision.allowed else 'DENIED'}", file=out)
    print(f"  decision_id: {decision.decision_id}", file=out)
    print(f"  policy_revision: {decision.policy_revision}", file=out)
    print(f"  matched_policies: {', '.join(decision.matched_policies) or '-'}", file=out)
    if decision.denied_by:
        print(f"  denied_by: {decision.denied_by}", file=out)
    if decision.HasField("sms"):
        sms = decision.sms
        triggers = "triggers an SMS" if sms.triggers_sms else "no SMS"
        print(f"  sms: {triggers}, destination {sms.country or '-'}", file=out)
        for title, refusals in (("refused by", sms.refusals), ("would refuse", sms.would_refuse)):
            for r in refusals:
                print(f"    {title} SmsGuard {r.guard} {r.rule}: {r.description}", file=out)
    if decision.shadow:
        waived = "; the policies deny this request" if decision.shadow_allowed else ""
        print(f"  shadow: true (policies not enforced{waived})", file=out)
    for title, items in (("violations", decision.violations), ("would_deny", decision.would_deny)):
        _print_violations(title, items, out)
    if decision.HasField("candidate"):
        candidate = decision.candidate
        verdict = "ALLOWED" if candidate.allowed else "DENIED"
        print(f"  candidate: {verdict} (revision {candidate.policy_revision})", file=out)
        _print_violations("violations", candidate.violations, out, "    ")


def _print_violations(
    title: str, items: Sequence[pb.Violation], out: TextIO, indent: str = "  "
) -> None:
    if not items:
        return
    print(f"{indent}{title}:", file=out)
    for v in items:
        where = f" [{v.policy} {v.entry}]" if v.policy else ""
        subject = v.attribute or (
            f"client_metadata.{v.client_metadata_key}" if v.client_metadata_key else "(request)"
        )
        print(f"{indent}  - {subject}: {v.reason}{where}: {v.message}", file=out)


def print_error(error: grpc.RpcError, out: TextIO) -> None:
    code = error.code()
    print(f"ERROR {code.name}: {error.details()}", file=out)
    status = rpc_status.from_call(error)
    if status is None:
        return
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            print(f"  reason: {info.reason} (domain {info.domain})", file=out)
            for key in sorted(info.metadata):
                print(f"  {key}: {info.metadata[key]}", file=out)
        elif detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            quota = error_details_pb2.QuotaFailure()
            detail.Unpack(quota)
            for violation in quota.violations:
                print(f"  quota: {violation.subject}: {violation.description}", file=out)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            print(f"  retry after: {retry.retry_delay.seconds}s", file=out)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            print("  field violations:", file=out)
            for violation in bad.field_violations:
                print(f"    - {violation.field}: {violation.description}", file=out)
