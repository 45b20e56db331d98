"""The official Azure Batch REST descriptions as the emulator's source of truth.

One description per API version the emulator serves (``API_VERSIONS``, in ``spec/<version>/``):
a request is read and checked against the description of the version it declares, and answered
in that version's shapes. ``match`` maps a request to the description's operation,
``read_request`` reads a request body the way the service does (strings converted where a
number or boolean is expected, see ``shapes``) and names the first fault with the service's own
error code, and ``response_problems`` checks an answer STRICTLY against the description (the
tests use it on every answer the emulator sends).

The Swagger 2.0 definitions become two JSON Schema (Draft 4) documents, each registered in a
``referencing`` registry and validated through precompiled validators, one per definition:

- the *response* document is strict: every object schema is closed (``additionalProperties:
  false`` unless the description declares ``additionalProperties``), ``required`` is the
  description's, including read-only properties, enum spellings must match exactly, and the
  ``int32``/``int64``/``date-time``/``duration`` formats are checked;
- the *request* document is what the service accepts: read-only properties are not required,
  enum values are compared without regard to case, and unknown properties are refused.

Evidence for the request rules (kept here because they decide what a client sees):

- Unknown properties: the Batch service refuses them. Its OData reader answers 400
  ``InvalidRequestBody`` with the reason "The property 'lengthOfTime' does not exist on type
  'Microsoft.Azure.Batch.Protocol.Entities.SoftwareEntitlementRenewalRequest'. Make sure to only
  use property values that are defined by the type." (Azure/azure-batch-software-entitlement,
  REST API docs, "Response 400"); the Batch error-code list also has ``UnsupportedProperty``.
- Wrong JSON types are caught by the same OData reader, so they too are ``InvalidRequestBody``
  with a ``Reason``: "Cannot convert a primitive value to the expected type 'Edm.String'. See
  the inner exception for more details." (Azure/azure-powershell#12147) and "An unexpected
  'StartObject' node was found when reading from the JSON reader. A 'PrimitiveValue' node was
  expected." (Azure/doAzureParallel#211). A body that is not JSON at all is the same code.
- A JSON string where a number or a boolean is expected is read as that type when it converts
  (the Azure CLI sends ``"targetDedicatedNodes": "2"`` and the service creates the pool; see
  ``shapes.convert``); only a string that does not convert is the type error above.
- Missing required properties are ``MissingRequiredProperty`` ("A required property was not
  specified in the request body.", Batch status and error codes page), with a
  ``PropertyName`` value like the one in the recorded ``InvalidPropertyValue``.
- A value the service does not accept, an unknown enum value included, is
  ``InvalidPropertyValue`` with ``PropertyName``, ``PropertyValue`` and ``Reason`` (the
  recordings' ``POST /pools 400``). OData v3, which the service speaks (``DataServiceVersion:
  3.0``), has no enum types, so enums are strings checked after the body has been read.
- Enum case: accepted in any case. The recordings show a client sending ``"nodeFillType":
  "pack"`` (the description's spelling) and the live service answering ``"Pack"``: the
  service's own spelling differs from the documented one and both are accepted, i.e. the
  service parses enums case-insensitively (and the SDK's enums are case-insensitive too).
  Answers, on the other hand, must use the description's exact spelling.
- Order: the reader refuses a malformed body before anything is validated, so among several
  faults the ``InvalidRequestBody`` ones come first, then missing properties, then invalid
  values; within a kind, the first in document order.
- ``null`` stands for an absent property (the SDK never sends one; OData accepts null for
  nullable properties and the Batch documentation treats omitted and null alike), and OData
  annotations (``odata.type``: the .NET SDK once sent it in task bodies) are ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import importlib.resources.abc
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

# jsonschema ships no annotations; they come with types-jsonschema, which a checker may lack.
from jsonschema import (  # type: ignore[import-untyped, unused-ignore]
    Draft4Validator,
    FormatChecker,
    ValidationError,
)
from jsonschema.protocols import Validator  # type: ignore[import-untyped, unused-ignore]
from jsonschema.validators import extend  # type: ignore[import-untyped, unused-ignore]
from referencing import Registry
from referencing.jsonschema import DRAFT4

from fanout_azure.emulator import shapes

LATEST_VERSION: Final = "2025-06-01"
"""The version the emulator's objects are kept in; answers to older versions are projected."""
KNOWN_VERSIONS: Final = (LATEST_VERSION, "2024-07-01.20.0", "2024-02-01.19.0")
"""The api-versions the emulator can serve, newest first, given each one's description in
``spec/<version>/BatchService.json``."""


