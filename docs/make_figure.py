"""Rebuild docs/digits.png (inputs above, igcli heatmaps below) from an `igcli explain` output.

Usage: igcli explain -c configs/digits.yaml sample_data/images -o out/ && python docs/make_figure.py out/
"""
import sys
from pathlib import Path

from PIL import Image

NAMES = ["zero_1437", "two_1458", "three_1442", "four_1462", "seven_1443", "nine_1440"]
TILE, GAP = 128, 4


def main(out: Path) -> None:
    strip = Image.new("RGB", (len(NAMES) * (TILE + GAP) - GAP, 2 * TILE + GAP), "white")
    for i, name in enumerate(NAMES):
        source = Image.open(Path("sample_data/images") / f"{name}.png").convert("RGB")
        heatmap = Image.open(out / "heatmaps" / f"{name}.png")
        for row, image in enumerate((source, heatmap)):
            strip.paste(image.resize((TILE, TILE), Image.Resampling.NEAREST), (i * (TILE + GAP), row * (TILE + GAP)))
    strip.save(Path(__file__).with_name("digits.png"), optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "out"))
