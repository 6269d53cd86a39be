"""`attrgate schema`: the JSON Schemas (draft 2020-12) of the policy documents, generated from
the pydantic models that validate them (policy/model.py, policy/testmodel.py), never written twice.

One schema per kind, and one for any attrgate document (`oneOf` by `kind`) so that one modeline
covers a file that mixes kinds. What pydantic cannot export but a JSON Schema can say is declared
on the models themselves; here only the field titles go (editors would show `Maxlength` above
the description) and the `$schema` and `$id` come in. The copies committed under schemas/v1/
are what editors read; `make schemas` rewrites them and a test fails when they are stale.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import CoreSchema

from attrgate.policy.kinds import file_name
from attrgate.policy.load import ALL_KINDS
from attrgate.policy.model import API_VERSION

DRAFT = "https://json-schema.org/draft/2020-12/schema"
# The `$id`s name the schemas (the path mirrors schemas/v1/ in the repository); nothing needs to
# be served there: editors read the files a modeline points at.
BASE_ID = "https://attrgate.dev/schemas/v1/"


class _Generator(GenerateJsonSchema):
    """pydantic's generator, without the title it derives for every field (`Maxlength`), and
    with docstrings' line breaks unwrapped (a hover shows the description as one paragraph)."""

    def field_title_should_be_set(self, schema: object) -> bool:
        return False

    def generate(self, schema: CoreSchema, mode: JsonSchemaMode = "validation") -> JsonSchemaValue:
        generated = super().generate(schema, mode)
        _unwrap(generated)
        return generated


def _unwrap(schema: object) -> None:
    if isinstance(schema, list):
        for item in schema:
            _unwrap(item)
    elif isinstance(schema, dict):
        for key, value in schema.items():
            if key == "description" and isinstance(value, str):
                schema[key] = " ".join(value.split())
            else:
                _unwrap(value)


def json_schema(kind: str | None = None) -> dict[str, Any]:
    """The JSON Schema of `kind`'s documents, or of any attrgate document when None."""
    if kind is None:
        # Built at run time from ALL_KINDS: a new kind joins without a change here.
        kinds: Any = Union[tuple(ALL_KINDS.values())]  # noqa: UP007
        body = TypeAdapter(Annotated[kinds, Field(discriminator="kind")]).json_schema(
            by_alias=True, mode="validation", schema_generator=_Generator
        )
        names = ", ".join(ALL_KINDS)
        body = {
            "title": f"{API_VERSION} document",
            "description": f"Any {API_VERSION} document ({names}), told apart by its kind.",
            **body,
        }
    else:
        body = ALL_KINDS[kind].model_json_schema(
            by_alias=True, mode="validation", schema_generator=_Generator
        )
    return {"$schema": DRAFT, "$id": BASE_ID + file_name(kind), **body}


def render(kind: str | None = None) -> str:
    """The schema as committed: sorted keys, two-space indent, a final newline."""
    return json.dumps(json_schema(kind), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
