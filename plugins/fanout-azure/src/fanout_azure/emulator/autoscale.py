"""A small evaluator of Batch autoscale formulas: the forms of Microsoft's documented examples.

What it reads: statements ``name = expression`` separated by ``;``; numbers; ``+ - * /``,
comparisons, ``&& || !``, ``cond ? a : b`` and parentheses; ``min``, ``max``, ``avg`` and
``sum`` of numbers and sample vectors; ``TimeInterval_Second``, ``_Minute``, ``_Hour``; the
sampled metrics ``$PendingTasks``, ``$ActiveTasks``, ``$RunningTasks``, ``$SucceededTasks`` and
``$FailedTasks`` with ``.GetSample(interval or count)`` and ``.GetSamplePercent(interval)``;
``$TargetDedicatedNodes``, ``$TargetLowPriorityNodes``, ``$CurrentDedicatedNodes`` and
``$CurrentLowPriorityNodes``; and ``$NodeDeallocationOption = requeue | terminate |
taskcompletion | retaineddata``. Example (the "pending tasks" formula of the Batch
documentation)::

    startingNumberOfVMs = 1;
    maxNumberofVMs = 25;
    pendingTaskSamplePercent = $PendingTasks.GetSamplePercent(180 * TimeInterval_Second);
    pendingTaskSamples = pendingTaskSamplePercent < 70 ? startingNumberOfVMs :
        avg($PendingTasks.GetSample(180 * TimeInterval_Second));
    $TargetDedicatedNodes = min(maxNumberofVMs, pendingTaskSamples);
    $NodeDeallocationOption = taskcompletion;

Samples: the service samples its metrics every 30 seconds; the emulator takes one sample per
evaluation (``Samples.take``), so ``GetSamplePercent`` is the share of the 30-second samples a
window would hold that evaluations took, as low on a new pool as on the service. ``$PendingTasks``
is ``$ActiveTasks`` plus ``$RunningTasks``, as documented.

What it does not read (refused 400 ``InvalidAutoScaleFormula`` naming it): other system
variables (``$CPUPercent``, ``$NetworkInBytes``..., ``$TargetDedicated``), other functions
(``percentile``, ``std``, ``time``, ``GetSamplePeriod``, ``Count``, ``HistoryBeginTime``...),
strings, ``if`` statements, comments.
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from fanout_azure.emulator.errors import BatchError

SAMPLE_PERIOD_S: Final = 30.0
METRICS: Final = (
    "$PendingTasks",
    "$ActiveTasks",
    "$RunningTasks",
    "$SucceededTasks",
    "$FailedTasks",
)
STATE: Final = (
    "$TargetDedicatedNodes",
    "$TargetLowPriorityNodes",
    "$CurrentDedicatedNodes",
    "$CurrentLowPriorityNodes",
)
OUTPUTS: Final = ("$TargetDedicatedNodes", "$TargetLowPriorityNodes", "$NodeDeallocationOption")
DEALLOCATION: Final = ("requeue", "terminate", "taskcompletion", "retaineddata")
INTERVALS: Final = {
    "TimeInterval_Second": 1.0,
    "TimeInterval_Minute": 60.0,
    "TimeInterval_Hour": 3600.0,
}
_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d*)?|\.\d+)|(?P<name>\$?[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>&&|\|\||<=|>=|==|!=|[-+*/<>!?:(),.=;]))"
)


@dataclass(frozen=True)
class Interval:
    seconds: float


Value = float | Interval | str | list[float]


@dataclass
class Samples:
    """One pool's metric samples: (monotonic time, {metric: value}), newest last."""

    taken: deque[tuple[float, dict[str, float]]] = field(default_factory=lambda: deque(maxlen=2880))

    def take(self, metrics: dict[str, float]) -> None:
        self.taken.append((time.monotonic(), dict(metrics)))


