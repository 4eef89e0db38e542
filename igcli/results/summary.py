"""summary.json: what a run's model looked at, class by class, and where its records are weakest.

Built as records are written (explain) or from results.jsonl and the saved .npy maps (``igcli
summary``): the same numbers either way. Per-class mean maps go to ``summary/class_<index>.npy``
and ``.png`` (file names by class index: labels may hold any characters).
"""
from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from igcli.results.atomic_files import write_bytes_atomic
from igcli.results.distributions import distribution
from igcli.results.heatmap import render_bare, signed_map
from igcli.results.png import png_bytes
from igcli.results.report import read_records

log = logging.getLogger("igcli")
WORST = 5  # inputs listed per weakness
CLASS_MAP = re.compile(r"class_\d+\.(npy|png)")
TOP_TOKENS = 10  # tokens and words listed per class
# Per metric, whether a larger value is worse (deletion: the score stays up as evidence goes).
WORSE_WHEN_LARGER = {"deletion": True, "insertion": False, "infidelity": True, "sensitivity": True}


@dataclass
class _ClassTotals:
    label: str | None
    records: int = 0
    map_sum: np.ndarray | None = None  # float64, while every map of the class has one shape
    map_count: int = 0
    mixed_shapes: bool = False
    channel_sum: np.ndarray | None = None  # mean |attr| per channel, summed over maps
    tokens: dict[str, list[float]] = field(default_factory=dict)  # token -> [score sum, count]
    words: dict[str, list[float]] = field(default_factory=dict)


