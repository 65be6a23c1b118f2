#!/usr/bin/env python3
"""Write tests/fixtures/shakespeare_char_bf16/: the trained char-level fixture
(tests/fixtures/shakespeare_char) as Hugging Face saves a model in bf16, by transformers'
own writer: GPT2LMHeadModel.from_pretrained(...).to(torch.bfloat16).save_pretrained(...).
Every tensor of its model.safetensors is BF16, rounded to nearest even from the f32 weights.
The tokenizer file (our char-level format) is copied as it is.

    /work/venv/bin/python scripts/make_bf16_fixture.py
"""

import os
import shutil

import torch
from transformers import GPT2LMHeadModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
SRC = os.path.join(ROOT, "shakespeare_char")
OUT = os.path.join(ROOT, "shakespeare_char_bf16")


def main():
    model = GPT2LMHeadModel.from_pretrained(SRC, torch_dtype=torch.float32)
    model = model.to(torch.bfloat16)
    shutil.rmtree(OUT, ignore_errors=True)
    model.save_pretrained(OUT, safe_serialization=True)
    shutil.copy(os.path.join(SRC, "tokenizer.json"), OUT)
    print("wrote", OUT, sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()
