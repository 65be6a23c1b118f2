#!/usr/bin/env python3
"""PyTorch peer for the `gpt2 bench` throughput figures.

Runs the same shapes as `gpt2 bench train|forward|generate` in PyTorch (eager, CPU, f32),
so that the two can be run back to back on the same machine and compared:

  train     a step = forward + cross-entropy + backward + clip_grad_norm_(1.0) + AdamW step
            (weight decay 0.1 on 2-D params, fused=False) on random tokens, with a
            nanoGPT-style GPT-2 written below (nn.Linear, F.scaled_dot_product_attention
            with is_causal=True, tanh GELU, pre-LN, tied LM head, dropout 0).
  forward   the same model, forward (logits + loss) only, under torch.no_grad().
  generate  transformers.GPT2LMHeadModel, random init from GPT2Config with the preset's
            sizes, batch 1, generate(do_sample=False, max_new_tokens=N, min_new_tokens=N)
            with its KV cache.  Prefill = a 1-token generate; decode tokens/s =
            (N - 1) / (time of the N-token generate - time of the 1-token generate).

`--dtype bf16`: generate with the model's weights in bfloat16 (model.to(torch.bfloat16)),
train and forward under torch.autocast("cpu", dtype=torch.bfloat16) (f32 master weights).

It prints the median step time, tokens/s and peak RSS (resource.getrusage ru_maxrss);
`--json` prints one object instead: {"tokens_per_s", "step_ms_median", "peak_rss_mb",
("prefill_ms" for generate), ...}.  For generate, a "step" is one decoded token.

`--block-size` is the sequence length T of a batch; with a preset the model keeps the
preset's position table (n_positions = 1024 for the GPT-2 sizes, 256 for `char`); without
one, n_positions is just what the run needs.  --n-layer/--n-head/--n-embd/--vocab-size
override the preset (or the gpt2 sizes when there is no preset).

Examples:
    python scripts/bench_pytorch.py --mode train --preset gpt2 --batch-size 4 --block-size 64 --threads 2
    python scripts/bench_pytorch.py --mode train --preset char --batch-size 8 --block-size 256 --threads 2
    python scripts/bench_pytorch.py --mode generate --preset gpt2 --prompt-tokens 16 --new-tokens 128 --threads 2 --json

Needs torch (and transformers for --mode generate).  Only for benchmarks: the Rust build,
tests and CI never need it.
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {
    # name: (n_layer, n_head, n_embd, vocab_size, n_positions)
    "gpt2": (12, 12, 768, 50257, 1024),
    "gpt2-medium": (24, 16, 1024, 50257, 1024),
    "gpt2-large": (36, 20, 1280, 50257, 1024),
    "gpt2-xl": (48, 25, 1600, 50257, 1024),
    # nanoGPT's shakespeare_char model (65-character vocabulary)
    "char": (6, 6, 384, 65, 256),
}
PRESETS["shakespeare-char"] = PRESETS["char"]


# ---------------------------------------------------------------- nanoGPT-style model
# (also used by scripts/train_pytorch.py)
def _dropout(p):
    return nn.Dropout(p) if p > 0 else nn.Identity()  # no work at all when p = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout=0.0):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_drop = _dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_drop(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, n_embd, dropout=0.0):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd)
        self.c_proj = nn.Linear(4 * n_embd, n_embd)
        self.drop = _dropout(dropout)

    def forward(self, x):
        return self.drop(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, dropout=0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=1e-5)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd, eps=1e-5)
        self.mlp = MLP(n_embd, dropout)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, n_layer, n_head, n_embd, vocab_size, n_positions, dropout=0.0):
        super().__init__()
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(n_positions, n_embd)
        self.drop = _dropout(dropout)
        self.h = nn.ModuleList([Block(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, eps=1e-5)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        B, T = idx.shape
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


# ---------------------------------------------------------------- helpers
def peak_rss_mb():
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def model_dims(args):
    if args.preset:
        n_layer, n_head, n_embd, vocab, npos = PRESETS[args.preset]
    else:
        n_layer, n_head, n_embd, vocab, npos = 12, 12, 768, 50257, None
    n_layer = args.n_layer or n_layer
    n_head = args.n_head or n_head
    n_embd = args.n_embd or n_embd
    vocab = args.vocab_size or vocab
    if npos is None:  # no preset: just enough positions for the run
        npos = args.prompt_tokens + args.new_tokens if args.mode == "generate" else args.block_size
    if n_embd % n_head:
        sys.exit(f"n_embd {n_embd} is not divisible by n_head {n_head}")
    return n_layer, n_head, n_embd, vocab, npos


def autocast(args):
    """bf16 autocast on the CPU for --dtype bf16, else nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bf16")