def _description(version: str) -> importlib.resources.abc.Traversable:
    resource = importlib.resources.files(__package__ or "fanout_azure.emulator")
    return resource.joinpath("spec", version, "BatchService.json")


API_VERSIONS: Final = tuple(v for v in KNOWN_VERSIONS if _description(v).is_file())
"""The api-versions served: those whose description is shipped (see ``spec/README.md``)."""
RESPONSE_URI: Final = "urn:fanout-azure:batch:response"
REQUEST_URI: Final = "urn:fanout-azure:batch:request"
GREEDY_PARAMETERS: Final = frozenset({"filePath"})
"""Path parameters that take the rest of the path: a node file's path may contain ``/``."""

# Keywords of Draft 4 that the translated schemas keep; every other key (description,
# x-ms-*, readOnly, default, ...) is an annotation and is dropped.
_KEPT = frozenset(
    {
        "type",
        "format",
        "enum",
        "items",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "minItems",
        "maxItems",
        "uniqueItems",
    }
)
_EDM_TYPES: Final = {
    "int32": "Edm.Int32",
    "int64": "Edm.Int64",
    "float": "Edm.Single",
    "double": "Edm.Double",
    "date-time": "Edm.DateTime",
    "duration": "Edm.Time",
    "integer": "Edm.Int32",
    "number": "Edm.Double",
    "boolean": "Edm.Boolean",
    "string": "Edm.String",
}
"""The OData type named in the service's conversion errors, by format or JSON type."""


@dataclass(frozen=True)
class Operation:
    """An operation of the description, matched to one request.

    ``success_statuses`` are the statuses the description declares besides ``default`` (for
    the ``*Exists`` operations that includes 404). ``body_schema`` is the description's schema
    of the body parameter (a ``$ref`` to a definition); ``body_required`` tells whether the
    body may be left out.
    """

    operation_id: str
    method: str
    template: str
    path_params: dict[str, str] = field(hash=False)
    body_schema: dict[str, Any] | None = field(hash=False)
    success_statuses: tuple[int, ...]
    body_required: bool = False

    @property
    def body_definition(self) -> str | None:
        """The name of the definition the body must follow (``BatchPoolCreateOptions``...)."""
        if self.body_schema is None:
            return None
        return _definition_name(self.body_schema.get("$ref", ""))


@dataclass(frozen=True)
class RequestProblem:
    """The first fault of a request body, as the service reports it (always a 400)."""

    code: str
    message: str
    values: dict[str, str] = field(default_factory=dict, hash=False)


INVALID_REQUEST_BODY = "The specified Request Body is not syntactically valid."
MISSING_REQUIRED_PROPERTY = "A required property was not specified in the request body."
INVALID_PROPERTY_VALUE = (
    "The value provided for one of the properties in the request body is invalid."
)


@dataclass(frozen=True)
class _Route:
    """A path template split into segments; ``{name}`` segments are parameters."""

    template: str
    segments: tuple[str, ...]
    operations: Mapping[str, Operation]

    @property
    def literal_count(self) -> int:
        return sum(1 for segment in self.segments if not _is_parameter(segment))

    def bind(self, parts: list[str]) -> dict[str, str] | None:
        """The path parameters if ``parts`` (the request's segments) fit this template."""
        last = self.segments[-1]
        greedy = _is_parameter(last) and last[1:-1] in GREEDY_PARAMETERS
        count = len(self.segments)
        if len(parts) < count or (not greedy and len(parts) != count):
            return None
        values = [*parts[: count - 1], "/".join(parts[count - 1 :])]
        params: dict[str, str] = {}
        for segment, value in zip(self.segments, values, strict=True):
            if not _is_parameter(segment):
                if value != segment:
                    return None
            elif not value:
                return None
            else:
                params[segment[1:-1]] = value
        return params


