"""Text: token attributions through the embedding layer, on the sample model and a tiny HF BERT."""
import json
import threading
from pathlib import Path

import pytest
import torch
from captum.attr import LayerIntegratedGradients
from click.testing import CliRunner

from igcli.attribution.baselines import text_baseline_ids
from igcli.attribution.engine import Quadrature, TargetSpec, attribute
from igcli.attribution.quadrature import Rule
from igcli.cli.commands import main
from igcli.config import load_config
from igcli.pipeline.text_job import load_text_model

from .conftest import REPO, SAMPLE_DATA

QUESTIONS_CONFIG = REPO / "configs" / "questions.yaml"
CPU = torch.device("cpu")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]


# Not riemann_left: igcli takes its alpha-0 gradient a hair along the path, captum at the baseline
# (in float32 that moves 1/50 of the weight by 3.5e-4 along the path here; tests/test_adaptive.py).
@pytest.mark.parametrize("rule", [Rule.gausslegendre, Rule.riemann_middle, Rule.riemann_right])
def test_parity_with_captum_layer_integrated_gradients(rule):
    model = load_text_model(load_config(QUESTIONS_CONFIG), CPU)
    encoded = model.tokenizer.encode("how many people live near the moon ?", 64)
    ids, mask = torch.tensor(encoded.ids), torch.ones(len(encoded.ids), dtype=torch.long)
    base_ids = text_baseline_ids(ids, torch.tensor(encoded.special), model.tokenizer.pad_id)

    def forward(batch_ids, batch_mask):
        return torch.softmax(model.module(batch_ids, batch_mask), dim=1)

    target = int(forward(ids[None], mask[None]).argmax())
    method = {Rule.gausslegendre: "gausslegendre", Rule.riemann_middle: "riemann_middle",
              Rule.riemann_right: "riemann_right"}[rule]
    theirs = LayerIntegratedGradients(forward, model.module.embed).attribute(
        ids[None], baselines=base_ids[None], additional_forward_args=(mask[None],), target=target,
        n_steps=50, method=method)[0]
    (ours,) = attribute(model.backend_for(ids, mask), model.embed(ids)[None], model.embed(base_ids)[None, None],
                      TargetSpec("index", target), Quadrature(rule, 50), batch_size=64)
    assert float((ours.attributions - theirs).abs().max() / theirs.abs().max()) <= 1e-5


@pytest.mark.parametrize("baseline", ["pad", "zeros", "token"])
def test_sample_texts_end_to_end(tmp_path, baseline):
    extra = ["--set", 'baseline.token="[MASK]"'] if baseline == "token" else []  # quoted: YAML values
    result = run("explain", "-c", QUESTIONS_CONFIG, SAMPLE_DATA / "texts", "-o", tmp_path, "--set",
                 f"baseline.kind={baseline}", *extra)
    assert result.exit_code == 0, result.output
    rows = records(tmp_path)
    assert len(rows) == 11 and all(r["error"] is None for r in rows)
    for row in rows:
        assert row["completeness"]["converged"] and row["completeness"]["rel_error"] <= 0.01
        assert sum(t["score"] for t in row["tokens"]) == pytest.approx(row["attribution_sum"], rel=1e-9)
        assert sum(w["score"] for w in row["words"]) == pytest.approx(row["attribution_sum"], rel=1e-9)
        assert row["tokens"][0]["token"] == "[CLS]" and row["tokens"][0]["special"]
        assert all(not t["token"].startswith("[") for t in row["top_tokens"])  # specials listed, never ranked
        if baseline != "zeros":  # kept in place in the baseline, so they cannot be credited
            assert row["tokens"][0]["score"] == 0.0
        assert (tmp_path / row["outputs"]["html"]).exists()
        expected = Path(row["relpath"]).name.split("_")[-1].removesuffix(".txt")
        if row["relpath"].endswith(".txt"):
            assert row["target"]["label"] == expected
    assert rows[-1]["relpath"] == "more/line-00003" and rows[-1]["input"].endswith("more.jsonl:3")


