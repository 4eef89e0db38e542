"""diff.jsonl and diff.html: the drift table, most drifted first, with old and new maps side by side."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from igcli.results.atomic_files import write_bytes_atomic
from igcli.results.diff import Run
from igcli.results.heatmap import render_bare, signed_map
from igcli.results.png import png_bytes

MAX_PICTURES = 200  # rows with pictures, the most drifted first


def write_diff(rows: list[dict[str, Any]], old: Run, new: Run, out_dir: Path, breaches: list[str]) -> None:
    """Write ``out_dir``/diff.jsonl, diff.html and the pictures it shows (pictures/N.old.png, N.new.png)."""
    # ASCII escapes: a row stays one line for every reader, whatever characters its input's name holds.
    lines = "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows)
    write_bytes_atomic(out_dir / "diff.jsonl", lines.encode("utf-8"))
    table = [_row(number, row, old, new, out_dir) for number, row in enumerate(rows, start=1)]
    verdict = "".join(f"<li>{html.escape(line)}</li>" for line in breaches) or "<li>within every threshold</li>"
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>igcli diff</title><style>"
            "body{font-family:system-ui,sans-serif;margin:1.5rem}td,th{border-bottom:1px solid #ddd;padding:.3rem .5rem;"
            "text-align:left;vertical-align:top}img{image-rendering:pixelated;width:96px}</style></head><body>"
            f"<h1>igcli diff</h1><p>old: {html.escape(str(old.folder))}<br>new: {html.escape(str(new.folder))}</p>"
            f"<ul>{verdict}</ul><table><tr><th>#</th><th>input</th><th>target old → new</th><th>F(x) old → new</th>"
            "<th>rank corr</th><th>top overlap</th><th>completeness change</th><th>old</th><th>new</th></tr>"
            + "".join(table) + "</table></body></html>\n")
    write_bytes_atomic(out_dir / "diff.html", page.encode("utf-8"))


def _row(number: int, row: dict[str, Any], old: Run, new: Run, out_dir: Path) -> str:
    name = html.escape(row["relpath"])
    if row["match"] != "both":
        return f"<tr><td>{number}</td><td>{name}</td><td colspan=7>{html.escape(row['match'])}</td></tr>"
    target, f = row["target"], row["f_input"]
    pictures = ["", ""]
    if "top_tokens" in row:
        pictures = [html.escape(" ".join(row["top_tokens"][side])) for side in ("old", "new")]
    elif number <= MAX_PICTURES and row["maps"]["old"] and row["maps"]["new"]:
        for side, (run, key) in enumerate(((old, "old"), (new, "new"))):
            values = np.load(run.folder / row["maps"][key], allow_pickle=False)
            picture = render_bare(signed_map(values if values.ndim == 3 else values[None], "all", 99.0))
            relative = f"pictures/{number}.{key}.png"
            write_bytes_atomic(out_dir / relative, png_bytes(np.asarray(picture)))
            pictures[side] = f'<img src="{relative}" alt="{key} map">'
    cells = [str(number), name, f"{target['old']} → {target['new']}", f"{f['old']:.4g} → {f['new']:.4g}",
             _fmt(row["rank_corr"]), _fmt(row["top_overlap"]), _fmt(row["completeness_change"])] + pictures
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"