class SummaryBuilder:
    """Accumulates records (and their maps where given) into summary.json."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.classes: dict[int, _ClassTotals] = {}
        self.rows: list[dict[str, Any]] = []  # per record: the few numbers the weakest lists need
        self.failed = 0
        self.maps_missing = 0

    def add(self, record: dict[str, Any], attributions: np.ndarray | None = None) -> None:
        """Count one record; ``attributions`` its map, else read from its saved .npy if any."""
        if record.get("error") is not None:
            self.failed += 1
            return
        target = record["target"]
        totals = self.classes.setdefault(target["index"], _ClassTotals(target.get("label")))
        totals.records += 1
        self.rows.append({"relpath": record["relpath"], "target": target["index"], "f_input": record["f_input"],
                          "rel_error": record["completeness"]["rel_error"], "metrics": record.get("metrics") or {}})
        if "tokens" in record:
            _add_text(totals, record)
            return
        if attributions is None:
            attributions = self._saved_map(record)
        if attributions is None:
            self.maps_missing += 1
            return
        _add_map(totals, attributions.astype(np.float64))

    def _saved_map(self, record: dict[str, Any]) -> np.ndarray | None:
        relative = (record.get("outputs") or {}).get("attributions")
        if relative is None:
            return None
        try:
            return np.load(self.out_dir / relative, allow_pickle=False)
        except (OSError, ValueError) as error:
            log.warning("%s: cannot read for the summary (%s)", self.out_dir / relative, error)
            return None

    def to_json(self) -> dict[str, Any]:
        classes = {}
        for index in sorted(self.classes):
            totals = self.classes[index]
            entry: dict[str, Any] = {"label": totals.label, "records": totals.records}
            if totals.channel_sum is not None:
                entry["mean_abs_per_channel"] = (totals.channel_sum / totals.map_count).tolist()
                entry["mean_map"] = None if totals.mixed_shapes else {
                    "npy": f"summary/class_{index}.npy", "png": f"summary/class_{index}.png",
                    "shape": list(totals.map_sum.shape), "maps": totals.map_count}
            if totals.tokens:
                entry["top_tokens"] = _top(totals.tokens)
                entry["top_words"] = _top(totals.words)
            classes[str(index)] = entry
        metric_names = sorted({name for row in self.rows for name in row["metrics"]})
        return {
            "records": len(self.rows), "failed": self.failed,
            "maps_missing": self.maps_missing,  # image records without a map here: save them with output.attributions npy
            "classes": classes,
            "worst": {"completeness": _worst(self.rows, lambda r: r["rel_error"], True)}
            | {name: _worst(self.rows, lambda r, n=name: r["metrics"].get(n), WORSE_WHEN_LARGER.get(name, True))
               for name in metric_names},
            "distributions": {"f_input": distribution([r["f_input"] for r in self.rows]),
                              "rel_error": distribution([r["rel_error"] for r in self.rows], log=True)}
            | {name: distribution([r["metrics"].get(name) for r in self.rows]) for name in metric_names},
        }

    def write(self, prune: bool = False) -> Path:
        """Write summary.json and the mean maps; returns summary.json's path. ``prune``: also remove
        the mean maps of classes summary.json does not list (an earlier run's)."""
        summary = self.to_json()
        written = set()
        for index, totals in self.classes.items():
            if totals.map_sum is None or totals.mixed_shapes:
                continue
            written |= {f"class_{index}.npy", f"class_{index}.png"}
            mean = totals.map_sum / totals.map_count
            buffer = io.BytesIO()
            np.save(buffer, mean)
            write_bytes_atomic(self.out_dir / f"summary/class_{index}.npy", buffer.getvalue())
            picture = render_bare(signed_map(mean.astype(np.float32), "all", 99.0))
            write_bytes_atomic(self.out_dir / f"summary/class_{index}.png", png_bytes(np.asarray(picture)))
        path = self.out_dir / "summary.json"
        write_bytes_atomic(path, (json.dumps(summary, indent=2, allow_nan=False) + "\n").encode())
        if prune:
            _remove_other_class_maps(self.out_dir / "summary", written)
        return path


def _remove_other_class_maps(folder: Path, written: set[str]) -> None:
    """An earlier run's mean maps of classes this summary does not list: summary.json no longer names them."""
    for path in folder.glob("class_*.*") if folder.is_dir() and not folder.is_symlink() else ():
        if path.name not in written and CLASS_MAP.fullmatch(path.name) and not path.is_symlink():
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                log.warning("%s: cannot remove an earlier run's mean map (%s)", path, error.strerror or error)


def rebuild_summary(out_dir: Path) -> Path:
    """summary.json (and the mean maps) from ``out_dir``'s results.jsonl and saved maps."""
    builder, unusable = SummaryBuilder(out_dir), 0
    for record in read_records(out_dir / "results.jsonl"):
        # A run's own records are whole; a file may hold lines edited by hand or written by another tool.
        if record.get("error") is None and not _usable(record):
            unusable += 1
            continue
        builder.add(record)
    if unusable:
        log.warning("%d records in results.jsonl lack fields summary needs; skipped", unusable)
    return builder.write()


def _usable(record: dict[str, Any]) -> bool:
    """Whether a record that did not fail holds what add() reads, with the types it needs: igcli's
    own records do; a line edited by hand or written by another tool may not."""
    target, completeness, metrics = record.get("target"), record.get("completeness"), record.get("metrics")
    if not (isinstance(target, dict) and _is_int(target.get("index")) and isinstance(completeness, dict)
            and isinstance(record.get("relpath"), str) and _is_number(record.get("f_input"))
            and _is_number(completeness.get("rel_error"), or_none=True)):
        return False
    if metrics is not None and not (isinstance(metrics, dict) and all(_is_number(v, or_none=True)
                                                                      for v in metrics.values())):
        return False
    return all(isinstance(entries, list) and all(isinstance(e, dict) and {"special", key} <= e.keys()
                                                 and _is_number(e.get("score")) for e in entries)
               for entries, key in ((record.get("tokens", []), "token"), (record.get("words", []), "word")))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any, or_none: bool = False) -> bool:
    return (value is None and or_none) or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _add_map(totals: _ClassTotals, attributions: np.ndarray) -> None:
    channels = np.abs(attributions).reshape(attributions.shape[0], -1).mean(1)
    totals.channel_sum = channels if totals.channel_sum is None else totals.channel_sum + channels
    totals.map_count += 1
    if totals.map_sum is None:
        totals.map_sum = attributions.copy()
    elif totals.map_sum.shape != attributions.shape:
        totals.mixed_shapes = True
    elif not totals.mixed_shapes:
        totals.map_sum += attributions


def _add_text(totals: _ClassTotals, record: dict[str, Any]) -> None:
    for token in record["tokens"]:
        if not token["special"]:
            entry = totals.tokens.setdefault(token["token"], [0.0, 0])
            entry[0] += token["score"]
            entry[1] += 1
    for word in record.get("words", ()):
        if not word["special"]:
            entry = totals.words.setdefault(word["word"], [0.0, 0])
            entry[0] += word["score"]
            entry[1] += 1


def _top(scores: dict[str, list[float]]) -> list[dict[str, Any]]:
    """The highest mean attributions, ties by count then name."""
    ranked = sorted(scores.items(), key=lambda item: (-item[1][0] / item[1][1], -item[1][1], item[0]))
    return [{"text": text, "mean": total / count, "count": int(count)} for text, (total, count) in ranked[:TOP_TOKENS]]


def _worst(rows: list[dict[str, Any]], value, larger_is_worse: bool) -> list[dict[str, Any]]:
    scored = [(value(row), row) for row in rows if value(row) is not None]
    scored.sort(key=lambda item: -item[0] if larger_is_worse else item[0])
    return [{"relpath": row["relpath"], "target": row["target"], "value": v} for v, row in scored[:WORST]]