def _is_parameter(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def _definition_name(ref: str) -> str | None:
    prefix = "#/definitions/"
    return ref[len(prefix) :] if ref.startswith(prefix) else None


@functools.cache
def load_spec(version: str = LATEST_VERSION) -> dict[str, Any]:
    """A version's description, read once from ``spec/<version>/BatchService.json``."""
    if version not in API_VERSIONS:
        raise ValueError(f"no description of api-version {version!r} (served: {API_VERSIONS})")
    text = _description(version).read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    return document


class BatchSpec:
    """Routes, request checks and strict answer checks, all from one description."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.version: str = document["info"]["version"]
        self.definitions: Mapping[str, Any] = document["definitions"]
        _refuse_polymorphism(self.definitions)
        self._routes = _routes(document)
        self._by_id = {
            operation.operation_id: operation
            for route in self._routes
            for operation in route.operations.values()
        }
        self._responses = {
            operation_id: _responses(document, operation)
            for operation_id, operation in self._by_id.items()
        }
        self._strict = _Validators(self.definitions, request=False)
        self._lenient = _Validators(self.definitions, request=True)

    # Routing

    @property
    def operations(self) -> Mapping[str, Operation]:
        """Every operation of the description by its id (``path_params`` empty)."""
        return self._by_id

    def match(self, method: str, path: str) -> Operation | None:
        """The operation for ``method`` on ``path``, its path parameters filled in.

        ``path`` is percent-DECODED (``urllib.parse.unquote`` of the raw path) and without the
        query. A node file's path may span several segments (the SDK sends ``a/b.txt`` as
        ``a%2Fb.txt``, which decodes to ``a/b.txt``): ``{filePath}`` takes the rest of the path.
        Literal segments are compared exactly. ``None`` if no operation fits.
        """
        found = self._find(path)
        if found is None:
            return None
        route, params = found
        operation = route.operations.get(method.upper())
        if operation is None:
            return None
        return dataclasses.replace(operation, path_params=params)

    def allowed_methods(self, path: str) -> tuple[str, ...]:
        """The methods the description defines for ``path`` (empty if the path is unknown)."""
        found = self._find(path)
        return tuple(sorted(found[0].operations)) if found else ()

    def _find(self, path: str) -> tuple[_Route, dict[str, str]] | None:
        parts = path.split("?", 1)[0].split("/")
        if parts[0] != "":
            return None
        parts = parts[1:]
        best: tuple[_Route, dict[str, str]] | None = None
        for route in self._routes:
            params = route.bind(parts)
            if params is not None and (best is None or route.literal_count > best[0].literal_count):
                best = (route, params)
        return best

    # Requests

    def request_error(self, operation: Operation, body: object) -> RequestProblem | None:
        """The first fault of ``body`` for ``operation``, or ``None`` if the service takes it."""
        return self.read_request(operation, body)[1]

    def read_request(self, operation: Operation, body: object) -> tuple[Any, RequestProblem | None]:
        """``body`` as the service reads it for ``operation``, and its first fault if any.

        ``body`` is the parsed JSON; raw ``bytes``/``str`` are parsed here (a body that is not
        JSON is ``InvalidRequestBody``). ``None`` or an empty body means "no body", a fault
        only where the description requires one. What is read drops ``null`` properties and
        OData annotations and converts strings where numbers or booleans are expected
        (``shapes.convert``); it is what the account should act on.
        """
        if operation.body_schema is None:
            return None, None
        if isinstance(body, bytes | bytearray | str):
            if not body:
                body = None
            else:
                parsed = _parse_json(body)
                if isinstance(parsed, RequestProblem):
                    return None, parsed
                body = parsed
        if body is None:
            if operation.body_required:
                return None, _unreadable("The request body is empty; a JSON object was expected.")
            return None, None
        definition = operation.body_definition
        if definition is None:
            return body, None
        cleaned = shapes.convert(self.definitions, definition, _readable(body))
        if self._lenient.is_valid(definition, cleaned):
            return cleaned, None
        errors = self._lenient.validator(definition).iter_errors(cast(Any, cleaned))
        return cleaned, _first_problem(errors, cleaned)

    def response_definition(self, operation_id: str, status: int) -> str | None:
        """The definition an answer of ``operation_id`` with ``status`` follows, if any."""
        responses = self._responses.get(operation_id, {})
        schema = responses.get(str(status)) or (responses.get("default") if status >= 400 else None)
        return _definition_name(str((schema or {}).get("$ref", "")))

    # Responses

    def response_problems(
        self, operation_id: str, status: int, body: object, *, where: str | None = None
    ) -> list[str]:
        """Everything in an answer that the description does not allow, in readable lines.

        The schema is the one declared for ``status`` (``default`` for undeclared error
        statuses); a status that has no schema must come without a body, and a 2xx status the
        operation does not declare is itself a problem. ``body`` is parsed JSON (or raw bytes,
        parsed here; ``None`` for no body). ``where`` prefixes each line; it defaults to the
        operation's method and path template.
        """
        operation = self._by_id.get(operation_id)
        if operation is None:
            return [f"{operation_id}: no such operation in the description"]
        where = where or f"{operation.method} {operation.template} {status}"
        responses = self._responses[operation_id]
        if str(status) in responses:
            schema = responses[str(status)]
        elif status >= 400 and "default" in responses:
            schema = responses["default"]
        else:
            declared = ", ".join(sorted(key for key in responses if key != "default"))
            return [f"{where}: status {status} is not declared (declared: {declared})"]
        return self._body_problems(schema, body, where)

    def definition_problems(
        self, definition: str, instance: object, *, where: str = ""
    ) -> list[str]:
        """Strict problems of ``instance`` as an answer's ``definition`` (``BatchPool``...)."""
        where = where or definition
        if self._strict.is_valid(definition, instance):
            return []
        return [
            f"{where}: {_json_path(error.absolute_path)}: {error.message}"
            for error in _sorted(
                self._strict.validator(definition).iter_errors(cast(Any, instance))
            )
        ]

    def _body_problems(
        self, schema: Mapping[str, Any] | None, body: object, where: str
    ) -> list[str]:
        if schema is None:
            if body is None or body == b"" or body == "":
                return []
            return [f"{where}: the description declares no body, but one was sent"]
        if schema.get("type") == "file":
            return []
        if isinstance(body, bytes | bytearray | str):
            try:
                body = json.loads(body)
            except ValueError as error:
                return [f"{where}: the body is not JSON ({error})"]
        if body is None:
            return [f"{where}: the description declares a body, but none was sent"]
        definition = _definition_name(str(schema.get("$ref", "")))
        if definition is None:
            return [f"{where}: unsupported response schema {schema!r}"]
        return self.definition_problems(definition, body, where=where)