def test_bad_documents_fail_alone_and_html_escapes(tmp_path):
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "a_script.txt").write_text("who wrote <script>alert(1)</script> ?", encoding="utf-8")
    (texts / "b_latin1.txt").write_bytes("où est la lune ?".encode("latin-1"))
    (texts / "c_empty.txt").write_text("   \n", encoding="utf-8")
    (texts / "d_binary.txt").write_bytes(b"\x00\x01\x02binary")
    (texts / "e_bom.txt").write_bytes("\ufeffwhen was paris built ?".encode("utf-8"))
    (texts / "f_lines.jsonl").write_text('{"text": "who was mozart ?"}\nnot json\n{"body": "x"}\n', encoding="utf-8")
    (texts / "g_loop.txt").symlink_to(texts / "g_loop.txt")
    out = tmp_path / "out"
    result = run("explain", "-c", QUESTIONS_CONFIG, texts, "-o", out)
    assert result.exit_code == 1
    rows = {r["relpath"]: r for r in records(out)}
    assert "not UTF-8" in rows["b_latin1.txt"]["error"]["message"]
    assert "empty document" in rows["c_empty.txt"]["error"]["message"]
    assert "binary" in rows["d_binary.txt"]["error"]["message"]
    assert "invalid JSON" in rows["f_lines/line-00002"]["error"]["message"]
    assert "input.text_field" in rows["f_lines/line-00003"]["error"]["message"]
    assert "cannot read" in rows["g_loop.txt"]["error"]["message"]
    assert rows["e_bom.txt"]["error"] is None and rows["e_bom.txt"]["target"]["label"] == "datetime"
    assert rows["f_lines/line-00001"]["error"] is None
    page = (out / rows["a_script.txt"]["outputs"]["html"]).read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;" in page


def test_truncation_is_recorded(tmp_path):
    text = tmp_path / "long.txt"
    text.write_text("how many " + "people " * 100 + "?", encoding="utf-8")
    result = run("explain", "-c", QUESTIONS_CONFIG, text, "--jsonl", "-", "-q", "--set", "input.max_length=12")
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(row["tokens"]) == 12 and row["warnings"] == ["truncated to 12 tokens"]


def test_show_prints_plain_words_when_not_a_terminal(tmp_path):
    result = run("explain", "-c", QUESTIONS_CONFIG, SAMPLE_DATA / "texts" / "06_string.txt", "-o", tmp_path,
                 "--show", "-q")
    assert result.exit_code == 0
    line = result.stdout.strip()
    assert line.startswith(str(SAMPLE_DATA / "texts" / "06_string.txt") + ": string") and "who[+" in line
    assert "\x1b[" not in line


