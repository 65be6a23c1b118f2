#!/usr/bin/env python3
"""Writes data/instructions/{train,val,test}.json: a small instruction set in the Alpaca format
({"instruction", "input", "output"}) whose answers can be checked exactly: string tasks over a
fixed list of common words. Deterministic (a fixed seed, no network, standard library only);
the three splits share no (instruction, input) pair.

    python3 scripts/make_instructions.py [--out data/instructions]
"""

import argparse
import json
import os
import random

WORDS = """
apple river stone cloud green house light table water night horse bread music paper field
smile chair dream ocean plant queen happy tiger lemon quiet sweet brave storm grape honey
train shell flame snow candle garden mirror pocket rabbit silver window yellow basket bottle
castle dragon forest jacket kitten ladder monkey orange pencil rocket summer winter sister
friend letter market planet button cotton carpet circle bridge island shadow spring autumn
valley meadow thunder whisper morning evening lantern harbor pepper cookie butter cherry
""".split()

SIZES = {"train": 1600, "val": 150, "test": 150}


def sentence(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def record(rng):
    """One task drawn at random, with its input and its one right answer."""
    task = rng.randrange(8)
    word = rng.choice(WORDS)
    if task == 0:
        return "Reverse the word.", word, word[::-1]
    if task == 1:
        return "Write the word in uppercase.", word, word.upper()
    if task == 2:
        return "How many letters are in the word?", word, str(len(word))
    if task == 3:
        s = sentence(rng, 2, 7)
        return "How many words are in the sentence?", s, str(len(s.split()))
    if task == 4:
        s = sentence(rng, 3, 5)
        return "Sort the words alphabetically.", s, " ".join(sorted(s.split()))
    if task == 5:
        return "What is the first letter of the word?", word, word[0]
    if task == 6:
        return "Repeat the word twice.", word, f"{word} {word}"
    s = sentence(rng, 2, 6)
    return "What is the last word of the sentence?", s, s.split()[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "data", "instructions"))
    args = parser.parse_args()
    rng = random.Random(18)
    seen = set()
    os.makedirs(args.out, exist_ok=True)
    for split, size in SIZES.items():
        records = []
        while len(records) < size:
            instruction, inp, output = record(rng)
            if (instruction, inp) in seen:
                continue
            seen.add((instruction, inp))
            records.append({"instruction": instruction, "input": inp, "output": output})
        path = os.path.join(args.out, f"{split}.json")
        with open(path, "w") as f:
            json.dump(records, f, indent=1)
            f.write("\n")
        print(f"{path}: {len(records)} records")


if __name__ == "__main__":
    main()
