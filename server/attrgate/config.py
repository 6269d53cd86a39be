"""One Settings object for `attrgate serve`: every flag also reads an ATTRGATE_* variable.

A flag beats its variable; --region/ATTRGATE_REGION beat AWS_REGION. `Settings.problems()` says, in
one line each, why the server must not start.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from attrgate.policy.snapshot import DEFAULT_MAX_BYTES
from attrgate.store import breaker
from attrgate.store.base import DEFAULT_TIMEOUT

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_POLL = 30.0
S3_PREFIX = "s3://"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class ConfigError(Exception):
    """Configuration that must stop the server from starting; the message is one line."""


@dataclass(frozen=True)
class Settings:
    policies: str | None = None
    policy_max_bytes: int = DEFAULT_MAX_BYTES
    policy_watch: bool | None = None  # None: on for a local path, off for s3:// (polled)
    policy_debounce: float = 1.0
    policy_poll: float | None = None  # None: DEFAULT_POLL, for an s3:// source only
    bundle_public_key: str | None = None
    allow_unsigned_bundles: bool = False
    bundle_target: str | None = None  # None: each s3:// source's own URL
    policies_fallback: str | None = None
    candidate_policies: str | None = None
    shadow: bool = False
    listen: str = DEFAULT_LISTEN
    admin_listen: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    insecure: bool = False
    insecure_allow_remote: bool = False
    region: str | None = None
    cognito_endpoint: str | None = None
    executor_threads: int | None = None  # deprecated: accepted, ignored (see check)
    cognito_connect_timeout: float = 2.0
    cognito_read_timeout: float = 5.0
    cognito_max_attempts: int = 3
    max_receive_bytes: int = 64 * 1024
    grace: float = 10.0
    drain_delay: float = 5.0
    pool_cache_ttl: float = 300.0
    pool_negative_ttl: float = 60.0
    pool_cache_stale: float = 3600.0
    metadata_lookup_rate: float = 5.0
    metadata_lookup_burst: int = 10
    pool_metadata_fail_open: bool = False
    state: str | None = None
    redis_url: str | None = None
    redis_cluster: bool = False
    hmac_key_file: str | None = None
    store_timeout: float = DEFAULT_TIMEOUT
    store_breaker_failures: int = breaker.FAILURES
    store_breaker_cooldown: float = breaker.COOLDOWN
    require_durable_store: bool = False
    quota_replicas: int | None = None
    quota_store_timeout: float = 0.05
    metrics_listen: str | None = None
    decision_log: str = "-"
    decision_log_queue: int = 10_000
    local_cognito: bool = False
    local_seed: str | None = None
    log_level: str = "INFO"
    workers: int = 1  # `auto` on the command line: usable_cores()

    def tls_files(self) -> tuple[str, str, str] | None:
        """(cert, key, client CA) for mTLS, None for --insecure; ConfigError when incomplete."""
        if self.insecure:
            if self.tls_cert or self.tls_key or self.client_ca:
                raise ConfigError(
                    "--insecure and --tls-cert/--tls-key/--client-ca exclude each other"
                )
            return None
        if self.tls_cert and self.tls_key and self.client_ca:
            return (self.tls_cert, self.tls_key, self.client_ca)
        if self.tls_cert or self.tls_key or self.client_ca:
            raise ConfigError("mTLS needs all three of --tls-cert, --tls-key and --client-ca")
        raise ConfigError(
            "no transport security: pass --tls-cert, --tls-key and --client-ca for mTLS, "
            "or --insecure for local plaintext"
        )


_HELP = {
    "policies": "policy file or folder (all *.yaml/*.yml below it), or a policy bundle in S3 "
    "(s3://bucket/key.tar.gz, made by `attrgate bundle build`)",
    "policy_watch": "reload when the policy files change (default: on for a file or folder; "
    "SIGHUP always reloads)",
    "policy_debounce": "seconds the policy files must stay unchanged before a reload on change",
    "policy_poll": "seconds between two checks of an s3:// policy bundle for a new version",
    "bundle_public_key": "Ed25519 public key(s) (PEM; several in one file while keys rotate) "
    "that s3:// policy bundles must be signed with; unsigned or badly signed bundles are refused",
    "allow_unsigned_bundles": "serve s3:// bundles without checking a signature (anyone who can "
    "write to the bucket then changes the policies); without it, s3:// needs --bundle-public-key",
    "bundle_target": "the target s3:// bundles must be signed for (`bundle sign --target`; "
    "default: the source's own s3://BUCKET/KEY; '' takes only bundles signed without a target)",
    "policies_fallback": "local policy file or folder to serve when no valid s3:// bundle can be "
    "had at start (without it the server does not start)",
    "candidate_policies": "a second policy set (any --policies source) evaluated in shadow beside "
    "the serving one: disagreements are counted and logged, never enforced",
    "shadow": "shadow mode for adoption: requests the policies deny are forwarded anyway, with "
    "would_deny findings (validation, pool schema and enforcing SmsGuards still apply)",
    "policy_max_bytes": "largest policy set, in bytes: each file and all of them together are "
    "checked before reading, on start and on every reload",
    "listen": "HOST:PORT of the gRPC listener",
    "admin_listen": "HOST:PORT of a plaintext listener serving only grpc.health.v1 (probes)",
    "tls_cert": "server certificate (PEM) for mTLS",
    "tls_key": "server private key (PEM) for mTLS",
    "client_ca": "CA bundle (PEM) that signs client certificates; client certificates required",
    "insecure": "plaintext listener; the caller names itself in the x-attrgate-caller header",
    "insecure_allow_remote": "allow --insecure on an address other than loopback",
    "region": "AWS region of the user pools (else AWS_REGION)",
    "cognito_endpoint": "Cognito endpoint URL (an emulator, a VPC endpoint)",
    "executor_threads": "deprecated and ignored: Cognito calls run on the event loop, bounded "
    "only by the CognitoQuota bulkheads (maxInFlight)",
    "cognito_connect_timeout": "seconds to connect to Cognito",
    "cognito_read_timeout": "seconds to wait for Cognito's answer",
    "cognito_max_attempts": "attempts per Cognito call, retries included (standard retry mode)",
    "max_receive_bytes": "largest gRPC request accepted, in bytes",
    "grace": "seconds the calls in flight get to finish once the server stops taking new ones "
    "(after --drain-delay); calls still running then are cancelled",
    "drain_delay": "seconds the server keeps taking calls after SIGTERM/SIGINT while its health "
    "reports NOT_SERVING, so load balancers and clients move away (0: stop at once)",
    "pool_cache_ttl": "seconds a DescribeUserPool answer is reused",
    "pool_negative_ttl": "seconds a pool DescribeUserPool did not find stays not found (no call)",
    "pool_cache_stale": "seconds past --pool-cache-ttl a pool's description still serves while "
    "DescribeUserPool fails (throttled, unreachable); 0: never stale",
    "metadata_lookup_rate": "DescribeUserPool/AdminGetUser lookups not answered from cache per "
    "second and caller; lookups that find their pool or user give theirs back",
    "metadata_lookup_burst": "lookups a caller may make at once (the bucket's size)",
    "pool_metadata_fail_open": "when a pool cannot be described, forward without schema checks "
    "(and count any phone_number write as SMS-triggering) instead of failing UNAVAILABLE",
    "state": "SQLite file for SMS guard counts (embedded; survives restarts; the key that hashes "
    "what it counts is kept in a file beside it)",
    "redis_url": "Redis for SMS guard counts shared by several replicas (needs --hmac-key-file)",
    "redis_cluster": "the Redis of --redis-url is a Redis Cluster (any node's address)",
    "hmac_key_file": "key for hashing phone numbers, users and callers in counter keys "
    "(default with --state: generated once beside it, STATE without its suffix + .key)",
    "store_timeout": "seconds an SMS-triggering write waits for the counting store (its turn, "
    "locks, Redis) before failing UNAVAILABLE",
    "store_breaker_failures": "SMS store calls failing in a row (no answer within "
    "--store-timeout, a lock, a Redis or SQLite error) after which SMS-triggering writes fail "
    "UNAVAILABLE at once, without asking the store, for --store-breaker-cooldown (a "
    "CognitoQuota's Redis calls have a breaker of the same settings: its local share meanwhile)",
    "store_breaker_cooldown": "seconds SMS-triggering writes fail at once once the store is known "
    "down; then one write tries it (the store's 2 s probe also ends it when the store answers)",
    "require_durable_store": "refuse to start on a Redis that can lose counts (no appendonly "
    "yes, an eviction policy) instead of warning",
    "quota_replicas": "replicas expected in the fleet: while the Redis of --redis-url does not "
    "answer, each sends at most a CognitoQuota's rate divided by this (default: the replicas "
    "seen live at the last exchange); without Redis, the rate is divided by it",
    "quota_store_timeout": "seconds a CognitoQuota's Redis call (per-user pacing, lease "
    "exchange) may take before the governor falls back to its local share",
    "metrics_listen": "HOST:PORT serving Prometheus metrics on /metrics",
    "decision_log": "where the JSON-lines decision log goes: - for stdout, or a file (reopened "
    "on SIGHUP)",
    "decision_log_queue": "decision-log entries that may wait to be written; past it they are "
    "dropped and counted, never blocking a request",
    "local_cognito": "start an embedded Cognito emulator (moto) seeded with a demo pool and users",
    "local_seed": "seed file for --local-cognito (default: the demo seed shipped with attrgate)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "workers": "server processes sharing the listeners (SO_REUSEPORT, Linux), each with its own "
    "Cognito client, behind one parent that relays signals and sums /metrics; auto: one per "
    "usable core",
}
MAX_WORKERS = 256


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux: check() refuses --workers above 1 there anyway
        return os.cpu_count() or 1


def _parse_workers(source: str, text: str) -> int:
    if text.strip().lower() == "auto":
        return usable_cores()
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{source}={text!r} is not a number of processes or auto") from None


# Fields whose flag takes more than its type says (converted before the type's converter).
_PARSERS = {"workers": _parse_workers}


def env_name(field_name: str) -> str:
    return "ATTRGATE_" + field_name.upper()


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ConfigError(f"{name}={text!r} is not a boolean (use true or false)")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field; its default comes from the environment at parse time."""
    for item in fields(Settings):
        flag = "--" + item.name.replace("_", "-")
        help_text = f"{_HELP[item.name]} [env {env_name(item.name)}]"
        if item.type in ("bool", bool, "bool | None"):
            parser.add_argument(
                flag,
                dest=item.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(flag, dest=item.name, default=None, help=help_text)


def settings_from(
    namespace: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> Settings:
    """Flags first, then ATTRGATE_* variables, then defaults. Raises ConfigError."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for item in fields(Settings):
        raw = getattr(namespace, item.name, None)
        source = "--" + item.name.replace("_", "-")
        # An empty variable is unset, as in most shells' and tools' conventions.
        if raw is None and env.get(env_name(item.name)):
            raw = env[env_name(item.name)]
            source = env_name(item.name)
        if raw is None:
            continue
        parse = _PARSERS.get(item.name)
        values[item.name] = (
            parse(source, str(raw)) if parse is not None else _convert(item.type, source, raw)
        )
    if values.get("region") is None:
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        if region:
            values["region"] = region
    return Settings(**values)


def _convert(kind: object, source: str, raw: Any) -> Any:
    if isinstance(raw, bool):
        return raw
    text = str(raw)
    try:
        if kind in ("bool", bool, "bool | None"):
            return _parse_bool(source, text)
        if kind in ("int", int, "int | None"):
            return int(text)
        if kind in ("float", float, "float | None"):
            return float(text)
    except ValueError:
        raise ConfigError(f"{source}={text!r} is not a valid {kind}") from None
    return text


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"{address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_source_flags(settings: Settings) -> None:
    """A flag for a kind of policy source that no --policies/--candidate-policies is: refused,
    not silently ignored."""
    sources = [p for p in (settings.policies, settings.candidate_policies) if p]
    s3 = any(p.startswith(S3_PREFIX) for p in sources)
    local = any(not p.startswith(S3_PREFIX) for p in sources)
    if not s3:
        for name, given in (
            ("--bundle-public-key", settings.bundle_public_key),
            ("--allow-unsigned-bundles", settings.allow_unsigned_bundles),
            ("--bundle-target", settings.bundle_target is not None),
            ("--policy-poll", settings.policy_poll is not None),
        ):
            if given:
                raise ConfigError(f"{name} is for an s3:// policy bundle, and no source is one")
    if not local and settings.policy_watch is not None:
        raise ConfigError(
            "--policy-watch/--no-policy-watch is for a local policy file or folder; an s3:// "
            "bundle is polled (--policy-poll)"
        )


def check(settings: Settings) -> None:
    """Raise ConfigError with the first reason the server must not start."""
    if not settings.policies:
        raise ConfigError("no policy set: pass --policies PATH (a file or a folder)")
    if settings.policy_max_bytes < 1024:
        raise ConfigError("--policy-max-bytes must be at least 1024")
    for name in ("policy_debounce", "policy_poll"):
        value = getattr(settings, name)
        if value is None:
            continue
        if not math.isfinite(value) or value <= 0 or value > 3600:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be a number of seconds above 0 and at most 3600")
    _check_source_flags(settings)
    if settings.policies_fallback and not settings.policies.startswith("s3://"):
        raise ConfigError("--policies-fallback is for an s3:// --policies bundle")
    if settings.policies_fallback and settings.policies_fallback.startswith("s3://"):
        raise ConfigError("--policies-fallback must be a local file or folder, not s3://")
    for path in settings.tls_files() or ():
        if not os.path.isfile(path):
            raise ConfigError(f"cannot read {path}: no such file")
    host, _ = split_host_port(settings.listen)
    if settings.insecure and not is_loopback(host) and not settings.insecure_allow_remote:
        raise ConfigError(
            f"--insecure on {settings.listen} would let any host name itself as caller: "
            "listen on loopback or add --insecure-allow-remote"
        )
    if settings.admin_listen:
        split_host_port(settings.admin_listen)
    if settings.metrics_listen:
        split_host_port(settings.metrics_listen)
    if not settings.region and not settings.local_cognito:
        raise ConfigError("no AWS region: pass --region or set AWS_REGION")
    if settings.executor_threads is not None and settings.executor_threads < 1:
        raise ConfigError("--executor-threads must be at least 1")
    if settings.cognito_max_attempts < 1:
        raise ConfigError("--cognito-max-attempts must be at least 1")
    if settings.store_breaker_failures < 1:
        raise ConfigError("--store-breaker-failures must be at least 1")
    for name in (
        "cognito_connect_timeout",
        "cognito_read_timeout",
        "store_timeout",
        "store_breaker_cooldown",
        "grace",
        "drain_delay",
    ):
        value = getattr(settings, name)
        zero_allowed = name in ("grace", "drain_delay")
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be a positive number of seconds, not {value}")
    if settings.redis_url and not settings.hmac_key_file:
        raise ConfigError(
            "--redis-url needs --hmac-key-file: replicas must hash phone numbers with one key"
        )
    if settings.redis_cluster and not settings.redis_url:
        raise ConfigError("--redis-cluster needs --redis-url (the address of any cluster node)")
    if settings.hmac_key_file and not os.path.isfile(settings.hmac_key_file):
        raise ConfigError(f"cannot read {settings.hmac_key_file}: no such file")
    for name in ("pool_cache_ttl", "pool_negative_ttl", "pool_cache_stale"):
        value = getattr(settings, name)
        if not math.isfinite(value) or value < 0:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be a non-negative number of seconds, not {value}")
    rate = settings.metadata_lookup_rate
    if not math.isfinite(rate) or rate <= 0:
        raise ConfigError(f"--metadata-lookup-rate must be a positive number, not {rate}")
    if settings.metadata_lookup_burst < 1:
        raise ConfigError("--metadata-lookup-burst must be at least 1")
    if settings.quota_replicas is not None and not 1 <= settings.quota_replicas <= 10_000:
        raise ConfigError("--quota-replicas must be between 1 and 10000")
    timeout = settings.quota_store_timeout
    if not math.isfinite(timeout) or not 0 < timeout <= 10:
        raise ConfigError(
            f"--quota-store-timeout must be above 0 and at most 10 seconds, not {timeout}"
        )
    if settings.decision_log_queue < 1:
        raise ConfigError("--decision-log-queue must be at least 1")
    if settings.max_receive_bytes < 1024:
        raise ConfigError("--max-receive-bytes must be at least 1024")
    _check_workers(settings)
    if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(
            f"--log-level {settings.log_level!r} is not DEBUG, INFO, WARNING or ERROR"
        )


def _check_workers(settings: Settings) -> None:
    if not 1 <= settings.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}, or auto")
    if settings.workers == 1:
        return
    if not sys.platform.startswith("linux"):
        # Elsewhere SO_REUSEPORT does not spread connections: one process would take them all.
        raise ConfigError("--workers above 1 needs Linux (SO_REUSEPORT load balancing)")
    if settings.local_cognito:
        raise ConfigError(
            "--local-cognito runs one process: drop --workers (or point --cognito-endpoint at "
            "an emulator of your own)"
        )
