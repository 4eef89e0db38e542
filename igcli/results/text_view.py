"""Token attributions shown as coloured text: HTML files, and ANSI for terminals (--show).

Red raised F for the target, blue lowered it, grey is neutral; strength is |score| over the
largest |score| among the document's non-special words. Everything printed is escaped.
"""
from __future__ import annotations

import html
from typing import Any

from igcli.names import terminal_safe

POSITIVE, NEGATIVE = (215, 25, 28), (44, 123, 182)
NEUTRAL_BELOW = 0.2  # words under this share of the largest |score| are drawn neutral in terminals


def _strengths(words: list[dict[str, Any]]) -> list[float]:
    scale = max((abs(w["score"]) for w in words if not w["special"]), default=0.0) or 1.0
    return [0.0 if w["special"] else w["score"] / scale for w in words]


def word_spans(words: list[dict[str, Any]]) -> str:
    """The words as escaped HTML spans, coloured by score; hover shows the score and word pieces."""
    spans = []
    for word, strength in zip(words, _strengths(words)):
        color = POSITIVE if strength >= 0 else NEGATIVE
        style = "color:#888" if word["special"] else f"background:rgba({color[0]},{color[1]},{color[2]},{abs(strength):.3f})"
        title = f"{word['score']:+.4g}" + (f" = {' + '.join(word['pieces'])}" if len(word["pieces"]) > 1 else "")
        spans.append(f'<span class="w" style="{style}" title="{html.escape(title)}">{html.escape(word["word"])}</span>')
    return " ".join(spans)


def render_html(record: dict[str, Any]) -> str:
    """One self-contained page for one text record."""
    target = record["target"]
    name = target["label"] if target["label"] is not None else f"class {target['index']}"
    completeness = record["completeness"]
    rel = completeness["rel_error"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(record['input'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;line-height:2}}
.w{{padding:.1rem .2rem;border-radius:.2rem;margin:0 .05rem}}.legend span{{padding:0 .4rem}}
small{{color:#555}}</style></head><body>
<h1>{html.escape(record['input'])}</h1>
<p>Target <b>{html.escape(str(name))}</b> &middot; {html.escape(record['score'])} F(x) = {record['f_input']:.4g},
F(baseline) = {record['f_baseline']:.4g} &middot; sum of attributions {record['attribution_sum']:.4g}
(completeness error {'n/a' if rel is None else f'{rel:.2%}'}) &middot; {record['steps']} steps</p>
<p>{word_spans(record['words'])}</p>
<p class="legend"><span style="background:rgba(215,25,28,.8)">raised F</span>
<span style="background:rgba(44,123,182,.8)">lowered F</span> <span style="color:#888">special token</span>
<small>colour strength: |score| / largest |score|; hover a word for its score and word pieces</small></p>
</body></html>
"""


def render_ansi(record: dict[str, Any], color: bool) -> str:
    """One line for a terminal: the label, then the words coloured (or scored, when plain). Names,
    labels and words have their control characters escaped: a file name cannot drive the terminal."""
    words = record["words"]
    parts = []
    for word, strength in zip(words, _strengths(words)):
        if word["special"]:
            continue
        text = terminal_safe(word["word"])
        if abs(strength) < NEUTRAL_BELOW:
            parts.append(text)
        elif color:
            r, g, b = POSITIVE if strength > 0 else NEGATIVE
            parts.append(f"\x1b[1;38;2;{r};{g};{b}m{text}\x1b[0m")
        else:
            parts.append(f"{text}[{word['score']:+.2g}]")
    target = record["target"]
    name = target["label"] if target["label"] is not None else target["index"]
    return f"{terminal_safe(record['input'])}: {terminal_safe(str(name))} ({record['f_input']:.2f}): {' '.join(parts)}"
