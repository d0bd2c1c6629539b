"""Helpers over the Grafana dashboards in dashboards/*.json, for the unit tests and the integration tests
that evaluate every panel's query through a real Prometheus.

A panel may carry a marker of ours at panel level, which Grafana keeps on import and ignores:

    "libvirt_exporter": {"empty_when_healthy": true}   shows only trouble ("Stuck calls", stale flags,
                                                       timeouts filtered with `> 0`): empty when all is well
    "libvirt_exporter": {"guest_reported": true}       figures that the guest reports (its balloon driver, its
                                                       agent with --collector.guest); empty for a guest
                                                       without them (such as the tiny test VMs)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "dashboards"

MARKER = "libvirt_exporter"

KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
)
LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
RANGE_FUNCTIONS = ("rate", "irate", "increase")

RATE_INTERVAL = "$__rate_interval"
SUBSTITUTIONS = {
    "job": ".*",
    "instance": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
}
"""What substitute() puts in for each variable; `domain` is the name given to it, regex-escaped."""

_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<variable>\$\{\w+(?::\w+)?\}|\$\w+)
    | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<punct>[{}(),])
    | (?P<other>\S)
    """,
    re.VERBOSE,
)
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\')')
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
_REGEX_SPECIAL = re.compile(r"[\\^$.|?*+()\[\]{}]")

Matcher = tuple[str, str, str]
"""(label, operator, quoted value) as written, such as ('job', '=~', '"$job"')."""


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboards/*.json, parsed, by file name."""
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's panels in order, rows flattened: a row's nested panels (a collapsed row keeps its
    panels inside it) take its place, and row panels themselves are left out."""
    flat: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            flat.extend(panels({"panels": panel.get("panels", [])}))
        else:
            flat.append(panel)
    return flat


def markers(panel: dict[str, Any]) -> dict[str, Any]:
    """The panel's `libvirt_exporter` marker object, {} without one."""
    marker = panel.get(MARKER, {})
    return marker if isinstance(marker, dict) else {}


def may_be_empty(panel: dict[str, Any]) -> bool:
    """Whether a healthy test host may show this panel empty: it shows only trouble
    (`empty_when_healthy`), or figures a guest without a balloon driver does not report
    (`guest_reported`)."""
    marker = markers(panel)
    return bool(marker.get("empty_when_healthy") or marker.get("guest_reported"))


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(panel title, expr, empty_when_healthy) for every target of every panel.

    The flag is may_be_empty(panel): True for panels marked `empty_when_healthy`, and also for those
    marked `guest_reported`, whose figures the test VMs (no guest OS) never have. Use markers() to tell
    the two apart."""
    return [
        (panel.get("title", ""), target["expr"], may_be_empty(panel))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def promql_regex_literal(value: str) -> str:
    """`value` as a regex that matches it alone, escaped to go inside a double-quoted PromQL string."""
    regex = _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)
    return regex.replace("\\", "\\\\").replace('"', '\\"')


def substitute(expr: str, domain: str) -> str:
    """`expr` with Grafana's variables replaced as a real Prometheus can evaluate it: `$job` and
    `$instance` (or `${job}`, `${instance}`) by `.*`, `$domain` by `domain` regex-escaped,
    `$__rate_interval` by 1m, `$__interval` by 15s, `$__range` by 5m. Any other variable is an error."""
    values = {**SUBSTITUTIONS, "domain": promql_regex_literal(domain)}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"unknown variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)


def _tokens(expr: str) -> list[tuple[str, str, int, int]]:
    """(kind, text, start, end) of each token; whitespace dropped."""
    return [
        (match.lastgroup or "other", match.group(), match.start(), match.end())
        for match in _TOKEN.finditer(expr)
    ]


def _closing(tokens: list[tuple[str, str, int, int]], index: int) -> int:
    """Index of the token that closes the bracket at `index` ( `(` or `{` )."""
    opening = tokens[index][1]
    closing = ")" if opening == "(" else "}"
    depth = 0
    for position in range(index, len(tokens)):
        text = tokens[position][1]
        if tokens[position][0] != "punct":
            continue
        if text == opening:
            depth += 1
        elif text == closing:
            depth -= 1
            if depth == 0:
                return position
    raise ValueError(f"unbalanced {opening!r}")


def selectors(expr: str) -> list[tuple[str, list[Matcher]]]:
    """Every vector selector of `expr`: the metric name and its label matchers.

    A tokenizer, not a parser, but enough for the dashboards' queries: a metric name is an identifier
    followed by `{`, or a bare identifier that starts with `libvirt_` or is `up`; identifiers followed by
    `(` are functions or aggregations, keywords are skipped, and so are label names inside `{}` and in
    the label lists of by/without/on/ignoring/group_left/group_right."""
    tokens = _tokens(expr)
    found: list[tuple[str, list[Matcher]]] = []
    index = 0
    while index < len(tokens):
        kind, text, _, _ = tokens[index]
        following = tokens[index + 1][1] if index + 1 < len(tokens) else ""
        if kind != "ident":
            index += 1
        elif text in LABEL_LIST_KEYWORDS and following == "(":
            index = _closing(tokens, index + 1) + 1
        elif text in KEYWORDS or following == "(":
            index += 1
        elif following == "{":
            close = _closing(tokens, index + 1)
            body = expr[tokens[index + 1][3] : tokens[close][2]]
            found.append((text, [(m[1], m[2], m[3]) for m in _MATCHER.finditer(body)]))
            index = close + 1
        else:
            if text.startswith("libvirt_") or text == "up":
                found.append((text, []))
            index += 1
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` references (see selectors())."""
    return {name for name, _ in selectors(expr)}


def range_function_calls(expr: str) -> list[tuple[str, str]]:
    """(function, argument text) of every rate(, irate( and increase( call in `expr`."""
    tokens = _tokens(expr)
    calls = []
    for index, (kind, text, _, _) in enumerate(tokens[:-1]):
        if kind == "ident" and text in RANGE_FUNCTIONS and tokens[index + 1][1] == "(":
            close = _closing(tokens, index + 1)
            calls.append((text, expr[tokens[index + 1][3] : tokens[close][2]]))
    return calls


def ranges(expr: str) -> list[str]:
    """The text inside every `[...]` range of `expr`, outside strings."""
    return [text[1:-1].strip() for kind, text, _, _ in _tokens(expr) if kind == "range"]


def variables_used(expr: str) -> set[str]:
    """Names of the Grafana variables `expr` uses (`$x` or `${x}`), outside strings too."""
    return {match.group(1) or match.group(2) for match in _VARIABLE.finditer(expr)}


def walk(node: Any, key: str | None = None) -> list[tuple[str | None, Any]]:
    """(key, value) of every value in a JSON tree, depth first; list items carry their list's key."""
    found: list[tuple[str | None, Any]] = [(key, node)]
    if isinstance(node, dict):
        for child_key, child in node.items():
            found.extend(walk(child, child_key))
    elif isinstance(node, list):
        for child in node:
            found.extend(walk(child, key))
    return found