# Building the routes and operations


def _routes(document: Mapping[str, Any]) -> list[_Route]:
    routes = []
    for template, item in document["paths"].items():
        shared = item.get("parameters", [])
        operations = {
            method.upper(): _operation(document, template, method, spec, shared)
            for method, spec in item.items()
            if method != "parameters"
        }
        segments = tuple(template.strip("/").split("/"))
        routes.append(_Route(template, segments, operations))
    return routes


def _operation(
    document: Mapping[str, Any],
    template: str,
    method: str,
    spec: Mapping[str, Any],
    shared: list[Any],
) -> Operation:
    parameters = [_resolve_parameter(document, p) for p in [*shared, *spec.get("parameters", [])]]
    body = next((p for p in parameters if p.get("in") == "body"), None)
    statuses = tuple(sorted(int(code) for code in spec["responses"] if code.isdigit()))
    return Operation(
        operation_id=spec["operationId"],
        method=method.upper(),
        template=template,
        path_params={},
        body_schema=dict(body["schema"]) if body else None,
        success_statuses=statuses,
        body_required=bool(body and body.get("required")),
    )


def _resolve_parameter(document: Mapping[str, Any], parameter: Mapping[str, Any]) -> Any:
    ref = parameter.get("$ref")
    if ref is None:
        return parameter
    return document["parameters"][ref.rsplit("/", 1)[-1]]


def _responses(document: Mapping[str, Any], operation: Operation) -> dict[str, Any]:
    spec = document["paths"][operation.template][operation.method.lower()]
    return {code: response.get("schema") for code, response in spec["responses"].items()}


def _refuse_polymorphism(definitions: Mapping[str, Any]) -> None:
    """Fail loudly if a newer description brings polymorphic models.

    The 2025-06-01 description has no ``discriminator`` (and no ``allOf``): validating a
    polymorphic model needs the discriminator's value to pick the schema, which this module
    does not do. Better to stop here than to validate such bodies wrongly.
    """
    for name, definition in definitions.items():
        if "discriminator" in definition or "x-ms-discriminator-value" in definition:
            raise NotImplementedError(f"definition {name} is polymorphic; extend spec.py")


# Swagger 2.0 to JSON Schema Draft 4


