"""attrgate.config: flags and ATTRGATE_* variables into one Settings, and the refusals of check().

Namespaces come from the real CLI parser, so the flag names themselves are under test.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from attrgate.cli import _parser
from attrgate.config import ConfigError, Settings, check, env_name, settings_from


def settings(argv: list[str], environ: Mapping[str, str] | None = None) -> Settings:
    namespace = _parser().parse_args(["serve", *argv])
    return settings_from(namespace, dict(environ or {}))


@pytest.fixture
def tls_files(tmp_path: Path) -> list[str]:
    """Three files that exist (check() only needs them readable; the server parses them)."""
    paths = []
    for name in ("server.pem", "server.key", "ca.pem"):
        path = tmp_path / name
        path.write_text("-----BEGIN PLACEHOLDER-----\n")
        paths.append(str(path))
    return paths


def tls_flags(files: list[str]) -> list[str]:
    cert, key, ca = files
    return ["--tls-cert", cert, "--tls-key", key, "--client-ca", ca]


# -- flags and variables ------------------------------------------------------------------------

# A value for a flag and a different one for its variable, per field type.
_SAMPLES = {
    "str": ("from-flag", "from-env"),
    "str | None": ("from-flag", "from-env"),
    "int": ("7", "9"),
    "int | None": ("7", "9"),
    "float": ("1.5", "2.5"),
    "float | None": ("1.5", "2.5"),
}


def _field_cases() -> list[dataclasses.Field[object]]:
    return [f for f in dataclasses.fields(Settings) if f.type not in ("bool", "bool | None")]


@pytest.mark.parametrize("item", _field_cases(), ids=lambda f: f.name)
def test_every_field_has_a_flag_and_a_variable_and_the_flag_wins(
    item: dataclasses.Field[object],
) -> None:
    flag = "--" + item.name.replace("_", "-")
    flag_value, env_value = _SAMPLES[str(item.type)]
    variable = env_name(item.name)
    assert variable == "ATTRGATE_" + item.name.upper()

    from_env = getattr(settings([], {variable: env_value}), item.name)
    from_flag = getattr(settings([flag, flag_value], {variable: env_value}), item.name)
    default = getattr(settings([]), item.name)

    convert = {"int": int, "int | None": int, "float": float, "float | None": float}.get(
        str(item.type), str
    )
    assert from_env == convert(env_value)
    assert from_flag == convert(flag_value)
    assert default == item.default


@pytest.mark.parametrize(
    "name",
    [f.name for f in dataclasses.fields(Settings) if f.type in ("bool", "bool | None")],
)
def test_every_bool_field_has_a_flag_and_a_variable(name: str) -> None:
    flag = "--" + name.replace("_", "-")
    # False, or None for a default that depends on other settings (--policy-watch).
    assert getattr(settings([]), name) in (False, None)
    assert getattr(settings(["--no-" + flag[2:]]), name) is False
    assert getattr(settings([flag]), name) is True
    assert getattr(settings([], {env_name(name): "true"}), name) is True
    assert getattr(settings([], {env_name(name): "false"}), name) is False
    # The flag beats a variable that says otherwise.
    assert getattr(settings([flag], {env_name(name): "false"}), name) is True


def test_flag_beats_variable_for_policies_and_listen() -> None:
    env = {"ATTRGATE_POLICIES": "/env/policies", "ATTRGATE_LISTEN": "127.0.0.1:7000"}
    s = settings(["--policies", "/flag/policies"], env)
    assert s.policies == "/flag/policies"
    assert s.listen == "127.0.0.1:7000"  # no flag: the variable applies


def test_variables_of_other_programs_are_ignored() -> None:
    s = settings([], {"POLICIES": "/x", "LISTEN": "0.0.0.0:1", "attrgate_policies": "/y"})
    assert s.policies is None
    assert s.listen == "127.0.0.1:50051"


@pytest.mark.parametrize(
    ("argv", "environ", "region"),
    [
        pytest.param([], {"AWS_REGION": "eu-west-1"}, "eu-west-1", id="aws-region"),
        pytest.param(
            [],
            {"AWS_REGION": "eu-west-1", "ATTRGATE_REGION": "ap-south-1"},
            "ap-south-1",
            id="attrgate-variable-beats-aws",
        ),
        pytest.param(
            ["--region", "us-west-2"],
            {"AWS_REGION": "eu-west-1", "ATTRGATE_REGION": "ap-south-1"},
            "us-west-2",
            id="flag-beats-both",
        ),
        pytest.param(
            ["--region", "us-west-2"], {"AWS_REGION": "eu-west-1"}, "us-west-2", id="flag-over-aws"
        ),
        pytest.param([], {}, None, id="none"),
    ],
)
def test_region_precedence(argv: list[str], environ: dict[str, str], region: str | None) -> None:
    assert settings(argv, environ).region == region


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "on", " True "])
def test_true_variables(text: str) -> None:
    assert settings([], {"ATTRGATE_INSECURE": text}).insecure is True


@pytest.mark.parametrize("text", ["0", "false", "False", "no", "off", ""])
def test_false_variables(text: str) -> None:
    assert settings([], {"ATTRGATE_INSECURE": text}).insecure is False


@pytest.mark.parametrize("text", ["maybe", "2", "enable", "y e s"])
def test_bad_bool_variable_is_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigError) as raised:
        settings([], {"ATTRGATE_INSECURE": text})
    message = str(raised.value)
    assert "ATTRGATE_INSECURE" in message
    assert repr(text) in message
    assert "boolean" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("argv", "environ", "source", "text"),
    [
        ([], {"ATTRGATE_EXECUTOR_THREADS": "many"}, "ATTRGATE_EXECUTOR_THREADS", "many"),
        (["--executor-threads", "1.5"], {}, "--executor-threads", "1.5"),
        ([], {"ATTRGATE_GRACE": "ten"}, "ATTRGATE_GRACE", "ten"),
        (["--max-receive-bytes", "64k"], {}, "--max-receive-bytes", "64k"),
    ],
)
def test_bad_number_names_its_source(
    argv: list[str], environ: dict[str, str], source: str, text: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        settings(argv, environ)
    message = str(raised.value)
    assert message.startswith(f"{source}={text!r}")
    assert "not a valid" in message
    assert "\n" not in message


def test_numbers_are_converted() -> None:
    s = settings(
        ["--executor-threads", "16", "--grace", "2.5"], {"ATTRGATE_COGNITO_READ_TIMEOUT": "0.75"}
    )
    assert (s.executor_threads, s.grace, s.cognito_read_timeout) == (16, 2.5, 0.75)


def test_unknown_flag_is_rejected_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--tls-certificate", "x"])


# -- check() ------------------------------------------------------------------------------------


def refusal(argv: list[str], environ: Mapping[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        check(settings(argv, environ))
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_a_complete_insecure_configuration_passes() -> None:
    check(settings(["--policies", "p", "--insecure", "--region", "us-east-1"]))


def test_a_complete_mtls_configuration_passes(tls_files: list[str]) -> None:
    check(
        settings(
            ["--policies", "p", *tls_flags(tls_files), "--listen", "0.0.0.0:50051"],
            {"AWS_REGION": "us-east-1"},
        )
    )


def test_everything_from_variables_passes(tls_files: list[str]) -> None:
    cert, key, ca = tls_files
    check(
        settings(
            [],
            {
                "ATTRGATE_POLICIES": "p",
                "ATTRGATE_TLS_CERT": cert,
                "ATTRGATE_TLS_KEY": key,
                "ATTRGATE_CLIENT_CA": ca,
                "ATTRGATE_REGION": "us-east-1",
            },
        )
    )


def test_no_policies_refused() -> None:
    assert "--policies" in refusal(["--insecure", "--region", "us-east-1"])


def test_empty_policies_variable_refused() -> None:
    message = refusal(["--insecure", "--region", "us-east-1"], {"ATTRGATE_POLICIES": ""})
    assert "no policy set" in message


def test_no_tls_and_no_insecure_refused() -> None:
    message = refusal(["--policies", "p", "--region", "us-east-1"])
    assert "--insecure" in message
    assert "--tls-cert" in message


@pytest.mark.parametrize("keep", [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2)])
def test_partial_tls_refused(tls_files: list[str], keep: tuple[int, ...]) -> None:
    flags = tls_flags(tls_files)
    partial = [arg for i in keep for arg in flags[2 * i : 2 * i + 2]]
    message = refusal(["--policies", "p", "--region", "us-east-1", *partial])
    assert "all three" in message


def test_tls_file_that_does_not_exist_refused(tls_files: list[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    cert, key, _ = tls_files
    message = refusal(
        [
            "--policies",
            "p",
            "--region",
            "us-east-1",
            *["--tls-cert", cert, "--tls-key", key, "--client-ca", missing],
        ]
    )
    assert missing in message


@pytest.mark.parametrize("which", ["--tls-cert", "--tls-key", "--client-ca"])
def test_insecure_with_tls_refused(tls_files: list[str], which: str) -> None:
    flags = tls_flags(tls_files)
    value = flags[flags.index(which) + 1]
    message = refusal(["--policies", "p", "--region", "us-east-1", "--insecure", which, value])
    assert "exclude each other" in message


@pytest.mark.parametrize(
    "listen", ["0.0.0.0:50051", "[::]:50051", "10.1.2.3:50051", "attrgate.internal:50051"]
)
def test_insecure_on_a_non_loopback_address_refused(listen: str) -> None:
    message = refusal(
        ["--policies", "p", "--region", "us-east-1", "--insecure", "--listen", listen]
    )
    assert listen in message
    assert "--insecure-allow-remote" in message


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051"])
def test_insecure_allow_remote_permits_it(listen: str) -> None:
    check(
        settings(
            [
                *["--policies", "p", "--region", "us-east-1", "--insecure"],
                *["--listen", listen, "--insecure-allow-remote"],
            ]
        )
    )


def test_insecure_allow_remote_from_the_environment() -> None:
    check(
        settings(
            ["--policies", "p", "--region", "us-east-1", "--insecure", "--listen", "0.0.0.0:1"],
            {"ATTRGATE_INSECURE_ALLOW_REMOTE": "true"},
        )
    )


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:50051", "127.0.0.2:1", "localhost:50051", "[::1]:50051"]
)
def test_insecure_on_loopback_passes(listen: str) -> None:
    check(settings(["--policies", "p", "--region", "us-east-1", "--insecure", "--listen", listen]))


def test_no_region_refused() -> None:
    message = refusal(["--policies", "p", "--insecure"])
    assert "region" in message


def test_local_cognito_needs_no_region() -> None:
    check(settings(["--policies", "p", "--insecure", "--local-cognito"]))


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--listen", "50051"], "HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "HOST:PORT"),
        (["--admin-listen", "nope"], "HOST:PORT"),
        (["--executor-threads", "0"], "--executor-threads"),
        (["--cognito-max-attempts", "0"], "--cognito-max-attempts"),
        (["--max-receive-bytes", "100"], "--max-receive-bytes"),
        (["--policy-max-bytes", "100"], "--policy-max-bytes must be at least 1024"),
        (["--log-level", "CHATTY"], "--log-level"),
        (["--pool-negative-ttl", "-1"], "--pool-negative-ttl"),
        (["--pool-cache-stale", "inf"], "--pool-cache-stale"),
        (["--metadata-lookup-rate", "0"], "--metadata-lookup-rate"),
        (["--metadata-lookup-rate", "nan"], "--metadata-lookup-rate"),
        (["--metadata-lookup-burst", "0"], "--metadata-lookup-burst"),
    ],
)
def test_other_refusals(extra: list[str], needle: str) -> None:
    message = refusal(["--policies", "p", "--region", "us-east-1", "--insecure", *extra])
    assert needle in message


def test_lower_case_log_level_is_accepted() -> None:
    check(
        settings(["--policies", "p", "--region", "us-east-1", "--insecure", "--log-level", "debug"])
    )


def test_a_flag_can_switch_off_what_a_variable_switched_on() -> None:

    namespace = _parser().parse_args(["serve", "--no-insecure"])
    settings = settings_from(namespace, {"ATTRGATE_INSECURE": "true"})
    assert settings.insecure is False


def test_an_empty_variable_counts_as_unset() -> None:

    namespace = _parser().parse_args(["serve"])
    settings = settings_from(namespace, {"ATTRGATE_REGION": "", "AWS_REGION": "eu-west-1"})
    assert settings.region == "eu-west-1"


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--grace", "-1"),
        ("--cognito-read-timeout", "nan"),
        ("--cognito-connect-timeout", "0"),
        ("--store-timeout", "0"),
        ("--store-timeout", "inf"),
    ],
)
def test_timings_must_be_positive(flag: str, value: str) -> None:

    namespace = _parser().parse_args(["serve", "--policies", "p", "--insecure", flag, value])
    settings = settings_from(namespace, {"AWS_REGION": "us-east-1"})
    with pytest.raises(ConfigError, match=flag):
        check(settings)


def test_redis_needs_a_shared_hmac_key() -> None:
    namespace = _parser().parse_args(
        ["serve", "--policies", "p", "--insecure", "--redis-url", "redis://127.0.0.1:1/0"]
    )
    with pytest.raises(ConfigError, match="--hmac-key-file"):
        check(settings_from(namespace, {"AWS_REGION": "us-east-1"}))


def test_redis_cluster_needs_a_redis_url() -> None:
    namespace = _parser().parse_args(["serve", "--policies", "p", "--insecure", "--redis-cluster"])
    with pytest.raises(ConfigError, match="--redis-cluster needs --redis-url"):
        check(settings_from(namespace, {"AWS_REGION": "us-east-1"}))


BASE = ["--insecure", "--region", "us-east-1"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["--policies", "p", "--bundle-public-key", "k.pub"],
            "--bundle-public-key is for an s3://",
        ),
        (["--policies", "p", "--allow-unsigned-bundles"], "--allow-unsigned-bundles is for an s3"),
        (["--policies", "p", "--policy-poll", "5"], "--policy-poll is for an s3://"),
        (["--policies", "s3://b/k", "--no-policy-watch"], "--policy-watch/--no-policy-watch is"),
        (["--policies", "s3://b/k", "--policy-watch"], "an s3:// bundle is polled"),
    ],
)
def test_a_flag_for_a_source_that_is_not_there_is_refused(argv: list[str], expected: str) -> None:
    assert expected in refusal([*BASE, *argv])


@pytest.mark.parametrize(
    "argv",
    [
        ["--policies", "p", "--candidate-policies", "s3://b/k", "--policy-poll", "5"],
        ["--policies", "s3://b/k", "--candidate-policies", "p", "--no-policy-watch"],
        ["--policies", "s3://b/k", "--bundle-public-key", "k.pub", "--policy-poll", "5"],
        ["--policies", "p", "--no-policy-watch"],
    ],
)
def test_a_flag_for_a_source_that_is_there_passes(argv: list[str]) -> None:
    check(settings([*BASE, *argv]))


# -- serve --workers ------------------------------------------------------------------------------

SERVE = ["--policies", "p", "--region", "us-east-1", "--insecure"]


def test_workers_auto_is_the_cores_this_process_may_run_on() -> None:
    assert settings(["--workers", "auto"]).workers == len(os.sched_getaffinity(0))
    assert settings([], {"ATTRGATE_WORKERS": "AUTO"}).workers == len(os.sched_getaffinity(0))
    check(settings([*SERVE, "--workers", "auto"]))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "0"], "--workers must be between 1 and 256, or auto"),
        (["--workers", "257"], "--workers must be between 1 and 256, or auto"),
        (["--workers", "2", "--local-cognito"], "--local-cognito runs one process: drop --workers"),
    ],
)
def test_workers_refusals(extra: list[str], message: str) -> None:
    assert message in refusal([*SERVE, *extra])


def test_workers_that_are_not_a_number_are_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as refused:
        settings(["--workers", "two"])
    assert str(refused.value) == "--workers='two' is not a number of processes or auto"