def test_threads_calling_the_model_at_once_each_get_their_own_embeddings():
    # Chunks in flight call one model from two threads. Here both substitute their embeddings
    # before either runs (the barrier), so a substitute shared between threads would cross them.
    model = load_text_model(load_config(QUESTIONS_CONFIG), CPU)
    torch.manual_seed(0)
    width = model.embed(torch.tensor([1]))[0].numel()
    inputs = {length: (torch.randint(5, 200, (2, length)), torch.ones(2, length, dtype=torch.long),
                       torch.randn(2, length, width)) for length in (7, 9)}
    alone = {length: model.with_embeddings(*inputs[length]) for length in inputs}
    plain_call, meeting = model.call, threading.Barrier(2, timeout=10)
    model.call = lambda inner, ids, mask: (meeting.wait(), plain_call(inner, ids, mask))[1]
    together = {}

    def call_model(length):
        together[length] = model.with_embeddings(*inputs[length])

    workers = [threading.Thread(target=call_model, args=(length,)) for length in inputs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert together.keys() == alone.keys()
    for length in inputs:
        assert torch.equal(together[length], alone[length]), length


def test_backends_built_per_chunk_leave_the_shared_model_alone(monkeypatch):
    # Each text chunk builds its backends in its own thread. A torch.fx trace there (the graph
    # rewrites) patched nn.Module.__call__ for every thread, and the other chunk's model calls
    # got proxies ("'len' is not supported in symbolic tracing") and failed.
    model = load_text_model(load_config(QUESTIONS_CONFIG), CPU)
    traces = []
    monkeypatch.setattr(torch.fx, "symbolic_trace", lambda *args, **kwargs: traces.append(args))
    weights = {name: (p.clone(), p.stride()) for name, p in model.module.named_parameters()}
    ids, mask = torch.tensor([[2, 7, 9]]), torch.ones(1, 3, dtype=torch.long)
    for backend in (model.backend_for(ids[0], mask[0]), model.documents_backend(ids, mask)):
        assert backend.module.inner is model.module and not backend.channels_last
    assert traces == []
    for name, p in model.module.named_parameters():
        assert torch.equal(p, weights[name][0]) and p.stride() == weights[name][1], name


def test_image_baselines_are_refused_for_text(tmp_path):
    result = run("explain", "-c", QUESTIONS_CONFIG, SAMPLE_DATA / "texts", "-o", tmp_path, "--set", "baseline.kind=blur")
    assert result.exit_code == 2 and "does not apply to text inputs" in result.stderr


ID_AWARE_MODEL = """
import torch
from torch import nn


class IdAware(nn.Module):
    \"\"\"Reads the ids twice: through `embed` (attributed) and through a per-token bias (not), so
    a row that met another document's ids would score differently. Refuses token POISON.\"\"\"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(600, 8)
        self.bias = nn.Embedding(600, 4)
        self.out = nn.Linear(8, 4)

    def forward(self, ids, mask):
        if (ids == POISON).any():
            raise RuntimeError("poisoned token")
        return self.out(torch.tanh(self.embed(ids)).mean(1)) + 3 * self.bias(ids).mean(1)


def build():
    return IdAware()
"""


def id_aware_job(tmp_path: Path, poison: str | None):
    from igcli.pipeline.text_job import TextJob

    tokenizer = load_text_model(load_config(QUESTIONS_CONFIG), CPU).tokenizer
    source = tmp_path / "id_aware.py"
    poison_id = -1 if poison is None else tokenizer.token_id(poison)
    source.write_text(ID_AWARE_MODEL.replace("POISON", str(poison_id)), encoding="utf-8")
    sets = ["model.path=null", f"model.factory={source}:build", "method=gausslegendre", "steps=50",
            "device=cpu"]
    return TextJob(load_config(QUESTIONS_CONFIG, [(text, "--set") for text in sets]))


def documents(job, folder: Path, texts: list[str]):
    """The job's samples of ``texts``, each written to a file in ``folder``."""
    from igcli.data.discover import InputRef

    samples = []
    for number, text in enumerate(texts):
        path = folder / f"{number}.txt"
        path.write_text(text, encoding="utf-8")
        samples.append(next(job.read([InputRef(path, path.name)])))
    return samples


def test_documents_batched_together_each_match_captum_alone(tmp_path):
    job = id_aware_job(tmp_path, None)
    samples = documents(job, tmp_path, ["who was shakespeare ?", "when was einstein born ?", "who wrote hamlet ?",
                                        "where is paris ?", "what is the moon made of ?", "how old is paris ?"])
    lengths = [len(sample.ids) for sample in samples]
    assert max(lengths.count(length) for length in lengths) >= 3  # some documents share a batch
    module = job.model.module
    lig = LayerIntegratedGradients(lambda ids, mask: torch.softmax(module(ids, mask), dim=1), module.embed)
    for sample, (record,) in zip(samples, job.explain_samples(samples)):
        base_ids = text_baseline_ids(sample.ids, torch.tensor(sample.special), job.fill_id)
        theirs = lig.attribute(sample.ids[None], baselines=base_ids[None], target=record.target,
                               additional_forward_args=(sample.mask[None],))[0]
        assert float((record.attributions - theirs).abs().max() / theirs.abs().max()) <= 1e-5, sample.source


def test_a_document_the_model_refuses_fails_alone_in_its_batch(tmp_path):
    job = id_aware_job(tmp_path, "hamlet")
    samples = documents(job, tmp_path, ["who was shakespeare ?", "who wrote hamlet ?", "who was einstein ?"])
    assert len({len(sample.ids) for sample in samples}) == 1  # one batch
    (a,), (b,), (c,) = job.explain_samples(samples)
    assert b.message == f"{tmp_path / '1.txt'}: model failed (poisoned token)"
    ((a_alone,),), ((c_alone,),) = job.explain_samples([samples[0]]), job.explain_samples([samples[2]])
    assert torch.equal(a.attributions, a_alone.attributions) and torch.equal(c.attributions, c_alone.attributions)


def tiny_bert(folder: Path) -> None:
    """A 2-layer BERT with random (seeded) weights and a locally built WordPiece tokenizer."""
    from tokenizers.implementations import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification

    words = "the a cat dog sat on mat was good bad movie film great awful not very ##s ##ing".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "?", "!", "."] + words
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=True).save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=32, num_labels=2, initializer_range=0.5,
                        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).eval().save_pretrained(folder)


