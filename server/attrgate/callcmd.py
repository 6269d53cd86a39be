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
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

import grpc
import jmespath.exceptions

from attrgate.clicompat import answers, output, params
from attrgate.clientchannel import add_tls_arguments, open_channel
from attrgate.identity import CALLER_HEADER
from attrgate.v1 import attrgate_pb2 as pb
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc

EXIT_OK, EXIT_DENIED = 0, 1
EXIT_USAGE, EXIT_CONFIG = 252, 253
EXIT_OTHER = answers.EXIT_OTHER
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


MAX_SECONDS = 86_400.0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0 <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds from 0 (none) to {MAX_SECONDS:g}"
        )
    return value


def main(argv: Sequence[str]) -> int:
    """`attrgate call ARGV`: the exit status. Nothing escapes as a traceback: what went wrong
    is one message on stderr and an AWS CLI exit code."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        raise  # the CLI's Ctrl-C: 130
    except Exception as exc:  # a failure of attrgate call itself: the AWS CLI's catch-all
        print(f"\nattrgate call: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_OTHER


def _main(argv: Sequence[str]) -> int:
    try:
        args = parser().parse_args(argv)
        if args.output not in output.FORMATS:  # $AWS_DEFAULT_OUTPUT: argparse checks no default
            raise UsageError(
                f"argument --output: invalid choice: {args.output!r} "
                f"(choose from {', '.join(output.FORMATS)})"
            )
        if args.generate_cli_skeleton:
            return _printed(lambda: _skeleton(args.generate_cli_skeleton, sys.stdout), EXIT_OK)
        request = build_request(args)
        query = output.compile_query(args.query)
    except (UsageError, params.ParamError, output.QueryError) as exc:
        print(f"\n{exc}\n", file=sys.stderr)
        print("usage: attrgate call [options]; attrgate call --help", file=sys.stderr)
        return EXIT_USAGE
    _note_ignored(args)
    try:
        channel = open_channel(args)
    except (OSError, ValueError) as exc:
        print(f"\nattrgate call: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    with channel:
        return _send(args, channel, request, query)


def _printed(write: Callable[[], None], status: int) -> int:
    """`status` once `write` has printed to stdout; a reader that went away (`| head -1`) does
    not change it: the call's outcome stands."""
    try:
        write()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return status


def build_request(args: argparse.Namespace) -> dict[str, Any]:
    """The operation's input from the command line (and --cli-input-*), validated."""
    given: dict[str, Any] = {}
    values = (args.user_pool_id, args.username, args.user_attributes, args.client_metadata)
    for option, value in zip(params.OPTIONS, values, strict=True):
        if value is not None:
            given[params.OPTIONS[option]] = params.unpack(option, value)
    aws_only = (
        args.user_attributes,
        args.client_metadata,
        args.cli_input_json,
        args.cli_input_yaml,
    )
    if args.attributes and any(v is not None for v in aws_only):
        # A word no option took, on an AWS CLI line: the AWS CLI refuses it; sending it as an
        # attribute would write what nobody meant to.
        raise UsageError(f"Unknown options: {', '.join(args.attributes)}")
    if args.attributes:
        short = [_name_value(item) for item in args.attributes]
        given["UserAttributes"] = short
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
    if not sep or not name or name == "Name":
        # `Name=given_name,Value=Ada` without --user-attributes before it is shorthand gone astray.
        raise UsageError(f"Unknown options: {item}")
    return {"Name": name, "Value": value}


def _skeleton(kind: str, out: TextIO) -> None:
    skeleton = answers.OUTPUT_SKELETON if kind == "output" else params.skeleton()
    output.write("", skeleton, "yaml" if kind == "yaml-input" else "json", None, out)


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
    debug = _debug if args.debug else _quiet
    debug(f"{operation} to {args.target}: members {sorted(request)}")
    if args.connect_timeout:
        try:
            grpc.channel_ready_future(channel).result(timeout=args.connect_timeout)
        except grpc.FutureTimeoutError:
            print(
                f'\nConnect timeout on endpoint URL: "{args.target}" '
                f"(--cli-connect-timeout {args.connect_timeout:g})",
                file=sys.stderr,
            )
            return EXIT_OTHER
        debug("connected")
    stub = pb_grpc.UserAttributesStub(channel)
    call_options: dict[str, Any] = {
        "timeout": args.read_timeout or None,
        "metadata": ((CALLER_HEADER, args.caller),) if args.caller else (),
        "wait_for_ready": not args.connect_timeout,  # 0: wait for a connection for ever
    }
    try:
        if args.check:
            decision = stub.CheckUpdateUserAttributes(to_proto(request), **call_options)
            answer = {"Attrgate": answers.checked(decision)}
        else:
            response = stub.UpdateUserAttributes(to_proto(request), **call_options)
            answer = {"Attrgate": answers.updated(response)}
    except grpc.RpcError as error:
        return answers.print_error(error, operation, args.target, sys.stderr)
    debug(f"answered: decision {answer['Attrgate'].get('DecisionId', '')}")
    status = EXIT_DENIED if args.check and not answer["Attrgate"]["Allowed"] else EXIT_OK
    color = args.color == "on" or (args.color == "auto" and sys.stdout.isatty())
    try:
        return _printed(
            lambda: output.write(operation, answer, args.output, query, sys.stdout, color), status
        )
    except (ValueError, TypeError, jmespath.exceptions.JMESPathError) as exc:
        # Done at attrgate, but the answer cannot be shown this way (a --query of the wrong
        # type, a table of uneven rows): as the AWS CLI, the message and 255.
        print(f"\n{exc}", file=sys.stderr)
        return EXIT_OTHER


def _debug(text: str) -> None:
    print(f"attrgate call: {text}", file=sys.stderr)


def _quiet(text: str) -> None:
    pass