def bench_model(args, dims):
    n_layer, n_head, n_embd, vocab, npos = dims
    B, T = args.batch_size, args.block_size
    if T > npos:
        sys.exit(f"--block-size {T} exceeds the model's n_positions {npos}")
    model = GPT(n_layer, n_head, n_embd, vocab, npos)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, vocab, (B, T), generator=gen)
    y = torch.randint(0, vocab, (B, T), generator=gen)

    if args.mode == "train":
        model.train()
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=False,
        )

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast(args):
                _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss.item()
    else:
        model.eval()

        def step():
            with torch.no_grad(), autocast(args):
                _, loss = model(x, y)
            return loss.item()

    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t0
        if i >= args.warmup:
            times.append(dt)
        if not args.json:
            print(f"step {i:3d}{' (warm-up)' if i < args.warmup else ''}: {dt * 1e3:9.1f} ms  loss {loss:.4f}",
                  file=sys.stderr)
    med = statistics.median(times)
    return {
        "step_ms_median": med * 1e3,
        "tokens_per_s": B * T / med,
        "step_ms": [t * 1e3 for t in times],
        "n_params": n_params,
        "batch_size": B,
        "block_size": T,
    }


def bench_generate(args, dims):
    from transformers import GPT2Config, GPT2LMHeadModel

    n_layer, n_head, n_embd, vocab, npos = dims
    P, N = args.prompt_tokens, args.new_tokens
    if N < 2:
        sys.exit("--new-tokens must be >= 2")
    if P + N > npos:
        sys.exit(f"prompt + new tokens = {P + N} exceeds n_positions {npos}")
    cfg = GPT2Config(vocab_size=vocab, n_positions=npos, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(cfg).float().eval()
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (1, P), generator=gen)
    attn = torch.ones_like(prompt)

    def run(n):
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(prompt, attention_mask=attn, do_sample=False, max_new_tokens=n,
                                 min_new_tokens=n, pad_token_id=0, eos_token_id=None)
        dt = time.perf_counter() - t0
        assert out.shape[1] == P + n, out.shape
        return dt

    prefill, decode_per_tok = [], []
    for i in range(args.warmup + args.steps):
        t1 = run(1)
        tn = run(N)
        if i >= args.warmup:
            prefill.append(t1)
            decode_per_tok.append((tn - t1) / (N - 1))
        if not args.json:
            print(f"run {i:3d}{' (warm-up)' if i < args.warmup else ''}: prefill {t1 * 1e3:8.1f} ms,"
                  f" {N} new tokens {tn * 1e3:9.1f} ms", file=sys.stderr)
    med = statistics.median(decode_per_tok)
    return {
        "tokens_per_s": 1.0 / med,
        "step_ms_median": med * 1e3,
        "prefill_ms": statistics.median(prefill) * 1e3,
        "step_ms": [t * 1e3 for t in decode_per_tok],
        "n_params": n_params,
        "prompt_tokens": P,
        "new_tokens": N,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=["train", "forward", "generate"], default="train")
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="model size (default gpt2 sizes when no --n-* flags are given)")
    ap.add_argument("--n-layer", type=int)
    ap.add_argument("--n-head", type=int)
    ap.add_argument("--n-embd", type=int)
    ap.add_argument("--vocab-size", type=int)
    ap.add_argument("--block-size", type=int, default=64, help="sequence length T (train/forward)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="timed steps (generate: timed runs)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32",
                    help="bf16: bf16 weights (generate), bf16 autocast (train, forward)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        sys.exit("--steps must be >= 1 and --warmup >= 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dims = model_dims(args)
    res = bench_generate(args, dims) if args.mode == "generate" else bench_model(args, dims)
    n_layer, n_head, n_embd, vocab, npos = dims
    res.update({
        "peak_rss_mb": peak_rss_mb(),
        "mode": args.mode,
        "dtype": args.dtype,
        "preset": args.preset,
        "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "vocab_size": vocab, "n_positions": npos,
        "threads": args.threads,
        "torch": torch.__version__,
    })
    if args.json:
        print(json.dumps(res))
        return
    print(f"pytorch {args.mode}: {res['n_params']:,} params, L={n_layer} H={n_head} C={n_embd} "
          f"V={vocab}, {args.dtype}, {args.threads} threads")
    if args.mode == "generate":
        print(f"prompt {res['prompt_tokens']} tokens, {res['new_tokens']} new tokens")
        print(f"prefill          {res['prefill_ms']:10.1f} ms")
        print(f"decode           {res['tokens_per_s']:10.1f} tokens/s  ({res['step_ms_median']:.2f} ms/token)")
    else:
        print(f"B={res['batch_size']} T={res['block_size']}")
        print(f"step (median)    {res['step_ms_median']:10.1f} ms")
        print(f"throughput       {res['tokens_per_s']:10.1f} tokens/s")
    print(f"peak RSS         {res['peak_rss_mb']:10.1f} MB")


if __name__ == "__main__":
    main()
