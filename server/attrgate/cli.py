"""attrgate serve | check | test | explain | schema | bundle | call | sms usage | health."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from attrgate import __version__
from attrgate.analyze import add_arguments as add_analyze_arguments
from attrgate.bundle.arguments import add_arguments as add_bundle_arguments
from attrgate.clientchannel import add_tls_arguments, open_channel
from attrgate.config import ConfigError, Settings, add_serve_arguments, settings_from
from attrgate.explain import command as explain
from attrgate.policy.kinds import add_schema_command
from attrgate.policy.snapshot import DEFAULT_MAX_BYTES
from attrgate.policytest.arguments import add_arguments as add_test_arguments

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["call"]:
        from attrgate.callcmd import main as call

        return _guarded(lambda: call(argv[1:]))
    parser = _parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_CONFIG
    return _guarded(lambda: handler(args))


def _guarded(command: Callable[[], int]) -> int:
    """A command's exit status; Ctrl-C and a closed stdout end it as Unix tools end."""
    try:
        result: int = command()
    except KeyboardInterrupt:
        # Ctrl-C: no traceback, the shell's exit status for SIGINT.
        print("", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`attrgate call ... | head -1`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attrgate", description="Policy-enforcing gRPC proxy for Cognito attribute updates."
    )
    parser.add_argument("--version", action="version", version=f"attrgate {__version__}")
    commands = parser.add_subparsers(title="commands")

    serve = commands.add_parser("serve", help="run the proxy")
    add_serve_arguments(serve)
    serve.set_defaults(handler=_serve)

    check = commands.add_parser("check", help="validate a policy set (file or folder)")
    check.add_argument("path")
    _add_policy_max_bytes(check)
    check.set_defaults(handler=_check)

    add_schema_command(commands)

    test = commands.add_parser("test", help="run PolicyTest suites against a policy set")
    _add_policy_max_bytes(test)
    add_test_arguments(test)

    analyze = commands.add_parser("analyze", help="find dead, shadowed and conflicting entries")
    add_analyze_arguments(analyze)
    _add_policy_max_bytes(analyze)
    analyze.set_defaults(handler=_analyze)

    add_bundle_arguments(commands, _add_policy_max_bytes)

    # Listed here for `attrgate --help`; main() hands `call` its whole command line
    # (attrgate.callcmd: the AWS CLI's options and exit codes).
    commands.add_parser(
        "call", add_help=False, help="send UpdateUserAttributes (or --check), AWS CLI style"
    )

    explain.add_parser(commands, _add_policy_max_bytes)

    sms = commands.add_parser("sms", help="the SMS cost guard")
    sms_commands = sms.add_subparsers(title="sms commands")
    usage = sms_commands.add_parser(
        "usage", help="current usage of every SMS limit and budget, from the servers' store"
    )
    for flag, env, text in (
        ("--policies", "ATTRGATE_POLICIES", "policy file or folder"),
        ("--state", "ATTRGATE_STATE", "the SQLite file the servers count in"),
        ("--redis-url", "ATTRGATE_REDIS_URL", "the Redis the servers count in"),
    ):
        usage.add_argument(flag, default=os.environ.get(env) or None, help=f"{text} [env {env}]")
    _add_policy_max_bytes(usage)
    usage.add_argument(
        "--redis-cluster",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("ATTRGATE_REDIS_CLUSTER", "").lower() in ("1", "true", "yes", "on"),
        help="that Redis is a Redis Cluster [env ATTRGATE_REDIS_CLUSTER]",
    )
    usage.set_defaults(handler=_sms_usage)

    completion = commands.add_parser("completion", help="shell completion: bash or zsh")
    completion.add_argument("shell", choices=("bash", "zsh"))
    completion.set_defaults(handler=_completion)

    health = commands.add_parser("health", help="exit 0 when the server reports SERVING")
    health.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT")
    health.add_argument("--service", default="", help="service name (default: the server)")
    health.add_argument("--timeout", type=float, default=3.0)
    add_tls_arguments(health)
    health.set_defaults(handler=_health)

    status = commands.add_parser(
        "status", help="what a server serves: policy revisions, reloads, shadow mode"
    )
    status.add_argument(
        "--target", default="127.0.0.1:50052", help="HOST:PORT of the server's --admin-listen"
    )
    status.add_argument("--output", choices=("text", "json"), default="text")
    status.add_argument("--timeout", type=float, default=3.0)
    # The admin listener is plaintext (probes, operators on the pod's network).
    status.set_defaults(handler=_status, ca=None, tls_cert=None, tls_key=None)
    return parser


def _add_policy_max_bytes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy-max-bytes",
        type=int,
        default=os.environ.get("ATTRGATE_POLICY_MAX_BYTES") or DEFAULT_MAX_BYTES,
        help="the limit `serve` applies to each policy file and to all together "
        "[env ATTRGATE_POLICY_MAX_BYTES]",
    )


def _analyze(args: argparse.Namespace) -> int:
    from attrgate.analyze.report import run

    return run(args)


