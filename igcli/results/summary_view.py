"""report.html's summary section, from summary.json (results/summary.py); empty without one."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any


def summary_section(out_dir: Path) -> str:
    try:
        summary = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    parts = ["<h2>Summary</h2>"]
    if summary.get("maps_missing"):
        parts.append(f"<p>{summary['maps_missing']} image record(s) without a saved map: per-class means need "
                     "output.attributions: npy.</p>")
    parts.append("<table><tr><th>class</th><th>records</th><th>mean map</th><th>mean |attr| per channel</th>"
                  "<th>top tokens (mean, count)</th></tr>")
    for index, entry in summary["classes"].items():
        mean_map = entry.get("mean_map")
        picture = f'<img src="{html.escape(mean_map["png"])}" alt="mean map">' if mean_map else ""
        channels = ", ".join(f"{value:.3g}" for value in entry.get("mean_abs_per_channel", []))
        tokens = ", ".join(f"{html.escape(t['text'])} ({t['mean']:.3g}, {t['count']})"
                           for t in entry.get("top_tokens", []))
        label = html.escape(f"{index} {entry['label'] or ''}")
        parts.append(f"<tr><td>{label}</td><td>{entry['records']}</td><td>{picture}</td><td>{channels}</td>"
                     f"<td>{tokens}</td></tr>")
    parts.append("</table><h3>Weakest records</h3><ul>")
    for name, rows in summary["worst"].items():
        listed = ", ".join(f"{html.escape(r['relpath'])} ({r['value']:.3g})" for r in rows)
        parts.append(f"<li>{html.escape(name)}: {listed or 'none'}</li>")
    parts.append("</ul><h3>Distributions</h3><ul>")
    for name, found in summary["distributions"].items():
        if found:
            parts.append(f"<li>{html.escape(name)}: {_describe(found)}</li>")
    parts.append("</ul>")
    return "\n".join(parts) + "\n"


def _describe(found: dict[str, Any]) -> str:
    q = found["quantiles"]
    bars = " ".join(str(count) for count in found["histogram"]["counts"])
    return (f"n={found['count']}, median {q['median']:.3g} (p10 {q['p10']:.3g}, p90 {q['p90']:.3g}, "
            f"min {q['min']:.3g}, max {q['max']:.3g}); histogram counts {bars}")
