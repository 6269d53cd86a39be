"""The request of `aws cognito-idp admin-update-user-attributes`, built from its command line as
the AWS CLI builds it: a value may be read from `file://`, a complex one is JSON when it starts
with `[` or `{` and shorthand otherwise, `--cli-input-json`/`--cli-input-yaml` fill in what the
command line did not give, and the result is checked against the operation's own input shape by
botocore's validator (the same messages the AWS CLI prints)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import yaml
from botocore.exceptions import ParamValidationError
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape
from botocore.session import Session
from botocore.utils import ArgumentGenerator
from botocore.validate import ParamValidator

from attrgate.clicompat import shorthand

SERVICE = "cognito-idp"
OPERATION = "AdminUpdateUserAttributes"
# The AWS CLI's option for each member of the operation's input, in its order.
OPTIONS: dict[str, str] = {
    "--user-pool-id": "UserPoolId",
    "--username": "Username",
    "--user-attributes": "UserAttributes",
    "--client-metadata": "ClientMetadata",
}
FILE_PREFIXES = ("file://", "fileb://")


class ParamError(ValueError):
    """A value the AWS CLI would refuse before calling: a usage error (exit 252)."""


@cache
def operation() -> OperationModel:
    """The operation's model, from botocore's own data (no credentials, no network)."""
    return Session().get_service_model(SERVICE).operation_model(OPERATION)


def input_shape() -> StructureShape:
    shape = operation().input_shape
    assert isinstance(shape, StructureShape)
    return shape


def load_paramfile(value: str) -> str | bytes | None:
    """The content `file://PATH` (text) or `fileb://PATH` (bytes) names; None for any other
    value. `~` and `$VARS` in the path are expanded, as the AWS CLI does."""
    for prefix in FILE_PREFIXES:
        if value.startswith(prefix):
            path = os.path.expandvars(os.path.expanduser(value[len(prefix) :]))
            try:
                if prefix == "fileb://":
                    with open(path, "rb") as binary:
                        return binary.read()
                with open(path, encoding="utf-8") as text:
                    return text.read()
            except UnicodeDecodeError as exc:
                raise ParamError(
                    f"Unable to load paramfile ({value}), text contents could not be decoded. "
                    "If this is a binary file, please use the fileb:// prefix instead of the "
                    "file:// prefix."
                ) from exc
            except OSError as exc:
                raise ParamError(f"Unable to load paramfile {value}: {exc}") from exc
    return None


def unpack(option: str, raw: str | Sequence[str]) -> Any:
    """One option's value from the command line (a string, or the words of a list option) as
    the operation's member: the Python value the AWS CLI would send."""
    member = OPTIONS[option]
    shape = input_shape().members[member]
    value: Any = raw
    candidate = raw[0] if isinstance(raw, list) and len(raw) == 1 else raw
    if isinstance(candidate, str):
        loaded = load_paramfile(candidate)
        if loaded is not None:
            value = loaded
    try:
        if _is_complex(shape) and not _looks_like_json(value):
            return _shorthand(shape, value)
        return _unpack(shape, value)
    except (ParamError, shorthand.ShorthandError) as exc:
        raise ParamError(f"Error parsing parameter '{option}': {exc}") from exc


def _is_complex(shape: Shape) -> bool:
    """Whether shorthand applies: a structure, a map, or a list of either."""
    if isinstance(shape, ListShape):
        return shape.member.type_name in ("structure", "list", "map")
    return shape.type_name in ("structure", "map")


def _looks_like_json(value: Any) -> bool:
    first = value[0] if isinstance(value, list) and value else value
    return isinstance(first, str) and first.strip().startswith(("[", "{"))


def _shorthand(shape: Shape, value: Any) -> Any:
    if isinstance(value, bytes):
        raise ParamError("shorthand syntax cannot be read from fileb://")
    if isinstance(value, list):
        return _as_shaped(shape, [shorthand.parse(item, load_paramfile) for item in value])
    # One string (a list option's file://): the AWS CLI shapes nothing in it, so a list option
    # gets a dict, which validation refuses there too.
    return shorthand.parse(value, load_paramfile)


def _as_shaped(shape: Shape, value: Any) -> Any:
    """What the AWS CLI makes of shorthand by the model: a single value where a list belongs
    becomes a one-element list, recursively. (Scalars stay strings: this operation has only
    string members.)"""
    if isinstance(shape, ListShape):
        if value is None:
            return None
        items = value if isinstance(value, list) else [value]
        return [_as_shaped(shape.member, item) for item in items]
    if isinstance(shape, StructureShape) and isinstance(value, dict):
        return {
            key: _as_shaped(shape.members[key], item) if key in shape.members else item
            for key, item in value.items()
        }
    if isinstance(shape, MapShape) and isinstance(value, dict):
        return {key: _as_shaped(shape.value, item) for key, item in value.items()}
    return value


def _unpack(shape: Shape, value: Any) -> Any:
    if shape.type_name not in ("structure", "map", "list"):
        return value  # a string: as given (the validator judges a list or bytes given here)
    if isinstance(shape, ListShape):
        if isinstance(value, str) and value.lstrip().startswith("["):
            return _json(value)
        if isinstance(value, list) and len(value) == 1 and value[0].lstrip().startswith("["):
            return _json(value[0])
        words = value if isinstance(value, list) else [value]
        return [_unpack(shape.member, word) for word in words]
    if not isinstance(value, str) or not value.lstrip().startswith("{"):
        raise ParamError(f"Invalid JSON:\n{_text(value)}")
    return _json(value)


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ParamError(f"Invalid JSON: {exc}\nJSON received: {text}") from exc


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def cli_input(text: str, yaml_input: bool) -> dict[str, Any]:
    """`--cli-input-json` / `--cli-input-yaml`: the operation's input as a document (or
    `file://` it)."""
    option = "--cli-input-yaml" if yaml_input else "--cli-input-json"
    loaded = load_paramfile(text)
    document = _text(loaded) if loaded is not None else text
    try:
        data = yaml.safe_load(document) if yaml_input else json.loads(document)
    except ValueError as exc:
        raise ParamError(f"Error parsing parameter '{option}': Invalid JSON: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ParamError(f"Error parsing parameter '{option}': Invalid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamError(f"Error parsing parameter '{option}': the input is not a mapping")
    return data


def build(given: Mapping[str, Any], document: Mapping[str, Any] | None) -> dict[str, Any]:
    """The operation's input: the command line's members, then the input document's for those
    it did not give (the command line wins, as in the AWS CLI); validated."""
    params = dict(given)
    for key, value in (document or {}).items():
        params.setdefault(key, value)
    validate(params)
    return params


def validate(params: Mapping[str, Any]) -> None:
    """botocore's own validation of the input (types, required members, unknown keys)."""
    try:
        report = ParamValidator().validate(params, input_shape())
    except ParamValidationError as exc:  # older botocore raised instead of reporting
        raise ParamError(str(exc)) from exc
    if report.has_errors():
        raise ParamError(str(ParamValidationError(report=report.generate_report())))


def skeleton() -> dict[str, Any]:
    """`--generate-cli-skeleton input`: the operation's input with every member empty."""
    generated = ArgumentGenerator().generate_skeleton(input_shape())
    plain: dict[str, Any] = json.loads(json.dumps(generated))  # OrderedDicts, as plain dicts
    return plain
