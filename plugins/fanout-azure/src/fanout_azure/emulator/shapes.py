"""Documents reshaped along a REST description's definitions: request bodies as the service's
reader takes them, answers in the shapes and spellings of the version a request declares.

``convert`` does what the service's OData reader does with a JSON string where a number or a
boolean is expected: it reads the string as that type if it can (the Azure CLI sends
``"targetDedicatedNodes": "2"``, ``"priority": "5"``). What converts: an optionally signed
run of digits, white space around it allowed, for an integer; a decimal or exponent number for
a floating-point property; ``true``, ``false``, ``1`` or ``0`` for a boolean (the literal forms
of OData's ``Edm.Boolean``). Anything else stays a string, and the validation after it refuses
it as the service does (``InvalidRequestBody``, "Cannot convert a primitive value...").

``respell`` gives enum values the spelling of a description (they are read without regard to
case, so ``terminateJob`` from a 2024 client and ``terminatejob`` are one value).

``project`` keeps of an answer only what a description defines, enums spelt its way: the
emulator builds its answers in the newest version's shapes, and an older version's client gets
them without the properties its version does not have.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final

_INTEGER: Final = re.compile(r"\s*[+-]?\d+\s*")
_NUMBER: Final = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")
_BOOLEANS: Final = {"true": True, "1": True, "false": False, "0": False}

Definitions = Mapping[str, Any]
_Leaf = Callable[[Mapping[str, Any], Any], Any]


def convert(definitions: Definitions, definition: str, document: Any) -> Any:
    """``document`` with convertible strings read as the numbers and booleans expected."""
    return _walk(definitions, {"$ref": f"#/definitions/{definition}"}, document, _primitive, False)


def respell(definitions: Definitions, definition: str, document: Any) -> Any:
    """``document`` with every enum value spelt as ``definition`` spells it."""
    return _walk(definitions, {"$ref": f"#/definitions/{definition}"}, document, _enum, False)


def project(definitions: Definitions, definition: str, document: Any) -> Any:
    """``document`` without the properties ``definition`` does not define, enums respelt."""
    return _walk(definitions, {"$ref": f"#/definitions/{definition}"}, document, _enum, True)


def _walk(
    definitions: Definitions, node: Mapping[str, Any], value: Any, leaf: _Leaf, prune: bool
) -> Any:
    while "$ref" in node:
        node = definitions[str(node["$ref"]).rsplit("/", 1)[-1]]
    if isinstance(value, dict):
        properties: Mapping[str, Any] | None = node.get("properties")
        extra = node.get("additionalProperties")
        if properties is None:
            if isinstance(extra, Mapping):  # a map: every value follows one schema
                return {k: _walk(definitions, extra, v, leaf, prune) for k, v in value.items()}
            return value
        # The answers' check closes objects that do not declare additionalProperties.
        keep_unknown = not prune or extra not in (None, False)
        return {
            key: _walk(definitions, properties[key], item, leaf, prune)
            if key in properties
            else item
            for key, item in value.items()
            if key in properties or keep_unknown
        }
    if isinstance(value, list) and "items" in node:
        return [_walk(definitions, node["items"], item, leaf, prune) for item in value]
    return leaf(node, value)


def _primitive(node: Mapping[str, Any], value: Any) -> Any:
    if not isinstance(value, str):
        return value
    kind = node.get("type")
    if kind == "integer" and _INTEGER.fullmatch(value):
        return int(value)
    if kind == "number" and _NUMBER.fullmatch(value):
        return float(value)
    if kind == "boolean" and value.strip() in _BOOLEANS:
        return _BOOLEANS[value.strip()]
    return value


def _enum(node: Mapping[str, Any], value: Any) -> Any:
    allowed = node.get("enum")
    if not isinstance(value, str) or not isinstance(allowed, list):
        return value
    folded = value.casefold()
    return next((spelt for spelt in allowed if str(spelt).casefold() == folded), value)