def test_hugging_face_model_from_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny_bert(tmp_path / "bert")
    texts = tmp_path / "reviews"
    texts.mkdir()
    (texts / "one.txt").write_text("the movie was not very good !", encoding="utf-8")
    (texts / "two.txt").write_text("a great film , the cats sat on the mat .", encoding="utf-8")
    (texts / "three.txt").write_text("the film was not very bad !", encoding="utf-8")  # batched with one.txt
    config = tmp_path / "hf.yaml"
    config.write_text("model: {path: bert, score: softmax}\ninput: {kind: text}\nbaseline: {kind: pad}\n"
                      "target: {top_k: 2}\ntolerance: 0.005\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run("explain", "-c", config, texts, "-o", out)
    assert result.exit_code == 0, result.output
    rows = records(out)
    assert [(r["relpath"], r["target"]["rank"]) for r in rows] == [
        ("one.txt", 1), ("one.txt", 2), ("three.txt", 1), ("three.txt", 2), ("two.txt", 1), ("two.txt", 2)]
    assert {r["target"]["label"] for r in rows} == {"negative", "positive"}  # labels from the model's config
    for row in rows:
        assert row["completeness"]["rel_error"] <= 0.005
        assert [t["token"] for t in row["tokens"]][:2] == ["[CLS]", "a" if row["relpath"] == "two.txt" else "the"]
        assert row["tokens"][-1]["token"] == "[SEP]"
    assert len(rows[0]["tokens"]) == len(rows[2]["tokens"]) != len(rows[4]["tokens"])
    words = [w["word"] for w in rows[4]["words"]]
    assert "cats" in words  # "cat" + "##s" merged back into the word


@pytest.fixture(scope="module")
def questions_onnx(tmp_path_factory) -> Path:
    """The sample question model exported to ONNX by torch's exporter, ids and mask as inputs."""
    model = load_text_model(load_config(QUESTIONS_CONFIG), CPU).module.eval()
    ids, mask = torch.randint(1, 600, (2, 10)), torch.ones(2, 10, dtype=torch.long)
    batch, length = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("length", min=2, max=512)
    path = tmp_path_factory.mktemp("onnx") / "questions.onnx"
    torch.onnx.export(model, (ids, mask), str(path), dynamo=True, input_names=["ids", "mask"],
                      output_names=["logits"], dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}))
    return path


def test_onnx_text_model_attributed_at_a_named_tensor_matches_the_torch_model(questions_onnx, tmp_path):
    common = ["--method", "gausslegendre", "--steps", "32"]
    assert run("explain", "-c", QUESTIONS_CONFIG, SAMPLE_DATA / "texts", "-o", tmp_path / "torch", *common).exit_code == 0
    result = run("explain", "-c", QUESTIONS_CONFIG, SAMPLE_DATA / "texts", "-o", tmp_path / "onnx", *common,
                 "--model", questions_onnx, "--set", "model.embedding_layer=embedding")
    assert result.exit_code == 0, result.output
    on_torch, on_onnx = records(tmp_path / "torch"), records(tmp_path / "onnx")
    assert len(on_onnx) == len(on_torch) >= 10
    for a, b in zip(on_torch, on_onnx):
        assert a["target"] == b["target"] and a["f_input"] == pytest.approx(b["f_input"], rel=1e-5)
        scores_a = torch.tensor([t["score"] for t in a["tokens"]])
        scores_b = torch.tensor([t["score"] for t in b["tokens"]])
        torch.testing.assert_close(scores_b, scores_a, rtol=1e-5, atol=1e-6 * float(scores_a.abs().max()))
        assert b["completeness"]["rel_error"] == pytest.approx(a["completeness"]["rel_error"], abs=1e-4)


def test_onnx_text_model_errors_name_the_embedding_tensors(questions_onnx, tmp_path):
    result = run("explain", "-c", QUESTIONS_CONFIG, SAMPLE_DATA / "texts", "-o", tmp_path / "out",
                 "--model", questions_onnx, "--set", "model.embedding_layer=embed")
    assert result.exit_code == 2 and "'embed' is no tensor" in result.stderr and "embedding (600x32)" in result.stderr
    report = json.loads(run("inspect", questions_onnx, "--json").stdout)
    assert report["embedding_tensors"] == {"embedding": {"vocabulary": 600, "width": 32}}
