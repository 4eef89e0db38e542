"""The bad-input corpus: each bad file is one clear error record, every good input is still written,
and nothing is left half-written (a full disk included)."""
import errno
import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from igcli.cli.commands import main
from igcli.results import atomic_files
from igcli.runtime.options import RuntimeOptions

from .conftest import DIGITS_CONFIG, SAMPLE_DATA

IMAGES = sorted((SAMPLE_DATA / "images").glob("*.png"))
STEPS = ["--steps", "8"]


def run(*args, options: RuntimeOptions | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, obj=options)


def by_name(out: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return {Path(row["relpath"]).name: row for row in rows}


def digit(index: int = 0) -> Image.Image:
    return Image.open(IMAGES[index]).convert("L")


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for a huge image with almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def build_corpus(folder: Path) -> tuple[dict[str, str], set[str]]:
    """Writes the corpus; returns {bad file: expected message} and the names that must succeed."""
    folder.mkdir()
    good = {"good_a.png", "good_b.png"}
    for name, index in zip(sorted(good), (0, 7)):
        shutil.copy(IMAGES[index], folder / name)
    rgb = digit(3).convert("RGB")
    (folder / "cmyk.jpg").write_bytes(encoded(rgb.convert("CMYK"), "JPEG", quality=95))
    wide = (np.asarray(digit(4), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(wide).save(folder / "sixteen_bit.png")
    palette = digit(5).convert("P")
    palette.info["transparency"] = 0
    palette.save(folder / "palette_transparent.png", transparency=0)
    frames = [digit(6).convert("P"), digit(8).convert("P")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    rgb.save(folder / "rotated.jpg", exif=exif, quality=95)
    good |= {"cmyk.jpg", "sixteen_bit.png", "palette_transparent.png", "animated.gif", "rotated.jpg"}

    bad = {
        "cut_png.png": "corrupt or truncated",
        "cut_jpg.jpg": "corrupt or truncated",
        "zero.png": "empty file (0 bytes)",
        "bomb.png": "decompression bomb",
        "text.png": "not an image Pillow can read",
        "dangling.png": "file not found",
        "loop.png": "cannot read",
    }
    (folder / "cut_png.png").write_bytes(encoded(rgb.resize((128, 128)), "PNG")[:300])
    (folder / "cut_jpg.jpg").write_bytes(encoded(rgb.resize((128, 128)), "JPEG")[:400])
    (folder / "zero.png").write_bytes(b"")
    (folder / "bomb.png").write_bytes(png_claiming(40_000, 40_000))
    (folder / "text.png").write_text("this is a text file with a .png name")
    (folder / "dangling.png").symlink_to(folder / "missing.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to(folder, target_is_directory=True)  # a folder loop
    return bad, good


def test_bad_inputs_fail_alone_with_one_clear_line(tmp_path):
    bad, good = build_corpus(tmp_path / "corpus")
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, tmp_path / "corpus", "-o", out, *STEPS)
    assert result.exit_code == 1
    rows = by_name(out)
    assert set(rows) == set(bad) | good  # the folder loop is not followed
    for name, message in bad.items():
        error = rows[name]["error"]
        assert message in error["message"] and name in error["message"] and "\n" not in error["message"]
        assert f"{name}: " in result.stderr
    for name in good:
        assert rows[name]["error"] is None
        assert Image.open(out / rows[name]["outputs"]["heatmap"]).size == (256, 256)
    assert any("2 frames; explained the first" in w for w in rows["animated.gif"]["warnings"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["totals"]["failed"] == len(bad) and manifest["totals"]["records"] == len(good)
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_fails_alone(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(IMAGES[0], folder / "good.png")
    shutil.copy(IMAGES[1], folder / "locked.png")
    (folder / "locked.png").chmod(0)
    result = run("explain", "-c", DIGITS_CONFIG, folder, "-o", tmp_path / "out", *STEPS)
    rows = by_name(tmp_path / "out")
    assert result.exit_code == 1 and "permission denied" in rows["locked.png"]["error"]["message"]
    assert rows["good.png"]["error"] is None


class FullDisk:
    """Injects ENOSPC into igcli's file writes once ``budget`` bytes have been written."""

    def __init__(self, budget: int):
        self.budget = budget
        self.real_fdopen = os.fdopen

    def fdopen(self, handle, mode="r", *args, **kwargs):
        stream = self.real_fdopen(handle, mode, *args, **kwargs)
        disk = self

        class Limited(io.RawIOBase):
            def writable(self):
                return True

            def write(self, data):
                if disk.budget < len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.budget -= len(data)
                return stream.write(data)

            def close(self):
                stream.close()
                super().close()

        return Limited()


@pytest.mark.parametrize("threads", [0, 2])
def test_a_full_disk_stops_the_run_and_leaves_no_partial_file(tmp_path, monkeypatch, threads):
    # The running manifest, rewritten after every chunk, may hit the full disk too.
    options = RuntimeOptions(writer_threads=threads, manifest_every=0.0)
    disk = FullDisk(budget=60_000)  # room for a few inputs' heatmaps, arrays and records
    monkeypatch.setattr(atomic_files.os, "fdopen", disk.fdopen)
    out = tmp_path / "out"
    result = run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", out, *STEPS,
                 "--set", "output.attributions=npy", options=options)
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) < 300
    assert not list(out.rglob(".*.tmp"))
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert 0 < len(rows) < len(IMAGES)
    for row in rows:  # every record written points at whole files
        Image.open(out / row["outputs"]["heatmap"]).load()
        np.load(out / row["outputs"]["attributions"])
        json.loads((out / row["outputs"]["record"]).read_text())
    for path in out.rglob("*.png"):
        Image.open(path).load()
    # The disk has room again: --resume finishes the job.
    monkeypatch.setattr(atomic_files.os, "fdopen", disk.real_fdopen)
    result = run("explain", "-c", DIGITS_CONFIG, SAMPLE_DATA / "images", "-o", out, *STEPS,
                 "--set", "output.attributions=npy", "--resume")
    assert result.exit_code == 0 and len((out / "results.jsonl").read_text().splitlines()) == len(IMAGES)


@pytest.mark.skipif(os.name != "posix", reason="file modes")
def test_outputs_get_the_umask_permissions_and_a_stale_temporary_name_is_skipped(tmp_path, monkeypatch):
    """Outputs are written to a temporary name and renamed; they must be as readable as any file
    the user's umask allows (tempfile.mkstemp's would all be 0600), and a temporary left by a killed
    process with the same id must not stop the write."""
    monkeypatch.setattr(atomic_files, "_serial", iter([7, 7, 8]))
    target = tmp_path / "heatmaps" / "a.png"
    target.parent.mkdir()
    stale = target.with_name(f".a.png.{os.getpid()}-7.tmp")
    stale.write_bytes(b"left by a killed run")
    previous = os.umask(0o022)
    try:
        atomic_files.write_bytes_atomic(target, b"whole")
    finally:
        os.umask(previous)
    assert target.read_bytes() == b"whole" and stale.read_bytes() == b"left by a killed run"
    assert target.stat().st_mode & 0o777 == 0o644
    assert atomic_files.remove_leftovers(tmp_path) == 1 and not stale.exists()