@dataclass
class Outcome:
    """What an evaluation set: the service's ``results`` text and the targets it asks for."""

    results: str
    dedicated: int
    spot: int
    deallocation: str


def invalid_formula(reason: str) -> BatchError:
    """400 ``InvalidAutoScaleFormula`` (a code of Batch's list) with the reason."""
    return BatchError(
        400,
        "InvalidAutoScaleFormula",
        "The specified autoscale formula is not valid.",
        {"Reason": reason},
    )


def evaluate(formula: str, state: dict[str, float], samples: Samples) -> Outcome:
    """Run ``formula`` with the pool's ``state`` (``STATE`` variables) and ``samples``."""
    variables: dict[str, Value] = {name: value for name, value in state.items()}
    order: list[str] = []
    parser = _Parser(list(_tokens(formula)), variables, samples)
    for name, value in parser.statements():
        variables[name] = value
        if name not in order:
            order.append(name)
    dedicated = _count(variables["$TargetDedicatedNodes"])
    spot = _count(variables["$TargetLowPriorityNodes"])
    deallocation = str(variables.get("$NodeDeallocationOption", "requeue"))
    shown = {"$TargetDedicatedNodes": dedicated, "$TargetLowPriorityNodes": spot}
    parts = [f"{name}={shown[name]}" for name in OUTPUTS[:2]]
    parts.append(f"$NodeDeallocationOption={deallocation}")
    parts += [f"{name}={_text(variables[name])}" for name in order if name not in OUTPUTS]
    return Outcome(";".join(parts), dedicated, spot, deallocation)


def _count(value: Value) -> int:
    if not isinstance(value, float):
        raise invalid_formula("a target node count must be a number")
    return max(0, int(value))


def _text(value: Value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_text(item) for item in value) + "]"
    if isinstance(value, Interval):
        return f"{value.seconds}s"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return value


def _tokens(text: str) -> Iterator[str]:
    position = 0
    text = text.rstrip()
    while position < len(text):
        found = _TOKEN.match(text, position)
        if found is None or found.end() == position:
            raise invalid_formula(f"cannot read the formula at {text[position : position + 20]!r}")
        position = found.end()
        yield found.group(found.lastgroup or "op")


