"""CPU, end to end for text (read -> tokenize -> attributions -> HTML page + JSON): igcli explain
with configs/questions.yaml vs a captum loop.

The captum loop is what a user would write: for each file, tokenize it with the sample tokenizer,
call captum's LayerIntegratedGradients at the model's embedding layer with its defaults
(gausslegendre, 50 steps) on the softmax for the predicted class, against the same baseline igcli
uses (PAD in every position but [CLS]/[SEP]), and write a JSON record and an HTML page of the
token scores. Both run in this process on the same files. Accuracy is measured on every document
against a 1,024-step Gauss-Legendre reference on the [tokens, embedding] attributions: the
completeness error relative to |F(x) - F(x')|, max|A - A_ref| / max|A_ref| and
||A - A_ref|| / ||A_ref|| (L2); each is the mean over documents.

Runs alternate (``--repeats``) and each rate is the median of its runs. The timed igcli runs write
the HTML page and JSON record per document plus results.jsonl, the manifest and report.html; one
more, untimed run saves the .npy attributions the accuracy columns come from.

    python benchmarks/text_end_to_end.py [--documents 220] [--repeats 5] [--variant "method=adaptive" ...]
"""
from __future__ import annotations

import argparse
import functools
import html
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from captum.attr import LayerIntegratedGradients
from comparison import add_malloc_option, apply_malloc_option, mean_errors, print_table, run_with_maps, time_alternately
from variants import overrides, threads

from igcli.attribution.baselines import text_baseline_ids
from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.config import load_config
from igcli.pipeline.text_job import TextJob, load_text_model

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "questions.yaml"
CAPTUM = "captum loop (GL, 50 steps)"
CAPTUM_TUNED = "captum loop on igcli's copy of the model (parameters frozen)"


def sample_texts() -> list[str]:
    """The bundled questions: one per .txt file and one per line of the .jsonl files."""
    folder = REPO / "sample_data" / "texts"
    texts = [path.read_text(encoding="utf-8").strip() for path in sorted(folder.glob("*.txt"))]
    for path in sorted(folder.glob("*.jsonl")):
        texts += [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts


def make_inputs(folder: Path, count: int, texts: list[str]) -> None:
    """``count`` .txt files cycling through ``texts``; the name ends with the text's index."""
    for index in range(count):
        (folder / f"{index:05d}_{index % len(texts):02d}.txt").write_text(texts[index % len(texts)] + "\n",
                                                                           encoding="utf-8")


def encoded(job: TextJob, text: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """ids [1, L], mask [1, L], baseline ids [1, L] and the tokens, as both tools see them."""
    tokens = job.model.tokenizer.encode(text, job.model.max_length)
    ids = torch.tensor(tokens.ids)[None]
    special = torch.tensor(tokens.special, dtype=torch.bool)[None]
    return ids, torch.ones_like(ids), text_baseline_ids(ids, special, job.fill_id), tokens.tokens


def captum_loop(module: torch.nn.Module, job: TextJob, files: list[Path], out: Path) -> tuple[float, dict[str, np.ndarray]]:
    lig = LayerIntegratedGradients(lambda ids, mask: torch.softmax(module(ids, mask), dim=1), module.embed)
    maps: dict[str, np.ndarray] = {}
    out.mkdir(parents=True)
    start = time.perf_counter()
    for path in files:
        ids, mask, baseline, tokens = encoded(job, path.read_text(encoding="utf-8"))
        with torch.no_grad():
            target = int(module(ids, mask).argmax())
        attributions = lig.attribute(ids, baselines=baseline, target=target, additional_forward_args=(mask,))
        attributions = attributions[0].detach()
        scores = attributions.sum(-1).tolist()
        spans = " ".join(f'<span title="{score:.4g}">{html.escape(token)}</span>' for token, score in zip(tokens, scores))
        (out / f"{path.stem}.html").write_text(f"<!doctype html><meta charset=utf-8><p>{spans}</p>", encoding="utf-8")
        (out / f"{path.stem}.json").write_text(json.dumps({"input": str(path), "target": target,
                                                          "tokens": list(zip(tokens, scores))}))
        maps[path.name] = attributions.numpy()
    return time.perf_counter() - start, maps


def reference_maps(job: TextJob, texts: list[str]) -> list[tuple[np.ndarray, float]]:
    """1,024-step Gauss-Legendre attributions and F(x) - F(x') for every distinct text."""
    result = []
    for text in texts:
        ids, mask, baseline, _ = encoded(job, text)
        backend = job.model.backend_for(ids[0], mask[0])
        inputs, baselines = job.model.embed(ids[0])[None], job.model.embed(baseline[0])[None, None]
        (e,) = attribute(backend, inputs, baselines, TargetSpec("predicted"), Quadrature(Rule.gausslegendre, 1024),
                       batch_size=256)
        result.append((e.attributions.numpy(), e.f_input - e.f_baseline))
    return result


def accuracy(maps: dict[str, np.ndarray], reference: list[tuple[np.ndarray, float]]) -> tuple[float, ...]:
    """mean_errors, each file against the reference of the text it holds (its name's suffix)."""
    return mean_errors((a, *reference[int(Path(name).stem.split("_")[1])]) for name, a in maps.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=220)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variant", action="append", default=[],
                        help="igcli settings to time against the same captum runs: config overrides and writers=N, "
                             "read_ahead=N (repeatable; default: the config as it is)")
    add_malloc_option(parser)
    args = parser.parse_args()
    malloc = apply_malloc_option(args)
    variants = args.variant or [""]

    def configured(variant: str, attributions: str):
        texts = ["device=cpu", f"output.attributions={attributions}"] + overrides(variant)
        return load_config(CONFIG, [(text, "--set") for text in texts])

    configs = {variant: configured(variant, "none") for variant in variants}
    job = TextJob(configs[variants[0]])
    texts = sample_texts()
    reference = reference_maps(job, texts)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        (scratch / "texts").mkdir()
        make_inputs(scratch / "texts", args.documents, texts)
        files = sorted((scratch / "texts").glob("*.txt"))
        # The reference loads the model as a user would (trainable parameters); the tuned loop gets
        # igcli's copy of it (parameters frozen).
        captum_modules = {CAPTUM: load_text_model(job.config, torch.device("cpu")).module,
                          CAPTUM_TUNED: job.model.module}
        loops = {name: functools.partial(captum_loop, module, job, files) for name, module in captum_modules.items()}
        times, captum_maps = time_alternately(args.repeats, loops, configs, scratch / "texts", scratch)
        results = {variant: run_with_maps(configured(variant, "npy"), scratch / "texts", scratch / f"maps{index}",
                                            threads(variant))
                   for index, variant in enumerate(variants)}
    print(f"# {platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.documents} documents ({len(texts)} distinct), medians of {args.repeats} alternating runs, {malloc} "
          "(igcli's time includes loading the model)")
    as_given = configured("", "none")
    print_table("document", "element", args.documents, times, captum_maps, results,
                lambda maps: accuracy(maps, reference), f"{as_given.method.value}, steps {as_given.steps}")


if __name__ == "__main__":
    main()
