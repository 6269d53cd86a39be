"""`--output json|text|table|yaml` and `--query`, as the AWS CLI prints a response: the query
(JMESPath) first, then the format. JSON is indented by 4 and keeps non-ASCII characters; an empty
response prints nothing in JSON and table. Text is tab-separated: a dict's scalar values on one
line in key order (its name first when nested), then its nested values; a list of dicts shares
the union of their scalar keys."""

from __future__ import annotations

import json
from typing import Any, TextIO

import jmespath
import jmespath.exceptions
import yaml

from attrgate.clicompat.table import is_scalar, render_table

FORMATS = ("json", "text", "table", "yaml")


class QueryError(ValueError):
    """A --query that is not JMESPath: a usage error."""


def compile_query(expression: str | None) -> Any:
    if expression is None:
        return None
    try:
        return jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        raise QueryError(f"Bad value for --query {expression}: {exc}") from exc


def write(
    title: str, response: Any, fmt: str, query: Any, out: TextIO, color: bool = False
) -> None:
    """`response` as the AWS CLI would print it with `--output fmt --query ...`."""
    if query is not None:
        response = query.search(response)
    if fmt == "json":
        if response != {}:
            out.write(json.dumps(response, indent=4, ensure_ascii=False) + "\n")
    elif fmt == "yaml":
        if response != {}:
            out.write(yaml.safe_dump(response, allow_unicode=True, sort_keys=False))
    elif fmt == "text":
        _text(response, out)
    elif fmt == "table":
        render_table(title, response, out, color)
    else:
        raise ValueError(f"Unknown output type: {fmt}")


def _text(item: Any, out: TextIO, name: str | None = None, keys: list[str] | None = None) -> None:
    if isinstance(item, dict):
        _text_dict(item, out, name, keys)
    elif isinstance(item, list):
        _text_list(item, out, name)
    else:
        out.write(f"{item}\n")


def _text_list(items: list[Any], out: TextIO, name: str | None) -> None:
    if not items:
        return
    if any(isinstance(item, dict) for item in items):
        keys = sorted(
            {k for item in items if isinstance(item, dict) for k, v in item.items() if is_scalar(v)}
        )
        for item in items:
            _text(item, out, name, keys)
        return
    scalars = [item for item in items if is_scalar(item)]
    if scalars:
        if name is not None:
            out.writelines(f"{name.upper()}\t{item}\n" for item in scalars)
        else:
            out.write("\t".join(str(item) for item in scalars) + "\n")
    for nested in (item for item in items if not is_scalar(item)):
        _text(nested, out, name)


def _text_dict(item: dict[str, Any], out: TextIO, name: str | None, keys: list[str] | None) -> None:
    if keys is None:
        ordered = sorted(item.items())
        scalars = [str(v) for _, v in ordered if is_scalar(v)]
        nested = [(k, v) for k, v in ordered if not is_scalar(v)]
    else:
        scalars = [str(item.get(k, "")) for k in keys]
        nested = [(k, item[k]) for k in sorted(set(item) - set(keys))]
    if scalars:
        out.write("\t".join([name.upper(), *scalars] if name is not None else scalars) + "\n")
    for key, value in nested:
        _text(value, out, key)
