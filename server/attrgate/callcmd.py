"""`attrgate call`: one UpdateUserAttributes (or, with --check, CheckUpdateUserAttributes) from
the command line, in the AWS CLI's language: a runbook's
`aws cognito-idp admin-update-user-attributes ...` line runs with only the command changed.
Its options, shorthand, JSON, `file://`, `--cli-input-json|yaml`, `--generate-cli-skeleton`,
`--output`, `--query` and timeouts mean what they mean to the AWS CLI; the answer prints as the
AWS CLI prints the operation's (empty) response, with attrgate's additions under `Attrgate`;
errors go to stderr in the AWS CLI's words, with exit codes as the AWS CLI v2's:

    0 done   1 --check: the policies would deny   130 Ctrl-C
    252 usage (a bad option or value)   253 configuration (TLS files)
    254 an error answered by attrgate (a denial included)   255 any other failure
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from attrgate.clicompat import output, params
from attrgate.clientchannel import add_tls_arguments, open_channel
from attrgate.identity import CALLER_HEADER
from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc

EXIT_OK, EXIT_DENIED = 0, 1
EXIT_USAGE, EXIT_CONFIG, EXIT_SERVICE, EXIT_OTHER = 252, 253, 254, 255
EXIT_INTERRUPTED = 130
RPC = "UpdateUserAttributes"
CHECK_RPC = "CheckUpdateUserAttributes"
# AWS CLI options that mean nothing here (attrgate calls Cognito with its own credentials, in
# the pool's region): accepted so that a runbook line runs, and named on stderr when given.
IGNORED_WITH_VALUE = (
    "--region",
    "--profile",
    "--endpoint-url",
    "--cli-binary-format",
    "--ca-bundle",
)
IGNORED_FLAGS = ("--no-paginate", "--no-sign-request", "--no-verify-ssl", "--no-cli-auto-prompt")
# The output skeleton: the operation's (empty) response plus attrgate's additions.
OUTPUT_SKELETON = {
    "Attrgate": {
        "DecisionId": "",
        "PolicyRevision": "",
        "CognitoRequestId": "",
        "PendingVerification": [""],
        "WouldDeny": [{"Attribute": "", "Policy": "", "Reason": ""}],
    }
}


class UsageError(Exception):
    """A command line the AWS CLI would refuse: said on stderr, exit 252."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    call = _Parser(
        prog="attrgate call",
        description="Send UpdateUserAttributes (or --check) to attrgate, with the AWS CLI's "
        "options for `aws cognito-idp admin-update-user-attributes`.",
    )
    aws = call.add_argument_group("the AWS CLI's options")
    aws.add_argument("--user-pool-id", "--pool", dest="user_pool_id", metavar="STRING")
    aws.add_argument("--username", "--user", dest="username", metavar="STRING")
    aws.add_argument(
        "--user-attributes",
        nargs="+",
        metavar="Name=string,Value=string",
        help="shorthand (one per word), JSON, or file://",
    )
    aws.add_argument(
        "--client-metadata", metavar="KeyName1=string,KeyName2=string", help="shorthand or JSON"
    )
    inputs = aws.add_mutually_exclusive_group()
    inputs.add_argument("--cli-input-json", metavar="JSON", help="the input as JSON (or file://)")
    inputs.add_argument("--cli-input-yaml", metavar="YAML", help="the input as YAML (or file://)")
    aws.add_argument(
        "--generate-cli-skeleton",
        nargs="?",
        const="input",
        choices=("input", "yaml-input", "output"),
        help="print a skeleton of the input (or output) and exit",
    )
    aws.add_argument(
        "--output",
        choices=output.FORMATS,
        default=os.environ.get("AWS_DEFAULT_OUTPUT") or "json",
        help="json (default, or $AWS_DEFAULT_OUTPUT), text, table or yaml",
    )
    aws.add_argument("--query", help="a JMESPath expression applied to the answer")
    aws.add_argument(
        "--cli-read-timeout",
        "--timeout",
        dest="read_timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="the answer's deadline once connected (0: none; default 60)",
    )
    aws.add_argument(
        "--cli-connect-timeout",
        dest="connect_timeout",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait for a connection (0: for ever; default 60)",
    )
    aws.add_argument("--debug", action="store_true", help="what is sent and received, on stderr")
    aws.add_argument("--no-cli-pager", action="store_true", help="accepted: nothing is paged")
    aws.add_argument("--color", choices=("on", "off", "auto"), default="auto")
    for flag in IGNORED_WITH_VALUE:
        aws.add_argument(flag, dest=_dest(flag), help=argparse.SUPPRESS)
    for flag in IGNORED_FLAGS:
        aws.add_argument(flag, dest=_dest(flag), action="store_true", help=argparse.SUPPRESS)
    own = call.add_argument_group("attrgate's options")
    own.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of attrgate")
    own.add_argument("--caller", help=f"caller name for an --insecure server ({CALLER_HEADER})")
    own.add_argument(
        "--check",
        action="store_true",
        help="CheckUpdateUserAttributes: decide only, change nothing",
    )
    own.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="client metadata, repeatable; shorthand, as --client-metadata",
    )
    add_tls_arguments(own)
    own.add_argument(
        "attributes", nargs="*", metavar="NAME=VALUE", help="attributes, the short form"
    )
    return call