def _translate(node: Any, definitions: Mapping[str, Any], *, request: bool) -> Any:
    """One Swagger schema as Draft 4, closed for answers, request rules for requests."""
    if not isinstance(node, Mapping):
        return node
    node = _flatten_all_of(node, definitions)
    if "$ref" in node:
        result: dict[str, Any] = {"$ref": node["$ref"]}
    else:
        result = {key: value for key, value in node.items() if key in _KEPT}
        if "items" in node:
            result["items"] = _translate(node["items"], definitions, request=request)
        if "properties" in node or node.get("type") == "object":
            result.update(_object_keywords(node, definitions, request=request))
    if node.get("x-nullable"):
        return {"anyOf": [{"type": "null"}, result]}
    return result


def _object_keywords(
    node: Mapping[str, Any], definitions: Mapping[str, Any], *, request: bool
) -> dict[str, Any]:
    properties: Mapping[str, Any] = node.get("properties", {})
    result: dict[str, Any] = {
        "properties": {
            name: _translate(value, definitions, request=request)
            for name, value in properties.items()
        }
    }
    required = list(node.get("required", []))
    if request:
        # Swagger: a read-only property is never required in a request.
        required = [name for name in required if not properties.get(name, {}).get("readOnly")]
    if required:
        result["required"] = required
    extra = node.get("additionalProperties", False)
    result["additionalProperties"] = (
        _translate(extra, definitions, request=request) if isinstance(extra, Mapping) else extra
    )
    return result


def _flatten_all_of(node: Mapping[str, Any], definitions: Mapping[str, Any]) -> Mapping[str, Any]:
    """Merge ``allOf`` parents into the node, so that a closed object still knows them all."""
    if "allOf" not in node:
        return node
    merged: dict[str, Any] = {key: value for key, value in node.items() if key != "allOf"}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for part in node["allOf"]:
        name = _definition_name(part.get("$ref", ""))
        parent = _flatten_all_of(definitions[name] if name else part, definitions)
        properties.update(parent.get("properties", {}))
        required.extend(parent.get("required", []))
    properties.update(node.get("properties", {}))
    required.extend(node.get("required", []))
    merged.update(type="object", properties=properties, required=list(dict.fromkeys(required)))
    return merged


# Formats

_DURATION = re.compile(
    r"-?P(?=\d|T\d)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?"
)
_DATE_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})"
)
_INT_RANGES: Final = {"int32": 2**31, "int64": 2**63}


def _is_duration(value: object) -> bool:
    """ISO 8601 duration, as .NET writes a TimeSpan (``P10675199DT2H48M5.4775807S``)."""
    return not isinstance(value, str) or _DURATION.fullmatch(value) is not None


def _is_date_time(value: object) -> bool:
    """RFC 3339 date-time with an offset (``2025-01-02T03:04:05.1234567Z``)."""
    if not isinstance(value, str):
        return True
    found = _DATE_TIME.fullmatch(value)
    if found is None:
        return False
    _, month, day, hour, minute, second = (int(found.group(i)) for i in range(1, 7))
    return 1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61


def _in_range(value: object, *, bound: int) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        return True
    return -bound <= value < bound


_FORMAT_CHECKS: Final[dict[str, Callable[[Any], bool]]] = {
    "duration": _is_duration,
    "date-time": _is_date_time,
    "int32": functools.partial(_in_range, bound=_INT_RANGES["int32"]),
    "int64": functools.partial(_in_range, bound=_INT_RANGES["int64"]),
}
"""The formats checked; the description's others (uri, password, arm-id...) are not."""


def _format_checker() -> FormatChecker:
    checker = FormatChecker(formats=())
    for name, check in _FORMAT_CHECKS.items():
        checker.checks(name)(check)
    return checker


# Fast checks: the same translated schemas compiled to closures. They only say valid or not
# (jsonschema takes ~28 ms for a 100-task collection, these well under 5 ms); jsonschema then
# words the first problem of an invalid body, so both must agree (the tests check they do).

_Check = Callable[[Any], bool]


class _Unsupported(Exception):
    """A keyword the compiler does not know: that definition is checked by jsonschema only."""


_TYPES: Final[dict[str, _Check]] = {
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
    "string": lambda value: isinstance(value, str),
    "boolean": lambda value: isinstance(value, bool),
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda value: isinstance(value, int | float) and not isinstance(value, bool),
    "null": lambda value: value is None,
}
_COMPILED_KEYWORDS: Final = frozenset(
    {
        "$ref",
        "anyOf",
        "type",
        "format",
        "enum",
        "items",
        "properties",
        "required",
        "additionalProperties",
        "title",
    }
)