class _Parser:
    """Recursive descent over the tokens, evaluating as it goes."""

    def __init__(self, tokens: list[str], variables: dict[str, Value], samples: Samples) -> None:
        self.tokens = tokens
        self.at = 0
        self.variables = variables
        self.samples = samples

    def peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise invalid_formula(f"expected {expected or 'more'} at token {self.at + 1}")
        self.at += 1
        return token

    def statements(self) -> Iterator[tuple[str, Value]]:
        while self.peek() is not None:
            if self.peek() == ";":
                self.take()
                continue
            name = self.take()
            if not re.fullmatch(r"\$?[A-Za-z_]\w*", name):
                raise invalid_formula(f"a statement must assign a variable, not {name!r}")
            if name in METRICS or name.startswith("$Current"):
                raise invalid_formula(f"{name} is read-only")
            self.take("=")
            value = self.expression()
            if name == "$NodeDeallocationOption" and value not in DEALLOCATION:
                raise invalid_formula(f"$NodeDeallocationOption must be one of {DEALLOCATION}")
            yield name, value
            if self.peek() is not None:
                self.take(";")

    def expression(self) -> Value:
        condition = self.binary(0)
        if self.peek() != "?":
            return condition
        self.take("?")
        yes = self.expression()
        self.take(":")
        no = self.expression()
        return yes if _number(condition) else no

    _LEVELS: Final = (("||",), ("&&",), ("<", ">", "<=", ">=", "==", "!="), ("+", "-"), ("*", "/"))

    def binary(self, level: int) -> Value:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek() in self._LEVELS[level]:
            operator = self.take()
            left = _apply(operator, left, self.binary(level + 1))
        return left

    def unary(self) -> Value:
        if self.peek() == "-":
            self.take()
            return _apply("*", -1.0, self.unary())
        if self.peek() == "!":
            self.take()
            return 0.0 if _number(self.unary()) else 1.0
        return self.postfix()

    def postfix(self) -> Value:
        token = self.take()
        if token == "(":
            value = self.expression()
            self.take(")")
            return value
        if re.fullmatch(r"\d+(\.\d*)?|\.\d+", token):
            return float(token)
        if token in METRICS and self.peek() == ".":
            self.take(".")
            method = self.take()
            (argument,) = self.arguments()
            return self.sampled(token, method, argument)
        if self.peek() == "(":
            return self.function(token, self.arguments())
        return self.variable(token)

    def arguments(self) -> list[Value]:
        self.take("(")
        values = [self.expression()]
        while self.peek() == ",":
            self.take(",")
            values.append(self.expression())
        self.take(")")
        return values

    def variable(self, name: str) -> Value:
        if name in INTERVALS:
            return Interval(INTERVALS[name])
        if name in self.variables:
            return self.variables[name]
        if name in DEALLOCATION:
            return name
        if name in METRICS:
            raise invalid_formula(f"{name} is a sampled metric: use {name}.GetSample(...)")
        raise invalid_formula(f"unknown or unsupported variable {name}")

    def function(self, name: str, arguments: list[Value]) -> Value:
        reducers: dict[str, Callable[[list[float]], float]] = {
            "min": min,
            "max": max,
            "sum": sum,
            "avg": lambda values: sum(values) / len(values),
        }
        if name not in reducers:
            raise invalid_formula(f"unsupported function {name}")
        flat: list[float] = []
        for argument in arguments:
            flat += argument if isinstance(argument, list) else [_number(argument)]
        if not flat:
            raise invalid_formula(f"{name} of no values")
        return float(reducers[name](flat))

    def sampled(self, metric: str, method: str, argument: Value) -> Value:
        taken = list(self.samples.taken)
        if method == "GetSample":
            if isinstance(argument, Interval):
                since = time.monotonic() - argument.seconds
                return [values[metric] for moment, values in taken if moment >= since]
            count = int(_number(argument))
            return [values[metric] for _, values in taken[-count:]] if count > 0 else []
        if method == "GetSamplePercent":
            if not isinstance(argument, Interval):
                raise invalid_formula("GetSamplePercent takes a time interval")
            since = time.monotonic() - argument.seconds
            expected = max(1.0, argument.seconds / SAMPLE_PERIOD_S)
            present = sum(1 for moment, _ in taken if moment >= since)
            return min(100.0, 100.0 * present / expected)
        raise invalid_formula(f"unsupported method {metric}.{method}")


def _number(value: Value) -> float:
    if isinstance(value, float):
        return value
    raise invalid_formula(f"a number was expected, not {_text(value)}")


def _apply(operator: str, left: Value, right: Value) -> Value:
    if operator == "*" and isinstance(right, Interval):
        left, right = right, left
    if isinstance(left, Interval) and operator in "*/":
        factor = _number(right)
        return Interval(left.seconds * factor if operator == "*" else left.seconds / factor)
    a, b = _number(left), _number(right)
    if operator == "/" and b == 0:
        raise invalid_formula("division by zero")
    results: dict[str, Callable[[float, float], float]] = {
        "+": lambda x, y: x + y,
        "-": lambda x, y: x - y,
        "*": lambda x, y: x * y,
        "/": lambda x, y: x / y,
        "<": lambda x, y: float(x < y),
        ">": lambda x, y: float(x > y),
        "<=": lambda x, y: float(x <= y),
        ">=": lambda x, y: float(x >= y),
        "==": lambda x, y: float(x == y),
        "!=": lambda x, y: float(x != y),
        "&&": lambda x, y: float(bool(x) and bool(y)),
        "||": lambda x, y: float(bool(x) or bool(y)),
    }
    return results[operator](a, b)
