"""Train the classification run's student and teacher: frozen MiniLM and mpnet encoders with logistic heads.

    python bench/train_classifiers.py --out bench/results/classifiers   # ~20 min on two cores

For each of BBC News, SpamAssassin and the tweets, on the dataset's `train`
part (a stable hash of each example's id; `kascade eval --data NAME:test`
reads the other part): the encoder stays frozen, its [CLS]-based features
are computed once, a multinomial logistic regression (scikit-learn) is fitted
on them, and its weights become the classification head of an ordinary
`*ForSequenceClassification` folder (config with the label names, tokenizer,
safetensors) that `kascade serve --task classify` and a cascade tier load
like any other model. Frozen encoders with trained heads are what this CPU
allows; fine-tuning the encoders would make both better.

Features are what the saved head reads, so the folder reproduces the fit:
- MiniLM (BERT): the pooler's output tanh(W h_cls + b), then the linear classifier.
- mpnet: its head is dense -> tanh -> out_proj on h_cls; dense is set to the
  identity, so the features are tanh(h_cls) and out_proj holds the fit.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from kascade.evaluation.datasets import load_dataset
from kascade.runtime.models.packaged_encoders import MINILM, MPNET, encoder_folder

TRAIN_SIZE = {"bbc": 2000, "spam": 2000, "tweets": 2000}  # the train part's size caps bbc (~1,445)


def features(model, tokenizer, texts: list[str], batch: int = 32) -> torch.Tensor:
    """The head's input for each text (see the module docstring), in batches."""
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch):
            encoded = tokenizer(
                texts[start : start + batch],
                padding=True,
                truncation=True,
                return_tensors="pt",
                max_length=tokenizer.model_max_length,
            )
            if model.config.model_type == "bert":
                rows.append(model.bert(**encoded).pooler_output)
            else:
                rows.append(torch.tanh(model.mpnet(**encoded).last_hidden_state[:, 0, :]))
    return torch.cat(rows).float()


def train_one(encoder: str, dataset: str, out: Path, seed: int) -> dict:
    data = load_dataset(f"{dataset}:train")
    examples = data.examples
    if len(examples) > TRAIN_SIZE[dataset]:
        examples = random.Random(seed).sample(examples, TRAIN_SIZE[dataset])
    labels = sorted({e.label for e in data.examples})
    folder = encoder_folder(encoder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.model_max_length = min(tokenizer.model_max_length, 256)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    ).eval()
    if model.config.model_type != "bert":
        with torch.no_grad():
            model.classifier.dense.weight.copy_(torch.eye(model.config.hidden_size))
            model.classifier.dense.bias.zero_()
    started = time.perf_counter()
    x = features(model, tokenizer, [e.input for e in examples])
    y = [labels.index(e.label) for e in examples]
    embed_seconds = time.perf_counter() - started
    fit = LogisticRegression(max_iter=2000, C=1.0).fit(x.numpy(), y)
    head = model.classifier if model.config.model_type == "bert" else model.classifier.out_proj
    with torch.no_grad():
        weight, bias = torch.tensor(fit.coef_, dtype=torch.float32), torch.tensor(fit.intercept_, dtype=torch.float32)
        if len(labels) == 2:  # scikit-learn's binary fit is one row: logit(class 1) - logit(class 0)
            weight, bias = torch.cat([-weight / 2, weight / 2]), torch.cat([-bias / 2, bias / 2])
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    target = out / f"{dataset}-{encoder}"
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    summary = {
        "encoder": encoder,
        "dataset": dataset,
        "train_examples": len(examples),
        "labels": labels,
        "train_accuracy": float(fit.score(x.numpy(), y)),
        "embed_seconds": round(embed_seconds, 1),
    }
    (target / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/classifiers"))
    parser.add_argument("--datasets", nargs="+", default=["bbc", "spam", "tweets"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    for dataset in args.datasets:
        for encoder in (MINILM, MPNET):
            print(json.dumps(train_one(encoder, dataset, args.out, args.seed)), flush=True)


if __name__ == "__main__":
    main()