class _Compiler:
    def __init__(
        self,
        definitions: Mapping[str, Any],
        formats: Mapping[str, _Check],
        *,
        ignore_case: bool,
    ) -> None:
        self._definitions = definitions
        self._formats = formats
        self._ignore_case = ignore_case
        self._compiled: dict[str, _Check] = {}
        self._unsupported: set[str] = set()

    def definition(self, name: str) -> _Check:
        if name in self._unsupported:
            raise _Unsupported(name)
        found = self._compiled.get(name)
        if found is None:
            # A placeholder first, so that a definition may refer to itself.
            self._compiled[name] = lambda value: self._compiled[name](value)
            try:
                found = self._compiled[name] = self.schema(self._definitions[name])
            except _Unsupported:
                del self._compiled[name]
                self._unsupported.add(name)
                raise
        return found

    def schema(self, node: Mapping[str, Any]) -> _Check:
        unknown = set(node) - _COMPILED_KEYWORDS
        if unknown:
            raise _Unsupported(sorted(unknown))
        if "$ref" in node:
            return self.definition(_definition_name(str(node["$ref"])) or "")
        checks = [check for check in self._keywords(node) if check is not None]
        if len(checks) == 1:
            return checks[0]

        def every(value: Any) -> bool:
            return all(check(value) for check in checks)

        return every

    def _keywords(self, node: Mapping[str, Any]) -> Iterator[_Check | None]:
        if "anyOf" in node:
            branches = [self.schema(branch) for branch in node["anyOf"]]
            yield lambda value: any(branch(value) for branch in branches)
        yield self._type(node.get("type"))
        yield self._formats.get(str(node.get("format")))
        yield self._enum(node.get("enum"))
        if "items" in node:
            item = self.schema(node["items"])
            yield lambda value: not isinstance(value, list) or all(item(v) for v in value)
        if "properties" in node or "required" in node or "additionalProperties" in node:
            yield self._object(node)

    @staticmethod
    def _type(expected: object) -> _Check | None:
        if expected is None:
            return None
        names = [expected] if isinstance(expected, str) else list(cast(list[str], expected))
        tests = [_TYPES[name] for name in names]
        return tests[0] if len(tests) == 1 else lambda value: any(test(value) for test in tests)

    def _enum(self, allowed: object) -> _Check | None:
        if allowed is None:
            return None
        if not isinstance(allowed, list) or not all(isinstance(v, str) for v in allowed):
            raise _Unsupported("enum")
        if self._ignore_case:
            folded = frozenset(value.casefold() for value in allowed)
            return lambda value: not isinstance(value, str) or value.casefold() in folded
        exact = frozenset(allowed)
        return lambda value: isinstance(value, str) and value in exact

    def _object(self, node: Mapping[str, Any]) -> _Check:
        properties = {name: self.schema(sub) for name, sub in node.get("properties", {}).items()}
        required = tuple(node.get("required", ()))
        extra = node.get("additionalProperties", True)
        extra_check = self.schema(extra) if isinstance(extra, Mapping) else None

        def check(value: Any) -> bool:
            if not isinstance(value, dict):
                return True
            for key, item in value.items():
                sub = properties.get(key)
                if sub is not None:
                    if not sub(item):
                        return False
                elif extra is False or (extra_check is not None and not extra_check(item)):
                    return False
            return all(name in value for name in required)

        return check


# Validators


