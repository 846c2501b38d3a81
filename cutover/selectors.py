"""Kubernetes label selectors: parsed from the text a plan or kubectl takes, built from a
workload's `spec.selector`, rendered for the API's `labelSelector` and matched.

The grammar is the API server's: requirements joined by commas, each `key`, `!key`,
`key=value` (or `==`), `key!=value`, `key in (a,b)` or `key notin (a,b)`. This module
imports nothing from cutover, so the plan validates a selector without any client.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

_NAME = r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_PREFIX = r"[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?"
_KEY = re.compile(rf"^(?:{_PREFIX}/)?{_NAME}$")
_VALUE = re.compile(rf"^(?:{_NAME})?$")
_TERM = re.compile(
    r"^\s*(?:(?P<absent>!)\s*(?P<akey>[^\s!=(),]+)"
    r"|(?P<skey>[^\s!=(),]+)\s*(?P<set>in|notin)\s*\((?P<values>[^()]*)\)"
    r"|(?P<ekey>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)"
    r"|(?P<key>[^\s!=(),]+))\s*$"
)


class Operator(StrEnum):
    """How a requirement tests a label."""

    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    DOES_NOT_EXIST = "!"


@dataclass(frozen=True)
class Requirement:
    """One term of a selector."""

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether labels satisfy this term (as the API server decides)."""
        value = labels.get(self.key)
        match self.operator:
            case Operator.EQUALS | Operator.IN:
                return value is not None and value in self.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                return value is None or value not in self.values
            case Operator.EXISTS:
                return value is not None
            case Operator.DOES_NOT_EXIST:
                return value is None

    def render(self) -> str:
        """The term as the API takes it."""
        match self.operator:
            case Operator.EQUALS | Operator.NOT_EQUALS:
                return f"{self.key}{self.operator.value}{self.values[0]}"
            case Operator.IN | Operator.NOT_IN:
                return f"{self.key} {self.operator.value} ({','.join(self.values)})"
            case Operator.EXISTS:
                return self.key
            case Operator.DOES_NOT_EXIST:
                return f"!{self.key}"


Selector = tuple[Requirement, ...]


def _split(text: str) -> list[str]:
    """Terms split at the commas outside parentheses."""
    terms, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0 or depth > 1:
            raise ValueError("unbalanced parentheses in the label selector")
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if depth:
        raise ValueError("unbalanced parentheses in the label selector")
    return [*terms, current]


def _key(key: str) -> str:
    if not _KEY.match(key):
        raise ValueError(f"not a label key: {key!r}")
    return key


def _values(values: Sequence[str]) -> tuple[str, ...]:
    for value in values:
        if not _VALUE.match(value):
            raise ValueError(f"not a label value: {value!r}")
    return tuple(values)


def parse_selector(text: str) -> Selector:
    """`app=shop,tier in (web,api),!canary` as requirements; raise ValueError if malformed."""
    if not text.strip():
        raise ValueError("an empty label selector selects everything: name what to select")
    requirements: list[Requirement] = []
    for term in _split(text):
        m = _TERM.match(term)
        if m is None:
            raise ValueError(f"not a label selector term: {term.strip()!r}")
        if m["absent"]:
            requirements.append(Requirement(_key(m["akey"]), Operator.DOES_NOT_EXIST))
        elif m["set"]:
            values = [v.strip() for v in m["values"].split(",")]
            if values == [""]:
                raise ValueError(f"{m['skey']} {m['set']} (): a set needs at least one value")
            requirements.append(
                Requirement(_key(m["skey"]), Operator(m["set"]), _values(sorted(set(values))))
            )
        elif m["op"]:
            operator = Operator.NOT_EQUALS if m["op"] == "!=" else Operator.EQUALS
            requirements.append(Requirement(_key(m["ekey"]), operator, _values([m["value"]])))
        else:
            requirements.append(Requirement(_key(m["key"]), Operator.EXISTS))
    return tuple(requirements)


def render_selector(selector: Selector) -> str:
    """The selector as the API's `labelSelector` parameter."""
    return ",".join(r.render() for r in selector)


_EXPRESSION_OPERATORS = {
    "In": Operator.IN,
    "NotIn": Operator.NOT_IN,
    "Exists": Operator.EXISTS,
    "DoesNotExist": Operator.DOES_NOT_EXIST,
}


def from_label_selector(
    match_labels: Mapping[str, str] | None,
    match_expressions: Sequence[tuple[str, str, Sequence[str] | None]] | None,
) -> Selector:
    """A workload's `spec.selector` (matchLabels; matchExpressions as key, operator, values)."""
    requirements = [
        Requirement(_key(k), Operator.EQUALS, _values([v]))
        for k, v in sorted((match_labels or {}).items())
    ]
    for key, operator, values in match_expressions or ():
        if operator not in _EXPRESSION_OPERATORS:
            raise ValueError(f"unknown selector operator {operator!r}")
        op = _EXPRESSION_OPERATORS[operator]
        wanted = _values(sorted(set(values or ()))) if op in (Operator.IN, Operator.NOT_IN) else ()
        requirements.append(Requirement(_key(key), op, wanted))
    if not requirements:
        raise ValueError("an empty selector selects every pod: the workload must have one")
    return tuple(requirements)


def matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    """Whether labels satisfy every term."""
    return all(r.matches(labels) for r in selector)
