#!/usr/bin/env python3
"""nanoGPT-style char-level training in PyTorch: the peer for the training acceptance run.

Trains the nanoGPT-style GPT-2 of scripts/bench_pytorch.py (pre-LN, tanh GELU,
F.scaled_dot_product_attention, tied head, biases) on data/tinyshakespeare.txt at the
character level, the way nanoGPT's train.py does, so that `gpt2 train` can be compared
with it (final val loss, wall time) on the same machine:

  data       vocabulary = sorted(set(text)); the first 90% of the characters train, the
             last 10% validate; a batch is batch_size random windows of block_size + 1
             characters (x = window[:-1], y = window[1:]).
  optimiser  AdamW(betas=(0.9, beta2), eps=1e-8), weight decay on the 2-D parameters
             (weights and embeddings) only; linear warm-up for warmup_iters
             (lr * (it + 1) / (warmup_iters + 1)), cosine decay to min_lr at lr_decay_iters,
             min_lr after; global grad-norm clipping.
  eval       at iteration 0, every eval_interval and after the last step: the mean loss
             over eval_iters random batches of each split (model.eval(), no grad).
             Unlike nanoGPT (which takes one more step after its last eval), exactly
             max_iters steps are taken and the final eval comes after the last one.

It prints train/val loss at each eval, then the total wall time and the final val loss;
`--json` also prints that summary as one JSON object on the last line.

    python scripts/train_pytorch.py                     # the defaults below, 2 threads
    python scripts/train_pytorch.py --max-iters 20 --eval-interval 10 --json   # smoke test

Needs torch only.  For the comparison only: the Rust build, tests and CI never need it.
"""

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_pytorch import GPT, peak_rss_mb  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "tinyshakespeare.txt"))
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--max-iters", type=int, default=2000)
    ap.add_argument("--lr", "--learning-rate", dest="lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-4)
    ap.add_argument("--warmup-iters", type=int, default=100)
    ap.add_argument("--lr-decay-iters", type=int, default=2000)
    ap.add_argument("--no-decay-lr", action="store_true", help="constant lr (no warm-up or cosine)")
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.99)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0, help="0 disables clipping")
    ap.add_argument("--eval-interval", type=int, default=500)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--log-interval", type=int, default=100, help="print the train-batch loss every N iters (0: never)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object at the end")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    with open(args.data, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    splits = {"train": data[:n], "val": data[n:]}
    vocab = len(chars)
    B, T = args.batch_size, args.block_size

    def get_batch(split):
        d = splits[split]
        ix = torch.randint(len(d) - T, (B,))
        x = torch.stack([d[i:i + T] for i in ix])
        y = torch.stack([d[i + 1:i + 1 + T] for i in ix])
        return x, y

    model = GPT(args.n_layer, args.n_head, args.n_embd, vocab, T, dropout=args.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=1e-8, fused=False,
    )

    def get_lr(it):
        if args.no_decay_lr:
            return args.lr
        if it < args.warmup_iters:
            return args.lr * (it + 1) / (args.warmup_iters + 1)
        if it > args.lr_decay_iters:
            return args.min_lr
        ratio = (it - args.warmup_iters) / max(1, args.lr_decay_iters - args.warmup_iters)
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
        return args.min_lr + coeff * (args.lr - args.min_lr)

    @torch.no_grad()
    def estimate_loss():
        model.eval()
        out = {}
        for split in ("train", "val"):
            losses = torch.zeros(args.eval_iters)
            for k in range(args.eval_iters):
                x, y = get_batch(split)
                losses[k] = model(x, y)[1].item()
            out[split] = losses.mean().item()
        model.train()
        return out

    print(f"{len(text):,} characters, vocab {vocab}, train {len(splits['train']):,} / val {len(splits['val']):,}; "
          f"{n_params:,} parameters; {args.threads} threads", flush=True)
    evals = []
    train_s = 0.0
    t_start = time.perf_counter()
    model.train()
    for it in range(args.max_iters + 1):
        if it % args.eval_interval == 0 or it == args.max_iters:
            losses = estimate_loss()
            evals.append({"iter": it, "train_loss": losses["train"], "val_loss": losses["val"]})
            print(f"step {it}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}", flush=True)
        if it == args.max_iters:
            break
        t0 = time.perf_counter()
        lr = get_lr(it)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = get_batch("train")
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        loss_f = loss.item()
        train_s += time.perf_counter() - t0
        if args.log_interval and it % args.log_interval == 0:
            print(f"iter {it}: loss {loss_f:.4f}, lr {lr:.2e}, {train_s / (it + 1) * 1e3:.1f} ms/iter avg",
                  flush=True)
    wall_s = time.perf_counter() - t_start

    summary = {
        "final_val_loss": evals[-1]["val_loss"],
        "final_train_loss": evals[-1]["train_loss"],
        "wall_s": wall_s,
        "train_s": train_s,
        "iters": args.max_iters,
        "tokens_per_s": args.max_iters * B * T / train_s if train_s > 0 else None,
        "n_params": n_params,
        "peak_rss_mb": peak_rss_mb(),
        "evals": evals,
        "config": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "torch": torch.__version__,
    }
    print(f"total wall time {wall_s:.1f} s ({train_s:.1f} s in training steps), "
          f"final val loss {summary['final_val_loss']:.4f}")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
