#!/usr/bin/env python3
"""Make tests/fixtures/eval_reference.json: what Hugging Face's perplexity guide and Karpathy's
hellaswag.py compute for the trained char-level fixture (tests/fixtures/shakespeare_char), for
tests/eval.rs to compare `gpt2 eval perplexity` and `gpt2 eval choice` against.

- perplexity: the first 1000 characters of data/tinyshakespeare.txt, ids by the fixture's
  char tokenizer (the index of each character in its sorted alphabet); for each stride, the loop
  of https://huggingface.co/docs/transformers/perplexity (windows of n_positions tokens every
  `stride`, the targets before the last trg_len set to -100), summing the losses of the scored
  tokens exactly (the guide's loop averages per window);
- choice: the items of CHOICE_ITEMS, each ending as " " + ending after the context, the losses
  of the ending's tokens summed and averaged (hellaswag.py's get_most_likely_row), and the
  predictions of least sum and least mean.

Run once (torch + transformers, CPU, no network): python3 scripts/make_eval_fixtures.py
"""

import json
import os

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

ROOT = os.path.join(os.path.dirname(__file__), "..")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "shakespeare_char")
STRIDES = [64, 32, 8]
CHOICE_ITEMS = [
    {"ctx": "ROMEO: I love", "endings": ["thee, my lord", "zzqx", "xqzj", "qqqqqqqqqq"], "label": 0},
    {"ctx": "First Citizen:", "endings": ["Speak, speak.", "xq"], "label": 1},
    {"ctx": "KING RICHARD III:\nNow is the winter of our", "endings": ["discontent", "dog", "sun of York"], "label": 0},
]


def main():
    torch.set_num_threads(1)
    model = GPT2LMHeadModel.from_pretrained(FIXTURE).eval()
    chars = json.load(open(os.path.join(FIXTURE, "tokenizer.json")))["chars"]
    encode = lambda text: [chars.index(c) for c in text]
    text = open(os.path.join(ROOT, "data", "tinyshakespeare.txt")).read()[:1000]
    ids = torch.tensor(encode(text))
    n = model.config.n_positions

    perplexity = {}
    for stride in STRIDES:
        nll, count, prev_end = 0.0, 0, 0
        for begin in range(0, len(ids), stride):
            end = min(begin + n, len(ids))
            trg_len = end - prev_end
            input_ids = ids[begin:end][None]
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            with torch.no_grad():
                logits = model(input_ids).logits[0, :-1].double()
            targets = target_ids[0, 1:]
            counted = targets != -100
            nll += F.cross_entropy(logits[counted], targets[counted], reduction="sum").item()
            count += int(counted.sum())
            prev_end = end
            if end == len(ids):
                break
        perplexity[str(stride)] = {"predictions": count, "loss": nll / count}

    choice = []
    for item in CHOICE_ITEMS:
        ctx = encode(item["ctx"])
        sums, means = [], []
        for ending in item["endings"]:
            end = encode(" " + ending)
            row = torch.tensor(ctx + end)[None]
            with torch.no_grad():
                logits = model(row).logits[0, :-1].double()
            losses = F.cross_entropy(logits, row[0, 1:], reduction="none")[len(ctx) - 1 :]
            sums.append(losses.sum().item())
            means.append(losses.mean().item())
        choice.append({
            "sums": sums,
            "means": means,
            "pred": min(range(len(sums)), key=sums.__getitem__),
            "pred_norm": min(range(len(means)), key=means.__getitem__),
        })

    out = {"text_chars": 1000, "tokens": len(ids), "perplexity": perplexity, "choice_items": CHOICE_ITEMS, "choice": choice}
    path = os.path.join(ROOT, "tests", "fixtures", "eval_reference.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