def _enum_ignoring_case(
    validator: Validator, enums: list[Any], instance: object, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """Draft 4 ``enum``, except that strings are compared without regard to case."""
    if isinstance(instance, str):
        if instance.casefold() in {value.casefold() for value in enums if isinstance(value, str)}:
            return
    elif instance in enums:
        return
    yield ValidationError(f"{instance!r} is not one of {enums!r}")


# ``extend`` has no annotations in types-jsonschema (and jsonschema itself ships none).
_RequestValidator: Callable[..., Validator] = extend(  # type: ignore[no-untyped-call, unused-ignore]
    Draft4Validator, {"enum": _enum_ignoring_case}
)


class _Validators:
    """One precompiled validator per definition, all sharing one registered document."""

    def __init__(self, definitions: Mapping[str, Any], *, request: bool) -> None:
        uri = REQUEST_URI if request else RESPONSE_URI
        translated = {}
        for name, definition in definitions.items():
            schema = _translate(definition, definitions, request=request)
            schema["title"] = name  # names the OData type in "does not exist on type" reasons
            translated[name] = schema
        root = {"definitions": translated}
        self._registry: Registry[Any] = Registry().with_resource(uri, DRAFT4.create_resource(root))
        self._uri = uri
        self._cls: Callable[..., Validator] = _RequestValidator if request else Draft4Validator
        self._formats = _format_checker()
        self._cache: dict[str, Validator] = {}
        compiler = _Compiler(translated, _FORMAT_CHECKS, ignore_case=request)
        self._fast: dict[str, _Check | None] = {}
        for name in translated:
            self.validator(name)
            try:
                self._fast[name] = compiler.definition(name)
            except _Unsupported:
                self._fast[name] = None

    def is_valid(self, definition: str, instance: object) -> bool:
        """Whether ``instance`` follows ``definition``: the compiled check where there is one."""
        fast = self._fast.get(definition)
        if fast is not None:
            return fast(instance)
        return bool(self.validator(definition).is_valid(cast(Any, instance)))

    def validator(self, definition: str) -> Validator:
        found = self._cache.get(definition)
        if found is None:
            schema = {"$ref": f"{self._uri}#/definitions/{definition}"}
            found = self._cls(schema, registry=self._registry, format_checker=self._formats)
            self._cache[definition] = found
        return found


# Request problems, as the service words them


def _parse_json(raw: bytes | bytearray | str) -> object:
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        return _unreadable("The request body is not UTF-8 text.")
    except ValueError as error:
        return _unreadable(f"The request body is not valid JSON: {error}.")


def _unreadable(reason: str, prop: str | None = None) -> RequestProblem:
    values = {"PropertyName": prop} if prop else {}
    values["Reason"] = reason
    return RequestProblem("InvalidRequestBody", INVALID_REQUEST_BODY, values)


def _readable(value: Any) -> Any:
    """``value`` as the service's reader sees it: without ``null`` properties (null stands for
    absent) and without OData annotations (``odata.type``..., which older SDKs sent and the
    OData reader accepts on any object)."""
    if isinstance(value, dict):
        return {
            key: _readable(item)
            for key, item in value.items()
            if item is not None and not key.startswith("odata.")
        }
    if isinstance(value, list):
        return [_readable(item) for item in value]
    return value


def _first_problem(errors: Iterator[ValidationError], body: object) -> RequestProblem | None:
    ranked = [(_rank(error), _position(error, body), error) for error in _leaves(errors)]
    if not ranked:
        return None
    _, _, first = min(ranked, key=lambda item: (item[0], item[1]))
    return _problem(first)


def _leaves(errors: Iterator[ValidationError]) -> Iterator[ValidationError]:
    """The errors, with ``anyOf`` (nullable) failures replaced by their non-null branch's."""
    for error in errors:
        if error.validator == "anyOf" and error.context:
            yield from (sub for sub in error.context if sub.validator_value != "null")
        else:
            yield error


def _rank(error: ValidationError) -> int:
    if error.validator in ("type", "additionalProperties", "format"):
        return 0
    if error.validator == "required":
        return 1
    return 2


def _position(error: ValidationError, body: object) -> tuple[int, ...]:
    """Where in the document the fault is, as indexes, so faults sort in reading order."""
    position: list[int] = []
    node = body
    for step in error.absolute_path:
        if isinstance(node, dict):
            position.append(list(node).index(step))
        else:
            position.append(int(step))
        node = node[step]  # type: ignore[index]
    if error.validator == "additionalProperties" and isinstance(node, dict):
        position.append(list(node).index(_unknown_properties(error)[0]))
    elif error.validator == "required" and isinstance(node, dict):
        position.append(len(node))  # noticed when the object ends
    return tuple(position)


def _unknown_properties(error: ValidationError) -> list[str]:
    known = error.schema.get("properties", {}) if isinstance(error.schema, Mapping) else {}
    instance = error.instance if isinstance(error.instance, dict) else {}
    return [name for name in instance if name not in known]


def _leaf_name(error: ValidationError) -> str:
    names = [step for step in error.absolute_path if isinstance(step, str)]
    return names[-1] if names else ""


def _problem(error: ValidationError) -> RequestProblem:
    if error.validator == "additionalProperties":
        unknown = _unknown_properties(error)[0]
        title = error.schema.get("title", "") if isinstance(error.schema, Mapping) else ""
        return _unreadable(
            f"The property '{unknown}' does not exist on type '{title}'. Make sure to only use "
            "property names that are defined by the type.",
            unknown,
        )
    if error.validator == "type":
        return _unreadable(_type_reason(error), _leaf_name(error) or None)
    if error.validator == "format":
        edm = _EDM_TYPES.get(str(error.validator_value), str(error.validator_value))
        return _unreadable(
            f"Cannot convert the literal '{error.instance}' to the expected type '{edm}'.",
            _leaf_name(error) or None,
        )
    if error.validator == "required":
        required: list[str] = list(_value_of(error))
        instance = error.instance if isinstance(error.instance, dict) else {}
        missing = [name for name in required if name not in instance]
        return RequestProblem(
            "MissingRequiredProperty", MISSING_REQUIRED_PROPERTY, {"PropertyName": missing[0]}
        )
    return _invalid_value(error)


def _value_of(error: ValidationError) -> Any:
    """The keyword's value in the schema (``required``'s names, ``enum``'s values...)."""
    return error.validator_value


def _invalid_value(error: ValidationError) -> RequestProblem:
    instance = error.instance
    shown = instance if isinstance(instance, str) else json.dumps(instance)
    if error.validator == "enum":
        allowed = ", ".join(str(value) for value in _value_of(error))
        reason = f"The value is not one of the allowed values: {allowed}."
    else:
        reason = error.message
    values = {"PropertyName": _leaf_name(error), "PropertyValue": shown, "Reason": reason}
    return RequestProblem("InvalidPropertyValue", INVALID_PROPERTY_VALUE, values)


def _node_kind(value: object) -> str:
    if isinstance(value, dict):
        return "StartObject"
    if isinstance(value, list):
        return "StartArray"
    return "PrimitiveValue"


def _type_reason(error: ValidationError) -> str:
    expected = error.validator_value
    expected_kind = {"object": "StartObject", "array": "StartArray"}.get(str(expected))
    expected_kind = expected_kind or "PrimitiveValue"
    found_kind = _node_kind(error.instance)
    if found_kind == expected_kind == "PrimitiveValue":
        fmt = error.schema.get("format") if isinstance(error.schema, Mapping) else None
        edm = _EDM_TYPES.get(str(fmt), _EDM_TYPES.get(str(expected), str(expected)))
        return (
            f"Cannot convert a primitive value to the expected type '{edm}'. See the inner "
            "exception for more details."
        )
    return (
        f"An unexpected '{found_kind}' node was found when reading from the JSON reader. "
        f"A '{expected_kind}' node was expected."
    )


# Readable answers' problems


def _sorted(errors: Iterator[ValidationError]) -> list[ValidationError]:
    return sorted(_leaves(errors), key=lambda error: [str(step) for step in error.absolute_path])


def _json_path(path: Any) -> str:
    text = "$"
    for step in path:
        if isinstance(step, int):
            text += f"[{step}]"
        elif re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$]*", str(step)):
            text += f".{step}"
        else:
            text += f"[{json.dumps(step)}]"
    return text


# Module-level access to the one description


@functools.cache
def get_spec(version: str = LATEST_VERSION) -> BatchSpec:
    """The description of ``version`` (one of ``API_VERSIONS``), compiled once."""
    return BatchSpec(load_spec(version))


def match(method: str, path: str, *, version: str = LATEST_VERSION) -> Operation | None:
    """``BatchSpec.match`` on the packaged description of ``version``."""
    return get_spec(version).match(method, path)


def request_error(
    operation: Operation, body: object, *, version: str = LATEST_VERSION
) -> RequestProblem | None:
    """``BatchSpec.request_error`` on the packaged description of ``version``."""
    return get_spec(version).request_error(operation, body)


def response_problems(
    operation_id: str,
    status: int,
    body: object,
    *,
    where: str | None = None,
    version: str = LATEST_VERSION,
) -> list[str]:
    """``BatchSpec.response_problems`` on the packaged description of ``version``."""
    return get_spec(version).response_problems(operation_id, status, body, where=where)


def definition_problems(
    definition: str, instance: object, *, where: str = "", version: str = LATEST_VERSION
) -> list[str]:
    """``BatchSpec.definition_problems`` on the packaged description of ``version``."""
    return get_spec(version).definition_problems(definition, instance, where=where)
