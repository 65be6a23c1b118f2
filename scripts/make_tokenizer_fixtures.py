"""Makes the tokenizer test fixtures in tests/fixtures/tokenizer/ (run from the repository root).

    python scripts/make_tokenizer_fixtures.py [--r50k path/to/r50k_base.tiktoken]

Oracles, all built offline from the committed data/tokenizer/vocab.bpe:
- tiktoken's `gpt2` encoding (ranks derived from vocab.bpe as tiktoken's own data_gym loader
  does; with --r50k the ranks are checked against tiktoken's r50k_base.tiktoken, e.g. the copy in
  the tiktoken-rs crate's assets/ folder);
- a small vocabulary (the 256 bytes + the first 1000 GPT-2 merges + <|endoftext|>) written as a
  Hugging Face tokenizer.json (encoded by `tokenizers`), as vocab.json + merges.txt, and as a
  .tiktoken rank file (encoded by tiktoken).

Writes:
    gpt2_cases.json        {"cases": [{"category", "text", "ids"}], "special": [...]}
    small_cases.json       {"cases": [{"text", "hf_ids", "tiktoken_ids"}]}
    hf_small/tokenizer.json, openai_small/vocab.json, openai_small/merges.txt, small.tiktoken
"""

import argparse
import base64
import json
import os

import tiktoken
import tiktoken.load
import tokenizers
from tokenizers import decoders, models, pre_tokenizers

from byte_level import bytes_to_unicode

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
EOT = "<|endoftext|>"
OUT = "tests/fixtures/tokenizer"
SMALL_MERGES = 1000


