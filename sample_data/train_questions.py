"""Train the sample text model: question types in the spirit of the paper's question classifier.

No real question-type corpus ships offline on PyPI or Debian, so the questions are generated from
documented templates (TEMPLATES below) with a seeded generator: classes numeric, datetime, yesno,
string. The WordPiece tokenizer (Hugging Face `tokenizers`) covers the training questions' words.

Writes into sample_data/: text/tokenizer.json, text/labels.txt, models/questions_state.pt (for the
factory models/questions_model.py:build_model), texts/*.txt and texts/more.jsonl (held-out questions).

Usage: python sample_data/train_questions.py [--epochs N] [--out DIR]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer
from tokenizers.implementations import BertWordPieceTokenizer

HERE = Path(__file__).resolve().parent
LABELS = ["numeric", "datetime", "yesno", "string"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SEED = 0
MAX_LENGTH = 32

FILL = {
    "thing": ["the eiffel tower", "mount everest", "the moon", "a blue whale", "the amazon river", "paris",
              "the great wall", "a violin", "the pacific ocean", "an elephant", "the sahara", "jupiter"],
    "person": ["abraham lincoln", "marie curie", "the first astronaut", "shakespeare", "cleopatra",
               "the inventor of the telephone", "mozart", "the author of hamlet", "einstein", "frida kahlo"],
    "event": ["the french revolution", "the first moon landing", "world war one", "the olympic games",
              "the fall of rome", "the printing press", "the internet", "the treaty of paris"],
    "unit": ["meters", "kilograms", "people", "miles", "years", "dollars", "species", "islands"],
}
TEMPLATES = {
    "numeric": ["how many {unit} live near {thing} ?", "how tall is {thing} ?", "how much does {thing} weigh ?",
                "how far is {thing} from here ?", "what is the population of {thing} ?",
                "how many {unit} does {thing} have ?", "how old was {person} ?", "how long is {thing} ?"],
    "datetime": ["when was {thing} built ?", "when did {event} happen ?", "what year did {event} begin ?",
                 "when was {person} born ?", "in what century did {event} end ?", "when did {person} die ?",
                 "what date marks {event} ?"],
    "yesno": ["is {thing} older than {event} ?", "did {person} see {thing} ?", "can {person} visit {thing} ?",
              "does {thing} have {unit} ?", "was {person} alive during {event} ?", "is {thing} bigger than {thing2} ?"],
    "string": ["who discovered {thing} ?", "who was {person} ?", "what is the name of {thing} ?",
               "which country has {thing} ?", "who wrote about {event} ?", "what is {thing} made of ?",
               "where is {thing} ?"],
}


def generate(count: int, rng: random.Random) -> list[tuple[str, int]]:
    rows = []
    for index in range(count):
        label = index % len(LABELS)
        template = rng.choice(TEMPLATES[LABELS[label]])
        values = {key: rng.choice(options) for key, options in FILL.items()}
        values["thing2"] = rng.choice(FILL["thing"])
        rows.append((template.format(**values), label))
    rng.shuffle(rows)
    return rows


def build_tokenizer(texts: list[str]) -> Tokenizer:
    """A WordPiece tokenizer over the corpus's words, plus single letters and ##letters for the rest.

    Built from a sorted vocabulary rather than trained: the `tokenizers` trainer orders (and on
    ties, picks) pieces differently from run to run, and the model must be reproducible.
    """
    words = sorted({word for text in texts for word in text.lower().split()})
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = SPECIALS + [w for w in words if w not in letters] + letters + [f"##{c}" for c in letters]
    wordpiece = BertWordPieceTokenizer({token: i for i, token in enumerate(vocab)}, lowercase=True)
    return wordpiece._tokenizer  # carries [CLS] ... [SEP] post-processing, as BERT-style models see text


def encode(tokenizer: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer.enable_truncation(MAX_LENGTH)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=MAX_LENGTH)
    encodings = tokenizer.encode_batch(texts)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    ids = torch.tensor([e.ids for e in encodings])
    mask = torch.tensor([e.attention_mask for e in encodings])
    return ids, mask


def build_model() -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("questions_model", HERE / "models" / "questions_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_model()


def train(ids, mask, labels, epochs: int) -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), generator=generator).split(32):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(ids[batch], mask[batch]), labels[batch])
            loss.backward()
            optimizer.step()
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    rows = generate(2400, random.Random(SEED))
    split = int(0.8 * len(rows))
    texts, labels = [t for t, _ in rows], torch.tensor([label for _, label in rows])
    tokenizer = build_tokenizer(texts[:split])
    ids, mask = encode(tokenizer, texts)
    model = train(ids[:split], mask[:split], labels[:split], args.epochs)
    assert tokenizer.get_vocab_size() <= model.embed.num_embeddings
    with torch.no_grad():
        accuracy = (model(ids[split:], mask[split:]).argmax(1) == labels[split:]).float().mean().item()
    for folder in ("text", "models", "texts"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(args.out / "text" / "tokenizer.json"))
    (args.out / "text" / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    torch.save(model.state_dict(), args.out / "models" / "questions_state.pt")
    held_out = rows[split:]
    chosen = [next(i for i, (_, label) in enumerate(held_out) if label == c and i > k * 40)
              for c in range(len(LABELS)) for k in range(2)]
    for index, position in enumerate(chosen):
        text, label = held_out[position]
        (args.out / "texts" / f"{index:02d}_{LABELS[label]}.txt").write_text(text + "\n", encoding="utf-8")
    rest = [row for i, row in enumerate(held_out) if i not in chosen]
    lines = [json.dumps({"text": text, "label": LABELS[label]}) for text, label in rest[:3]]
    (args.out / "texts" / "more.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(json.dumps({"test_accuracy": round(accuracy, 4), "train": split, "test": len(rows) - split,
                      "vocab": tokenizer.get_vocab_size()}, indent=2))


if __name__ == "__main__":
    main()