def _completion(args: argparse.Namespace) -> int:
    from attrgate.callcmd import parser as call_parser
    from attrgate.completion import script

    sys.stdout.write(script(args.shell, _parser(), call_parser()))
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    # SIGHUP's default action kills: until the server takes it over, remember one instead.
    early_sighup = threading.Event()
    signal.signal(signal.SIGHUP, lambda signum, frame: early_sighup.set())
    from attrgate.workers.child import worker_link

    # A worker of `serve --workers` gets its settings from its parent, resolved.
    link = worker_link()
    try:
        settings = link.settings if link is not None else settings_from(args)
    except ConfigError as exc:
        return _refuse(exc)
    # A fatal signal (SIGSEGV, SIGBUS, SIGABRT) leaves every thread's stack on stderr, and
    # `kill -QUIT` prints them without stopping the server: what a stuck drain is waiting for.
    faulthandler.enable()
    faulthandler.register(signal.SIGQUIT, all_threads=True)
    tag = "" if link is None else f"[worker {link.index}] "
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s %(name)s {tag}%(message)s",
        stream=sys.stderr,
    )
    # botocore's INFO lines (where it found credentials) would clutter a one-line refusal; its
    # DEBUG bodies are filtered where the client is built.
    if logging.root.level > logging.DEBUG:
        logging.getLogger("botocore").setLevel(logging.WARNING)
    if settings.workers > 1 and link is None:
        return _supervise(settings)
    from attrgate.app import serve  # the parent of workers needs none of it (0.5 s of imports)
    from attrgate.tracing import configure_tracing

    if link is not None:
        if not link.wait_to_start():
            return EXIT_OK  # the parent stopped before this worker's turn: nothing to say
        link.watch_parent()

    try:
        provider = configure_tracing()
    except ValueError as exc:
        return _refuse(ConfigError(str(exc)))
    try:
        asyncio.run(
            serve(
                settings,
                sys.stdout,
                early_sighup.is_set,
                worker=None if link is None else link.index,
                on_serving=(lambda app: None) if link is None else link.serving,
            )
        )
    except ConfigError as exc:
        return _refuse(exc)
    finally:
        # asyncio.run gave SIGHUP back its default (fatal) action; the flush may take seconds.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if provider is not None:
            provider.shutdown()  # flush what is still batched
    return EXIT_OK


def _supervise(settings: Settings) -> int:
    """The parent of `serve --workers N` (attrgate.workers): it starts no gRPC of its own."""
    from attrgate.workers.supervisor import supervise

    try:
        return supervise(settings)
    except ConfigError as exc:
        return _refuse(exc)


def _refuse(error: ConfigError) -> int:
    print(f"attrgate: refusing to start: {error}", file=sys.stderr)
    return EXIT_CONFIG


def _check(args: argparse.Namespace) -> int:
    from attrgate.policy.load import load_policy_set

    result = load_policy_set(args.path, args.policy_max_bytes)
    for error in result.errors:
        print(error, file=sys.stderr)
    if not result.ok:
        return EXIT_FAILED
    policies = len(result.policies)
    files = len({p.file for p in result.policies})
    print(
        f"ok: {policies} {'policy' if policies == 1 else 'policies'} in {files} "
        f"{'file' if files == 1 else 'files'}, revision {result.revision}"
    )
    return EXIT_OK


def _sms_usage(args: argparse.Namespace) -> int:
    from attrgate.guards.counting import wall_clock_ms
    from attrgate.guards.usage import usage_report
    from attrgate.policy.loading import load_policies
    from attrgate.store.base import Store, StoreUnavailable
    from attrgate.store.redis import RedisStore
    from attrgate.store.sqlite import SqliteStore

    if not args.policies or not (args.state or args.redis_url):
        print(
            "attrgate sms usage: give --policies and one of --state or --redis-url", file=sys.stderr
        )
        return EXIT_CONFIG
    if args.redis_url and args.state:
        # As `serve` does: a fleet's Redis beats the image's default state file.
        print("attrgate sms usage: reading Redis; --state is not used", file=sys.stderr)
        args.state = None
    try:
        policy_set = load_policies(args.policies, args.policy_max_bytes)
    except ConfigError as exc:
        print(f"attrgate sms usage: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.state and not Path(args.state).is_file():
        print(f"attrgate sms usage: no state file at {args.state}", file=sys.stderr)
        return EXIT_CONFIG

    async def report() -> list[str]:
        store: Store = (
            SqliteStore(args.state, timeout=5.0, read_only=True)
            if args.state
            else RedisStore(args.redis_url, timeout=5.0, cluster=args.redis_cluster)
        )
        try:
            return await usage_report(policy_set.guards, store, wall_clock_ms())
        finally:
            await store.close()

    try:
        lines = asyncio.run(report())
    except StoreUnavailable as exc:
        print(f"attrgate sms usage: the store does not answer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print("\n".join(lines))
    return EXIT_OK


def _health(args: argparse.Namespace) -> int:
    with open_channel(args) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"unhealthy: {error.code().name}", file=sys.stderr)
            return EXIT_FAILED
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    return EXIT_OK if response.status == health_pb2.HealthCheckResponse.SERVING else EXIT_FAILED


def _status(args: argparse.Namespace) -> int:
    from attrgate.statusview import show_status

    with open_channel(args) as channel:
        return show_status(channel, args.target, args.output, args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