def gpt2_tokens():
    """GPT-2's token bytes in rank order and its merges (as byte-level strings)."""
    order, chars = bytes_to_unicode()
    decode = {c: b for b, c in zip(order, chars)}
    tokens = [bytes([b]) for b in order]
    with open("data/tokenizer/vocab.bpe", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    for left, right in merges:
        tokens.append(bytes(decode[c] for c in left + right))
    return tokens, merges


TEXTS = {
    "english": [
        "The quick brown fox jumps over the lazy dog.",
        "Hello, world! This is a test of the GPT-2 tokenizer; it should match tiktoken exactly.",
        open("data/the-verdict.txt", encoding="utf-8").read()[:2000],
        open("data/tinyshakespeare.txt", encoding="utf-8").read()[:3000],
    ],
    "code": [
        "def square(x):\n    return x ** 2  # square it\n",
        'fn main() {\n\tprintln!("hello {}", 42);\n}\n',
        '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
        "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
        "SELECT * FROM users WHERE id = 7 AND name LIKE '%bob%';",
        "x = y != z && w <= 3 || !flag; // C-ish\n/* block */",
    ],
    "numbers": [
        "1234567890",
        "3.14159 2.71828 1e-10 -42 +7",
        "1,000,000 and 12.5% of $1,234.56",
        "Call 555-0123 at 10:30pm on 2022-01-31.",
        "١٢٣ ٤٥٦ ७८९ ½ ¾ Ⅻ ⅷ ² ³",
        "0x1F 0b1010 007",
    ],
    "whitespace": [
        "a  b",
        "a   b    c",
        "  leading spaces",
        "trailing spaces   ",
        "   ",
        " ",
        "a \t b",
        "x\u00a0y\u00a0\u00a0z",
        "wide\u3000space\u3000\u3000here",
        "a\u2028b\u2029c\u0085d",
        "  \n  \n  ",
        "word \u00a0 word",
        "\u2003\u2003em spaces",
    ],
    "newlines": [
        "line1\nline2\n\nline3\n\n\n",
        "\r\nwindows\r\nline endings\r\n",
        "\t\tindented\n\t\t\tmore",
        "a\n b",
        "a \nb",
        "a \n\n b",
        "\n\n\n",
        "end\n",
        "\nstart",
        "tab\tseparated\tvalues\n1\t2\t3\n",
        "\v\fodd\x0bspace\x0c",
    ],
    "contractions": [
        "I'm you're we've they'll he'd it's can't",
        "I'M YOU'RE WE'VE THEY'LL HE'D IT'S",
        "''s '''t 'll've 'red 'dd",
        "rock'n'roll o'clock y'all ma'am",
        "It\u2019s the dog\u2019s bone",
        "'s't're've'm'll'd",
        "!!'s ?'re ' s 'x",
    ],
    "accented": [
        "Café naïve façade résumé São Paulo Ærøskøbing Straße",
        "Cafe\u0301 nai\u0308ve",
        "Ångström Łódź Dvořák Žižek Ðorđe",
        "ÀÉÎÕÜ àéîõü ÿ",
    ],
    "cjk": [
        "你好，世界！今天天气很好。",
        "日本語のテキストです。カタカナとひらがな。",
        "한국어 문장입니다. 안녕하세요!",
        "中文English混合text测试123",
        "𠜎𠜱𠝹𠱓 (supplementary ideographs)",
    ],
    "emoji": [
        "Hello 🤗 world 🌍!",
        "👨\u200d👩\u200d👧\u200d👦 family",
        "👍🏽 thumbs 👍🏿",
        "🏳️\u200d🌈 flag 🇫🇷🇩🇪",
        "❤️❤️❤️ 😀😃😄😁",
        "🤗🤗",
    ],
    "combining": [
        "e\u0301 a\u0300 n\u0303 o\u0308",
        "Z\u0324\u0354\u0367\u0311\u0313a\u0316\u0324l\u036e\u0312g\u0317o\u0319\u0314",
        "क्षत्रिय हिन्दी",
        "ที่นี่ ภาษาไทย",
        "\u0301\u0301 leading marks",
    ],
    "rtl": [
        "مرحبا بالعالم",
        "שלום עולם",
        "mixed English עברית and العربية 123",
        "\u202eright-to-left override\u202c",
        "فارسی: سلام، حال شما چطور است؟",
    ],
    "known": ["Hello!! I'm Andrej Karpathy. It's 2022. w00t :D 🤗"],
}

SPECIAL_TEXTS = [
    "Hello<|endoftext|>World",
    "a <|endoftext|> b",
    "<|endoftext|><|endoftext|>",
    "<|endoftext|>",
    "text\n\n<|endoftext|>\n\nmore  ",
    "almost <|endoftext| and <|endoftext",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--r50k", help="tiktoken's r50k_base.tiktoken, to check the derived ranks against")
    args = parser.parse_args()

    tokens, merges = gpt2_tokens()
    ranks = {t: i for i, t in enumerate(tokens)}
    assert len(ranks) == 50256
    if args.r50k:
        r50k = tiktoken.load.load_tiktoken_bpe(args.r50k)
        assert r50k == ranks, "vocab.bpe does not reproduce r50k_base"
    enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})
    known = enc.encode(TEXTS["known"][0])
    assert known == [15496, 3228, 314, 1101, 10948, 73, 509, 5117, 10036, 13, 632, 338, 33160, 13, 266, 405, 83, 1058, 35, 12520, 97, 245], known

    os.makedirs(OUT, exist_ok=True)
    cases = [{"category": c, "text": t, "ids": enc.encode(t)} for c, texts in TEXTS.items() for t in texts]
    special = [
        {
            "text": t,
            "allowed_ids": enc.encode(t, allowed_special="all"),
            "as_text_ids": enc.encode(t, disallowed_special=()),
        }
        for t in SPECIAL_TEXTS
    ]
    write_json("gpt2_cases.json", {"tiktoken": tiktoken.__version__, "cases": cases, "special": special})

    # The small vocabulary, in three formats.
    _, chars = bytes_to_unicode()
    order, _ = bytes_to_unicode()
    to_text = dict(zip(order, chars))
    small = tokens[: 256 + SMALL_MERGES]
    vocab = {"".join(to_text[b] for b in t): i for i, t in enumerate(small)}
    vocab[EOT] = len(small)
    hf = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=merges[:SMALL_MERGES]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([EOT])
    os.makedirs(f"{OUT}/hf_small", exist_ok=True)
    hf.save(f"{OUT}/hf_small/tokenizer.json")
    os.makedirs(f"{OUT}/openai_small", exist_ok=True)
    write_json("openai_small/vocab.json", vocab)
    with open(f"{OUT}/openai_small/merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{l} {r}\n" for l, r in merges[:SMALL_MERGES]))
    with open(f"{OUT}/small.tiktoken", "w") as f:
        f.write("".join(f"{base64.b64encode(t).decode()} {i}\n" for i, t in enumerate(small)))
    small_enc = tiktoken.Encoding(
        name="small", pat_str=GPT2_PATTERN, mergeable_ranks={t: i for i, t in enumerate(small)}, special_tokens={EOT: len(small)}
    )
    texts = [t for ts in TEXTS.values() for t in ts]
    small_cases = [{"text": t, "hf_ids": hf.encode(t).ids, "tiktoken_ids": small_enc.encode(t)} for t in texts]
    write_json("small_cases.json", {"tokenizers": tokenizers.__version__, "cases": small_cases})
    print(f"wrote {len(cases)} GPT-2 cases, {len(special)} special-token cases, {len(small_cases)} small-vocabulary cases to {OUT}")


def write_json(name, value):
    with open(f"{OUT}/{name}", "w", encoding="utf-8") as f:
        json.dump(value, f, ensure_ascii=False, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
