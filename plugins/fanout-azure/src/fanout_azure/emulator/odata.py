"""The OData query options Batch list operations take: ``$filter``, ``$select``, paging.

``$filter`` is the subset Batch documents for its lists: comparisons (``eq ne gt ge lt le``) of a
property path (``state``, ``executionInfo/result``) with a string, number or ``datetime'…'``
literal, combined with ``and``, ``or``, ``not`` and parentheses. ``startswith(id, 'x')`` is
supported too, as the service offers it for ids. A ``datetime'…'`` literal compares as a moment,
not as text: ``2026-01-01T00:00:00Z`` and ``2026-01-01T00:00:00.5Z`` differ by half a second
whatever the digits, and a time without an offset is UTC.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fanout_azure.emulator.errors import BatchError

Predicate = Callable[[dict[str, Any]], bool]

_TOKEN = re.compile(
    r"\s*(?:(?P<open>\()|(?P<close>\))|(?P<comma>,)"
    r"|datetime'(?P<datetime>[^']*)'|'(?P<string>(?:[^']|'')*)'"
    r"|(?P<number>-?\d+(?:\.\d+)?)(?![\w/])|(?P<word>[A-Za-z_][\w/]*))"
)
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a is not None and a > b,
    "ge": lambda a, b: a is not None and a >= b,
    "lt": lambda a, b: a is not None and a < b,
    "le": lambda a, b: a is not None and a <= b,
}


def invalid_filter(text: str) -> BatchError:
    return BatchError(
        400,
        "InvalidQueryParameterValue",
        "Value for one of the query parameters specified in the request URI is invalid.",
        {"QueryParameterName": "$filter", "QueryParameterValue": text},
    )


def parse_filter(text: str) -> Predicate:
    """A predicate over an object's JSON document; a ``BatchError`` (400) if it cannot parse."""
    tokens = _tokenize(text)
    parser = _Parser(tokens, text)
    predicate = parser.expression()
    if parser.position != len(tokens):
        raise invalid_filter(text)
    return predicate


_KEYWORDS = frozenset({"and", "or", "not", "startswith", *_COMPARISONS})


def filter_properties(text: str) -> frozenset[str]:
    """The top-level properties a ``$filter`` reads (``executionInfo`` for
    ``executionInfo/result eq 'success'``): a listing can filter on just those."""
    return frozenset(
        value.split("/", 1)[0]
        for kind, value in _tokenize(text)
        if kind == "word" and value.lower() not in _KEYWORDS
    )


def select(document: dict[str, Any], fields: str | None) -> dict[str, Any]:
    """``document`` with only the properties ``$select`` names (``a`` or ``a/b``)."""
    if not fields:
        return document
    chosen: dict[str, Any] = {}
    for name in (part.strip() for part in fields.split(",")):
        head, _, rest = name.partition("/")
        if head not in document:
            continue
        if rest and isinstance(document[head], dict):
            nested = chosen.setdefault(head, {})
            if rest in document[head]:
                nested[rest] = document[head][rest]
        else:
            chosen[head] = document[head]
    return chosen


def value_at(document: dict[str, Any], path: str) -> Any:
    current: Any = document
    for part in path.split("/"):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise invalid_filter(text)
        kind = match.lastgroup or ""
        value = match.group(kind) if kind else ""
        tokens.append((kind, value.replace("''", "'") if kind == "string" else value))
        position = match.end()
    return tokens


class _Parser:
    """Recursive descent: or-expressions of and-expressions of (not) terms."""

    def __init__(self, tokens: list[tuple[str, str]], text: str) -> None:
        self.tokens = tokens
        self.text = text
        self.position = 0

    def expression(self) -> Predicate:
        left = self.conjunction()
        while self._word("or"):
            right = self.conjunction()
            left = _either(left, right)
        return left

    def conjunction(self) -> Predicate:
        left = self.term()
        while self._word("and"):
            right = self.term()
            left = _both(left, right)
        return left

    def term(self) -> Predicate:
        if self._word("not"):
            inner = self.term()
            return lambda document: not inner(document)
        if self._take("open"):
            inner = self.expression()
            self._expect("close")
            return inner
        if self._word("startswith"):
            self._expect("open")
            path = self._expect("word")
            self._expect("comma")
            prefix = self._expect("string")
            self._expect("close")
            return lambda document: str(value_at(document, path) or "").startswith(prefix)
        path = self._expect("word")
        operator = self._expect("word").lower()
        if operator not in _COMPARISONS:
            raise invalid_filter(self.text)
        literal = self._literal()
        compare = _COMPARISONS[operator]
        return lambda document: compare(_comparable(value_at(document, path), literal), literal)

    def _literal(self) -> Any:
        text = self._take("string")
        if text is not None:
            return text
        moment = self._take("datetime")
        if moment is not None:
            parsed = _moment(moment)
            if parsed is None:
                raise invalid_filter(self.text)
            return parsed
        number = self._take("number")
        if number is not None:
            return float(number) if "." in number else int(number)
        word = self._take("word")
        if word in ("true", "false"):
            return word == "true"
        raise invalid_filter(self.text)

    def _word(self, word: str) -> bool:
        if self.position < len(self.tokens) and self.tokens[self.position] == ("word", word):
            self.position += 1
            return True
        return False

    def _take(self, kind: str) -> str | None:
        if self.position < len(self.tokens) and self.tokens[self.position][0] == kind:
            self.position += 1
            return self.tokens[self.position - 1][1]
        return None

    def _expect(self, kind: str) -> str:
        value = self._take(kind)
        if value is None:
            raise invalid_filter(self.text)
        return value


def _comparable(value: Any, literal: Any) -> Any:
    """Enum values compare without regard to case, as the service matches them; times compare
    with a ``datetime'…'`` literal as moments (a value that is no time as None)."""
    if isinstance(literal, datetime):
        return _moment(value) if isinstance(value, str) else None
    if (
        isinstance(value, str)
        and isinstance(literal, str)
        and value.casefold() == literal.casefold()
    ):
        return literal
    return value


def _moment(text: str) -> datetime | None:
    """An RFC 3339 time (up to 7 fractional digits, ``Z`` or an offset; none means UTC)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _either(left: Predicate, right: Predicate) -> Predicate:
    return lambda document: left(document) or right(document)


def _both(left: Predicate, right: Predicate) -> Predicate:
    return lambda document: left(document) and right(document)
