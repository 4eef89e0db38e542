"""``--fail-on`` expressions: ``NAME OP NUMBER`` holds for some matched input, or
``mean(NAME) OP NUMBER`` (also min, max) over them; ``unmatched OP NUMBER`` counts records in one
run only. A rule that holds is a breach: ``igcli diff`` exits 1 (docs/nightly.md). So is a rule that no
matched input can be checked against (none matched, or NAME is null for every pair): a check that
did not run must not pass."""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Callable

from igcli.errors import UsageError

NAMES = ("rank_corr", "top_overlap", "score_change", "completeness_change", "prediction_changed", "drift")
METRIC_CHANGES = ("deletion_change", "insertion_change", "infidelity_change", "sensitivity_change")
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq, "!=": operator.ne}
AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda values: sum(values) / len(values), "min": min, "max": max}
_RULE = re.compile(r"^\s*(?:(?P<agg>[a-z]+)\(\s*(?P<inner>[a-z_]+)\s*\)|(?P<name>[a-z_]+))\s*"
                   r"(?P<op><=|>=|==|!=|<|>)\s*(?P<value>[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Rule:
    text: str
    name: str
    aggregate: str | None
    compare: Callable[[float, float], bool]
    value: float

    def breaches(self, rows: list[dict[str, Any]]) -> str | None:
        """One line saying how the rule was breached, or None."""
        matched = [row for row in rows if row.get("match") == "both"]
        if self.name == "unmatched":
            count = len(rows) - len(matched)
            return f"{self.text}: {count} record(s) in one run only" if self.compare(count, self.value) else None
        values = [(row[self.name], row["relpath"]) for row in matched
                  if isinstance(row.get(self.name), (int, float)) and math.isfinite(row[self.name])]
        if not values:
            return f"{self.text}: no value to check ({len(matched)} matched input(s), {self.name} missing for all)"
        if self.aggregate is not None:
            total = AGGREGATES[self.aggregate]([v for v, _ in values])
            return f"{self.text}: {self.aggregate}({self.name}) = {total:.4g}" if self.compare(total, self.value) else None
        hits = [(v, relpath) for v, relpath in values if self.compare(v, self.value)]
        if not hits:
            return None
        worst = hits[0][1]  # rows come sorted by drift
        return f"{self.text}: {len(hits)} of {len(values)} inputs (first: {worst}, {hits[0][0]:.4g})"


def parse_rule(text: str) -> Rule:
    """A Rule, or UsageError naming the expression and what it may hold."""
    found = _RULE.match(text)
    names = NAMES + METRIC_CHANGES
    if found is None:
        raise UsageError(f"--fail-on '{text}': expected NAME OP NUMBER or mean|min|max(NAME) OP NUMBER, "
                         f"e.g. 'rank_corr<0.7'")
    aggregate, name = found["agg"], found["inner"] or found["name"]
    if aggregate is not None and aggregate not in AGGREGATES:
        raise UsageError(f"--fail-on '{text}': unknown aggregate '{aggregate}'; use mean, min or max")
    if name not in names + ("unmatched",) or name == "unmatched" and aggregate is not None:
        raise UsageError(f"--fail-on '{text}': unknown name '{name}'; use one of {', '.join(names)} "
                         "(or unmatched, alone)")
    return Rule(text.strip(), name, aggregate, OPERATORS[found["op"]], float(found["value"]))
