"""The metric names a PromQL expression reads, with the function each is read through.

A small tokenizer, enough for dashboards and alert rules: strings, label matchers
(``{...}``), range and subquery selectors (``[...]``), the label lists of ``by``,
``without``, ``on``, ``ignoring``, ``group_left`` and ``group_right``, keywords,
numbers, durations and Grafana variables (``$job``, ``${datasource}``) are not names;
an identifier followed by ``(`` is a function. Everything else is a metric name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<variable>\$\{[^}]*\}|\$[A-Za-z_]\w*)
    | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
    | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<punct>[(){}\[\],])
    | (?P<operator>[-+*/%^=!<>~]+)
    | (?P<space>\s+)
    """,
    re.VERBOSE,
)
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"})
AGGREGATIONS = frozenset(
    {"sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk"}
    | {"quantile", "count_values", "limitk", "limit_ratio"}
)


@dataclass(frozen=True)
class MetricUse:
    """One metric name in an expression: the function around it, the labels it matches on."""

    name: str
    function: str  # the innermost enclosing call, "" at the top or inside plain parentheses
    labels: frozenset[str]


def _tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) of every token but whitespace; ValueError on a character PromQL lacks."""
    out = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot read {expr[position:]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, match.group()))
        position = match.end()
    return out


def metric_uses(expr: str) -> list[MetricUse]:
    """Every metric name ``expr`` reads, in order."""
    tokens = _tokens(expr)
    uses: list[MetricUse] = []
    calls: list[str] = []  # one entry per open parenthesis
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "punct" and text == "[":
            i = tokens.index(("punct", "]"), i) + 1
        elif kind == "punct" and text == "{":  # a selector without a name: {__name__=...}
            i = tokens.index(("punct", "}"), i) + 1
        elif kind == "punct" and text == "(":
            calls.append("")
            i += 1
        elif kind == "punct" and text == ")":
            calls.pop()
            i += 1
        elif kind == "name" and text in LABEL_LISTS:
            if following == "(":
                i = tokens.index(("punct", ")"), i) + 1
            else:
                i += 1
        elif kind == "name" and text in AGGREGATIONS and following in ("by", "without"):
            # sum by (l) (expr): the label list comes before the call's parenthesis.
            end = tokens.index(("punct", ")"), i)
            calls.append(text)
            i = end + 2
        elif kind == "name" and following == "(":
            calls.append(text)
            i += 2
        elif kind == "name" and text.lower() not in KEYWORDS:
            labels: set[str] = set()
            i += 1
            if following == "{":
                end = tokens.index(("punct", "}"), i)
                labels = {t for k, t in tokens[i + 1 : end] if k == "name"}
                i = end + 1
            uses.append(MetricUse(text, calls[-1] if calls else "", frozenset(labels)))
        else:
            i += 1
    if calls:
        raise ValueError(f"unbalanced parentheses in {expr!r}")
    return uses
