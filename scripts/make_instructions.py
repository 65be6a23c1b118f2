#!/usr/bin/env python3
"""Writes data/instructions/{train,val,test}.json: a small instruction set in the Alpaca format
({"instruction", "input", "output"}) whose answers can be checked exactly: string tasks over a
fixed list of common words. Deterministic (a fixed seed, no network, standard library only);
the three splits share no (instruction, input) pair and hold the eight tasks in equal shares.

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
anchor arrow badge banana barrel beach bell berry blanket bloom board boat bone book boot
brick brush cabin cable camel canal candy cape card cart cave chain chalk cheese chest
clock coat coin comet cord corn crown cup curtain daisy desk dish door dove drum duck
eagle earth egg engine fabric feather fence fern finger fish flag flute fog fork fox frog
glass globe glove goat gold grass hammer hat hill hook horn ink iron jam jelly jewel key
kite knife lake lamp leaf lion lock map marble mask melon milk mint moon moss mouse nail
needle nest net oak olive owl paint palm pearl piano pillow pine pipe plate pond pot rain
ring road robin roof rope rose salt sand scarf seed sheep ship shoe silk sky slope soap
sock spoon star stick straw sugar swan thread tower tree tulip wagon wheel whale wolf wool
""".split()

# Records per split; each split holds every task in equal shares. The held-out splits are drawn
# first, so that the training split cannot use up a task's (instruction, input) pairs.
SIZES = {"test": 160, "val": 160, "train": 1280}
TASKS = 8


def sentence(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def record(rng, task):
    """One record of `task` (0..TASKS): its instruction, input and one right answer."""
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
        for task in range(TASKS):
            made = 0
            while made < size // TASKS:
                instruction, inp, output = record(rng, task)
                if (instruction, inp) in seen:
                    continue
                seen.add((instruction, inp))
                records.append({"instruction": instruction, "input": inp, "output": output})
                made += 1
        rng.shuffle(records)
        path = os.path.join(args.out, f"{split}.json")
        with open(path, "w") as f:
            json.dump(records, f, indent=1)
            f.write("\n")
        print(f"{path}: {len(records)} records")


if __name__ == "__main__":
    main()