def _dest(flag: str) -> str:
    return "ignored_" + flag.lstrip("-").replace("-", "_")


def _seconds(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds (0: none)")
    return value


def main(argv: Sequence[str]) -> int:
    """`attrgate call ARGV`: the exit status."""
    try:
        args = parser().parse_args(argv)
        if args.generate_cli_skeleton:
            _skeleton(args.generate_cli_skeleton, sys.stdout)
            return EXIT_OK
        request = build_request(args)
        query = output.compile_query(args.query)
    except (UsageError, params.ParamError, output.QueryError) as exc:
        print(f"\n{exc}\n", file=sys.stderr)
        print("usage: attrgate call [options]; attrgate call --help", file=sys.stderr)
        return EXIT_USAGE
    _note_ignored(args)
    try:
        channel = open_channel(args)
    except OSError as exc:
        print(f"\nattrgate call: cannot read a TLS file: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    with channel:
        return _send(args, channel, request, query)


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    """The operation's input from the command line (and --cli-input-*), validated."""
    given: dict[str, Any] = {}
    for option, value in (
        ("--user-pool-id", args.user_pool_id),
        ("--username", args.username),
        ("--user-attributes", args.user_attributes),
        ("--client-metadata", args.client_metadata),
    ):
        if value is not None:
            given[params.OPTIONS[option]] = params.unpack(option, value)
    if args.attributes:
        short = [_name_value(item) for item in args.attributes]
        given["UserAttributes"] = [*given.get("UserAttributes", []), *short]
    for item in args.metadata:  # each one shorthand: `--metadata a=1,b=2` is two keys
        given["ClientMetadata"] = {
            **given.get("ClientMetadata", {}),
            **params.unpack("--client-metadata", item),
        }
    document = None
    if args.cli_input_json is not None or args.cli_input_yaml is not None:
        yaml_input = args.cli_input_yaml is not None
        document = params.cli_input(args.cli_input_yaml or args.cli_input_json, yaml_input)
    else:
        missing = [
            option
            for option, member in params.OPTIONS.items()
            if member != "ClientMetadata" and member not in given
        ]
        if missing:
            raise UsageError(f"the following arguments are required: {', '.join(missing)}")
    return params.build(given, document)


def _name_value(item: str) -> dict[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise UsageError(f"attribute {item!r} is not NAME=VALUE")
    return {"Name": name, "Value": value}


def _skeleton(kind: str, out: TextIO) -> None:
    if kind == "output":
        out.write(json.dumps(OUTPUT_SKELETON, indent=4) + "\n")
    elif kind == "yaml-input":
        output.write("", params.skeleton(), "yaml", None, out)
    else:
        out.write(json.dumps(params.skeleton(), indent=4) + "\n")


def _note_ignored(args: argparse.Namespace) -> None:
    given = [f for f in (*IGNORED_WITH_VALUE, *IGNORED_FLAGS) if getattr(args, _dest(f))]
    if given:
        print(
            f"attrgate call: {', '.join(given)} ignored: attrgate calls Cognito with its own "
            "credentials, in the pool's region",
            file=sys.stderr,
        )


def to_proto(request: dict[str, Any]) -> pb.UpdateUserAttributesRequest:
    return pb.UpdateUserAttributesRequest(
        user_pool_id=request["UserPoolId"],
        username=request["Username"],
        user_attributes=[
            pb.AttributeType(name=a["Name"], value=a.get("Value", ""))
            for a in request["UserAttributes"]
        ],
        client_metadata=request.get("ClientMetadata") or {},
    )


def _send(
    args: argparse.Namespace, channel: grpc.Channel, request: dict[str, Any], query: Any
) -> int:
    operation = CHECK_RPC if args.check else RPC
    debug = _Debug(args.debug)
    debug.say(f"{operation} to {args.target}: members {sorted(request)}")
    if args.connect_timeout:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.connect_timeout)
        except grpc.FutureTimeoutError:
            print(
                f"\nConnect timeout on endpoint URL: {args.target} "
                f"(--cli-connect-timeout {args.connect_timeout:g})",
                file=sys.stderr,
            )
            return EXIT_OTHER
        debug.say("connected")
    stub = pb_grpc.UserAttributesStub(channel)
    call_options: dict[str, Any] = {
        "timeout": args.read_timeout or None,
        "metadata": ((CALLER_HEADER, args.caller),) if args.caller else (),
        "wait_for_ready": not args.connect_timeout,  # 0: wait for a connection for ever
    }
    try:
        if args.check:
            decision = stub.CheckUpdateUserAttributes(to_proto(request), **call_options)
            answer = {"Attrgate": checked(decision)}
        else:
            response = stub.UpdateUserAttributes(to_proto(request), **call_options)
            answer = {"Attrgate": updated(response)}
    except grpc.RpcError as error:
        return print_error(error, operation, args.target, sys.stderr)
    debug.say(f"answered: decision {answer['Attrgate'].get('DecisionId', '')}")
    color = args.color == "on" or (args.color == "auto" and sys.stdout.isatty())
    output.write(operation, answer, args.output, query, sys.stdout, color)
    if args.check and not answer["Attrgate"]["Allowed"]:
        return EXIT_DENIED
    return EXIT_OK


class _Debug:
    def __init__(self, on: bool) -> None:
        self.on = on

    def say(self, text: str) -> None:
        if self.on:
            print(f"attrgate call: {text}", file=sys.stderr)


def updated(response: pb.UpdateUserAttributesResponse) -> dict[str, Any]:
    """attrgate's additions to the operation's (empty) response."""
    decision = response.decision
    return {
        "DecisionId": decision.decision_id,
        "PolicyRevision": decision.policy_revision,
        "CognitoRequestId": response.cognito_request_id,
        "PendingVerification": list(response.pending_verification),
        "WouldDeny": [_finding(v) for v in decision.would_deny],
    }


def checked(decision: pb.Decision) -> dict[str, Any]:
    """A CheckUpdateUserAttributes decision, in the same style."""
    answer: dict[str, Any] = {
        "Allowed": decision.allowed,
        "DecisionId": decision.decision_id,
        "PolicyRevision": decision.policy_revision,
        "MatchedPolicies": list(decision.matched_policies),
        "Violations": [_finding(v, detailed=True) for v in decision.violations],
        "WouldDeny": [_finding(v, detailed=True) for v in decision.would_deny],
    }
    if decision.denied_by:
        answer["DeniedBy"] = decision.denied_by
    if decision.shadow:
        answer["Shadow"] = True
        answer["ShadowAllowed"] = decision.shadow_allowed
    if decision.HasField("sms"):
        sms = decision.sms
        answer["Sms"] = {
            "TriggersSms": sms.triggers_sms,
            "Country": sms.country,
            "Refusals": [_refusal(r) for r in sms.refusals],
            "WouldRefuse": [_refusal(r) for r in sms.would_refuse],
        }
    if decision.HasField("candidate"):
        candidate = decision.candidate
        answer["Candidate"] = {
            "Allowed": candidate.allowed,
            "PolicyRevision": candidate.policy_revision,
            "Violations": [_finding(v, detailed=True) for v in candidate.violations],
        }
    return answer


def _finding(v: pb.Violation, detailed: bool = False) -> dict[str, str]:
    found = {"Attribute": v.attribute, "Policy": v.policy, "Reason": v.reason}
    if v.client_metadata_key:
        found["ClientMetadataKey"] = v.client_metadata_key
    if detailed:
        found["Entry"] = v.entry
        found["Message"] = v.message
    return found


def _refusal(r: pb.SmsRefusal) -> dict[str, Any]:
    return {
        "Guard": r.guard,
        "Rule": r.rule,
        "Description": r.description,
        "RetryAtUnixMs": r.retry_at_unix_ms,
    }


def print_error(error: grpc.RpcError, operation: str, target: str, out: TextIO) -> int:
    """The AWS CLI's error line, attrgate's details below it; the exit status."""
    code: grpc.StatusCode = error.code()
    status = rpc_status.from_call(error)
    info = _error_info(status)
    if info is None and code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        # Nothing from attrgate: the connection or the deadline failed, not the request.
        what = "Read timeout" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "Could not connect"
        print(f"\n{what} on endpoint URL: {target}: {error.details()}", file=out)
        return EXIT_OTHER
    name = info.reason if info is not None else code.name
    print(
        f"\nAn error occurred ({name}) when calling the {operation} operation: {error.details()}",
        file=out,
    )
    print(f"  status: {code.name}", file=out)
    if status is not None:
        _print_details(status.details, out)
    return EXIT_SERVICE


def _error_info(status: Any) -> error_details_pb2.ErrorInfo | None:
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def _print_details(details: Sequence[Any], out: TextIO) -> None:
    for detail in details:
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
