"""docs/methods.png and the table in docs/methods.md: the sample job under each method.

    python docs/make_methods_figure.py          # writes docs/methods.png, prints the table

Runs ``igcli explain`` on the sample digits once per method, puts one input's heatmaps side by
side (for XRAI, its top 10/20/30% regions over the input), and per method gives the mean gradient
evaluations per image, the largest relative completeness error and the deletion AUC (the target's
softmax as the most attributed pixels turn black, 5% at a time; lower: the map found the pixels
the model needs; for XRAI, pixels go region by region in rank order).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from igcli.attribution.layer import layer_map_to_input  # noqa: E402
from igcli.backends.loading import load_model  # noqa: E402

METHODS = {  # name: --set overrides
    "IG (straight)": [],
    "SmoothGrad-IG": ["smoothgrad={samples: 8, sigma: 0.1}"],
    "Blur IG": ["path=blur"],
    "Guided IG": ["path=guided"],
    "layer IG ('3')": ["layer=3"],
    "XRAI (over IG)": ["regions=xrai"],
}
SHOWN = "three_1442"
FRACTIONS = np.linspace(0, 1, 21)


def run(settings: list[str], out: Path) -> list[dict]:
    args = [sys.executable, "-m", "igcli", "explain", "-c", "configs/digits.yaml", "sample_data/images", "-o", str(out),
            "-q"]
    for setting in settings:
        args += ["--set", setting]
    subprocess.run(args, cwd=REPO, check=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def deletion_auc(runner, x: torch.Tensor, pixel_map: np.ndarray, target: int) -> float:
    """Mean softmax of the target as the most attributed pixels turn black, in FRACTIONS."""
    order = np.argsort(-pixel_map.ravel(), kind="stable")
    batch = x.repeat(len(FRACTIONS), 1, 1, 1)
    for row, fraction in enumerate(FRACTIONS):
        gone = order[: int(round(fraction * order.size))]
        batch[row].view(x.shape[1], -1)[:, gone] = -1.0  # black after (p - 0.5) / 0.5
    scores = runner.scores(batch)[:, target].double().numpy()
    return float(np.trapezoid(scores, FRACTIONS))


def main() -> None:
    runner = load_model(REPO / "sample_data/models/digits_cnn_state.pt", str(REPO / "sample_data/models/digits_cnn.py")
                        + ":build_model", "softmax", torch.device("cpu"))
    panels, rows = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name, settings in METHODS.items():
            out = Path(folder) / str(len(panels))
            records = run(settings, out)
            aucs = []
            for record in records:
                pixels = Image.open(REPO / "sample_data/images" / record["relpath"]).convert("L").resize((32, 32), Image.BILINEAR)
                x = (torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 255)[None, None] - 0.5) / 0.5
                attributions = torch.from_numpy(np.load(out / record["outputs"]["attributions"]))
                if "layer" in record:
                    attributions = layer_map_to_input(attributions, (32, 32))
                pixel_map = attributions.sum(0).numpy()
                if "regions" in record:  # the rank mask's grey levels: brighter is a better rank
                    pixel_map = np.asarray(Image.open(out / record["outputs"]["regions_mask"]))[..., 0].astype(float)
                aucs.append(deletion_auc(runner, x, pixel_map, record["target"]["index"]))
            shown = next(r for r in records if r["relpath"].startswith(SHOWN))
            panel = shown["outputs"]["regions_overlay" if "regions" in shown else "heatmap"]
            panels.append((name, Image.open(out / panel).convert("RGB")))
            rows.append((name, np.mean([r["gradient_evals"] for r in records]),
                         max(r["completeness"]["rel_error"] for r in records),
                         sum(r["completeness"]["converged"] for r in records), len(records), np.mean(aucs)))
    side = panels[0][1].size[0]
    figure = Image.new("RGB", (side * len(panels), side + 24), "white")
    draw = ImageDraw.Draw(figure)
    for column, (name, image) in enumerate(panels):
        figure.paste(image.resize((side, side)), (column * side, 24))
        draw.text((column * side + 6, 6), name, fill="black")
    figure.save(REPO / "docs" / "methods.png")
    print("| method | evaluations / image | max rel. completeness error | converged | deletion AUC |")
    print("|---|---:|---:|---:|---:|")
    for name, evals, error, converged, total, auc in rows:
        print(f"| {name} | {evals:.1f} | {error:.2e} | {converged}/{total} | {auc:.3f} |")


if __name__ == "__main__":
    main()
