"""Drift between two runs: records matched by input and target, and per pair how far the map and
the prediction moved (docs/nightly.md).

Per matched pair: the prediction (target index and F(x)) before and after, the Spearman rank
correlation of the two maps (pixels summed over channels; tokens from the records), the IoU of their
top ``top_percent`` units, and the change of completeness error and of every metric both hold.
Image maps come from the runs' saved .npy files (output.attributions: npy); text maps from the records.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from igcli.errors import UsageError
from igcli.results.jsonl import run_results
from igcli.results.report import read_records

SAVE_MAPS = "explain with --set output.attributions=npy to save them"


@dataclass
class Run:
    folder: Path
    records: list[dict[str, Any]]  # the attributed records (failed inputs left out)

    def unit_map(self, record: dict[str, Any]) -> np.ndarray | None:
        """The record's map per unit, float64: pixels summed over channels, or token scores."""
        if "tokens" in record:
            return np.array([token["score"] for token in record["tokens"]], dtype=np.float64)
        relative = (record.get("outputs") or {}).get("attributions")
        if relative is None:
            return None
        values = np.load(self.folder / relative, allow_pickle=False).astype(np.float64)
        return values.sum(0) if values.ndim == 3 else values


def load_run(folder: Path) -> Run:
    """A finished run's records; UsageError when ``folder`` holds none, or image maps were not saved."""
    records = [record for record in read_records(run_results(folder)) if record.get("error") is None]
    images = [record for record in records if "tokens" not in record]
    if any("attributions" not in (record.get("outputs") or {}) for record in images):
        raise UsageError(f"{folder}: the run did not save its attribution maps (.npy), which diff compares; "
                         f"{SAVE_MAPS}")
    return Run(folder, records)


def match(old: Run, new: Run) -> tuple[list[tuple[dict, dict]], list[dict], list[dict]]:
    """(pairs, only in old, only in new). Records pair by relpath and target: by rank for top-k,
    else the one record of each input (a changed prediction still pairs), else by target index."""
    def grouped(run: Run) -> dict[str, list[dict]]:
        groups: dict[str, list[dict]] = {}
        for record in run.records:
            groups.setdefault(record["relpath"], []).append(record)
        return groups

    before, after = grouped(old), grouped(new)
    pairs, only_old = [], []
    for relpath, olds in before.items():
        news = after.pop(relpath, [])
        if len(olds) == 1 and len(news) == 1:
            pairs.append((olds[0], news[0]))
            continue
        keyed = {_target_key(record): record for record in news}
        for record in olds:
            partner = keyed.pop(_target_key(record), None)
            if partner is None:
                only_old.append(record)
            else:
                pairs.append((record, partner))
        after[relpath] = list(keyed.values())
    only_new = [record for records in after.values() for record in records]
    return pairs, only_old, only_new


def _target_key(record: dict[str, Any]) -> tuple[str, int]:
    target = record["target"]
    return ("rank", target["rank"]) if target["rank"] is not None else ("index", target["index"])


def compare(old: Run, new: Run, top_percent: float = 10.0) -> list[dict[str, Any]]:
    """One row per pair (sorted by drift, largest first), then the unmatched records."""
    pairs, only_old, only_new = match(old, new)
    rows = [_pair_row(old, new, a, b, top_percent) for a, b in pairs]
    rows.sort(key=lambda row: (-row["drift"], row["relpath"]))
    rows += [{"relpath": r["relpath"], "target": r["target"]["index"], "match": "old only"} for r in only_old]
    rows += [{"relpath": r["relpath"], "target": r["target"]["index"], "match": "new only"} for r in only_new]
    return rows


def _pair_row(old: Run, new: Run, a: dict, b: dict, top_percent: float) -> dict[str, Any]:
    map_a, map_b = old.unit_map(a), new.unit_map(b)
    same_shape = map_a is not None and map_b is not None and map_a.shape == map_b.shape
    rank_corr = spearman(map_a.ravel(), map_b.ravel()) if same_shape else None
    overlap = top_overlap(map_a.ravel(), map_b.ravel(), top_percent) if same_shape else None
    metrics_a, metrics_b = a.get("metrics") or {}, b.get("metrics") or {}
    changes = {f"{name}_change": metrics_b[name] - metrics_a[name] for name in sorted(metrics_a)
               if _number(metrics_a.get(name)) and _number(metrics_b.get(name))}
    error_a, error_b = a["completeness"]["rel_error"], b["completeness"]["rel_error"]
    row = {
        "relpath": a["relpath"], "match": "both",
        "target": {"old": a["target"]["index"], "new": b["target"]["index"], "label_old": a["target"]["label"],
                   "label_new": b["target"]["label"], "rank": a["target"]["rank"]},
        "prediction_changed": int(a["target"]["index"] != b["target"]["index"]),
        "f_input": {"old": a["f_input"], "new": b["f_input"]},
        "score_change": b["f_input"] - a["f_input"],
        "rank_corr": rank_corr,
        "top_overlap": overlap,
        "top_percent": top_percent,
        "completeness_change": error_b - error_a if error_a is not None and error_b is not None else None,
        "shape": {"old": None if map_a is None else list(map_a.shape), "new": None if map_b is None else list(map_b.shape)},
        "maps": {"old": (a.get("outputs") or {}).get("attributions"), "new": (b.get("outputs") or {}).get("attributions")},
    } | changes
    if "top_tokens" in a and "top_tokens" in b:
        row["top_tokens"] = {"old": [t["token"] for t in a["top_tokens"]], "new": [t["token"] for t in b["top_tokens"]]}
    # Drift, for sorting: how far the map's order moved, plus a whole unit when the prediction changed.
    row["drift"] = (1.0 - rank_corr if rank_corr is not None else 2.0) + row["prediction_changed"]
    return row


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (as scipy.stats.rankdata's 'average')."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    group = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = ((starts + ends + 1) / 2)[group]
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation; None where a map is constant (no order to compare)."""
    ra, rb = average_ranks(a) - (len(a) + 1) / 2, average_ranks(b) - (len(b) + 1) / 2
    norm = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / norm if norm > 0 else None


def top_overlap(a: np.ndarray, b: np.ndarray, percent: float) -> float:
    """IoU of the two maps' top ``percent`` % units (at least one), highest attribution first."""
    count = max(1, round(len(a) * percent / 100))
    top_a = set(np.argsort(-a, kind="stable")[:count].tolist())
    top_b = set(np.argsort(-b, kind="stable")[:count].tolist())
    return len(top_a & top_b) / len(top_a | top_b)
