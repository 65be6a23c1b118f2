#!/usr/bin/env python3
"""Make the Hugging Face parity fixtures under tests/fixtures/.

What it makes (all deterministic: torch.manual_seed, float32, CPU, dropout 0):

  tests/fixtures/tiny/                  a small random transformers.GPT2LMHeadModel saved
                                        with save_pretrained(safe_serialization=True):
                                        config.json, generation_config.json,
                                        model.safetensors
  tests/fixtures/tiny_reference.safetensors
        input_ids  I32 [2, 16]          random ids in [0, 96)
        targets    I32 [2, 16]          random ids, a few set to -100 (ignore index)
        logits     F32 [2, 16, 96]      model(input_ids).logits
        grad.<name>   F32               d loss / d param for every parameter, HF names
                                        without the `transformer.` prefix; wte's gradient
                                        includes the tied LM head's contribution
        adamw3.<name> F32               every parameter after 3 AdamW steps with clipping
  tests/fixtures/tiny_reference.json    loss, optimizer hyper-parameters, grad_clip,
                                        pre-clip grad norms and losses of the 3 steps
  tests/fixtures/tiny_generate.json     prompt_ids, greedy_ids (HF generate, do_sample=False,
                                        60 new tokens, prompt included), min_margin

The loss is F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-100):
the mean over non-ignored positions, with NO shift (targets are already aligned with the
logits).  The AdamW reference is torch.optim.AdamW(lr=1e-2, betas=(0.9, 0.95), eps=1e-8),
weight_decay 0.1 for parameters with dim >= 2 and 0.0 for the rest; each step is
zero_grad, forward, loss, backward, clip_grad_norm_(params, grad_clip), step.  Note that
torch's clip_grad_norm_ scales by grad_clip / (total_norm + 1e-6).  The key third of
each c_attn.bias has an exact gradient of 0 (softmax shift invariance), so its float
gradient is rounding noise that Adam amplifies: tiny_reference.json's "noise_dominated"
names those slices; compare them after 3 steps to ~steps * lr, not 1e-5.

How to run (once, by a developer; needs torch + transformers + safetensors):

    python scripts/make_fixtures.py                 # (re)writes tests/fixtures/
    python scripts/make_fixtures.py --check-load DIR
        loads DIR with GPT2LMHeadModel.from_pretrained, runs the fixture input_ids,
        prints the logits and the max abs difference against tiny_reference's logits;
        exits 1 if it is above --tol (default 1e-4).  Used to prove that a model saved by
        the Rust code loads in transformers and gives the same logits.

The Rust tests and CI never need this script or Python: they read the committed fixtures.
"""

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)

from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")

SEED = 1234
VOCAB = 96
B, T = 2, 16
IGNORE = -100
LR, BETA1, BETA2, EPS, WD = 1e-2, 0.9, 0.95, 1e-8, 0.1
N_STEPS = 3
PROMPT_LEN = 8
NEW_TOKENS = 60
MIN_MARGIN = 1e-3
ATTN_IMPL = "eager"  # plain softmax(QK^T/sqrt(d) + causal mask) V: the most transparent reference


def tiny_config():
    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=None,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        initializer_range=0.2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        # The GPT2Config defaults (50256) lie outside a 96-token vocabulary; the tiny
        # model has no special tokens.
        bos_token_id=None,
        eos_token_id=None,
    )
    cfg._attn_implementation = ATTN_IMPL  # not written to config.json
    return cfg


def strip(name):
    return name[len("transformer."):] if name.startswith("transformer.") else name


def loss_fn(logits, targets):
    return F.cross_entropy(logits.view(-1, VOCAB), targets.view(-1).long(), ignore_index=IGNORE)


def params_by_name(model):
    # named_parameters() deduplicates the tied lm_head.weight (it *is* transformer.wte.weight).
    return [(strip(n), p) for n, p in model.named_parameters()]


def adamw_steps(model, named, input_ids, targets, clip):
    params = [p for _, p in named]
    decay = [p for _, p in named if p.dim() >= 2]
    no_decay = [p for _, p in named if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
        lr=LR, betas=(BETA1, BETA2), eps=EPS, foreach=False, fused=False,
    )
    losses, norms = [], []
    for _ in range(N_STEPS):
        opt.zero_grad(set_to_none=True)
        step_loss = loss_fn(model(input_ids).logits, targets)
        step_loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=clip)
        opt.step()
        losses.append(step_loss.item())
        norms.append(norm.item())
    return losses, norms


def make_batch(gen):
    input_ids = torch.randint(0, VOCAB, (B, T), generator=gen, dtype=torch.int64)
    targets = torch.randint(0, VOCAB, (B, T), generator=gen, dtype=torch.int64)
    # A few ignored positions, in both rows, including the first and the last position.
    for b, t in [(0, 0), (0, 5), (0, 6), (1, 11), (1, T - 1)]:
        targets[b, t] = IGNORE
    return input_ids, targets


def greedy_with_margin(model, prompt):
    ids = torch.tensor([prompt], dtype=torch.int64)
    with torch.no_grad():
        out = model.generate(
            ids,
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            pad_token_id=0,
            eos_token_id=None,
            return_dict_in_generate=True,
            output_logits=True,
        )
        seq = out.sequences[0]
        assert seq.shape[0] == PROMPT_LEN + NEW_TOKENS, seq.shape
        # Margins from the KV-cached logits that generate() used...
        step_logits = torch.stack([l[0] for l in out.logits])  # [NEW, V]
        # ...and from one full forward over the whole sequence (what a Rust test without
        # the cache would see); keep the smaller.
        full = model(seq[None, :-1]).logits[0, PROMPT_LEN - 1:]  # [NEW, V]
        margins = []
        for lg in (step_logits, full):
            top2 = lg.topk(2, dim=-1).values
            margins.append((top2[:, 0] - top2[:, 1]).min().item())
            assert torch.equal(lg.argmax(-1), seq[PROMPT_LEN:]), "greedy choice differs"
        return seq.tolist(), min(margins)


def make():
    os.makedirs(FIXTURES, exist_ok=True)
    torch.manual_seed(SEED)
    cfg = tiny_config()
    model = GPT2LMHeadModel(cfg).float().eval()  # eval: no dropout anyway
    assert model.lm_head.weight is model.transformer.wte.weight

    tiny_dir = os.path.join(FIXTURES, "tiny")
    model.save_pretrained(tiny_dir, safe_serialization=True)

    gen = torch.Generator().manual_seed(SEED + 1)
    input_ids, targets = make_batch(gen)

    # --- logits, loss and gradients at the initial parameters ---------------------------
    named = params_by_name(model)
    params = [p for _, p in named]
    model.zero_grad(set_to_none=True)
    logits = model(input_ids).logits
    loss = loss_fn(logits, targets)
    loss.backward()
    tensors = {
        "input_ids": input_ids.to(torch.int32),
        "targets": targets.to(torch.int32),
        "logits": logits.detach().clone().contiguous(),
    }
    for n, p in named:
        tensors["grad." + n] = p.grad.detach().clone().contiguous()
    first_norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()

    # --- 3 AdamW steps with clipping -----------------------------------------------------
    # grad_clip starts at half of the first step's gradient norm (2 significant figures)
    # and is halved until clipping triggers on every one of the steps.
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    clip = float(f"{first_norm / 2:.2g}")
    while True:
        model.load_state_dict(init_state)
        losses, norms = adamw_steps(model, named, input_ids, targets, clip)
        if all(n > clip for n in norms):
            break
        clip = float(f"{clip / 2:.2g}")
    assert losses[0] == loss.item()
    for n, p in named:
        tensors["adamw3." + n] = p.detach().clone().contiguous()
    save_file(tensors, os.path.join(FIXTURES, "tiny_reference.safetensors"))

    ref = {
        "loss": loss.item(),
        "lr": LR,
        "beta1": BETA1,
        "beta2": BETA2,
        "eps": EPS,
        "weight_decay": WD,
        "grad_clip": clip,
        "grad_norms": norms,
        "losses": losses,
        "ignore_index": IGNORE,
        "steps": N_STEPS,
        "clip_formula": "g *= min(1, grad_clip / (total_norm + 1e-6))",
        "decay_params": [n for n, p in named if p.dim() >= 2],
        # The key bias (c_attn.bias[n_embd:2*n_embd]) has an exact gradient of 0: adding a
        # constant to every score of a query row leaves the softmax unchanged.  Its float
        # gradient is rounding noise (~1e-10), which Adam divides by sqrt(v) + eps ~ 1e-9 and
        # turns into updates of up to ~lr per step.  So adamw3.h.{i}.attn.c_attn.bias over
        # that slice depends on the rounding of the implementation: compare it with a
        # tolerance of about steps * lr, everything else to 1e-5.
        "noise_dominated": {
            "adamw3": ["h.%d.attn.c_attn.bias[%d:%d]" % (i, cfg.n_embd, 2 * cfg.n_embd)
                       for i in range(cfg.n_layer)],
            "max_abs_grad_at_init": max(
                tensors["grad.h.%d.attn.c_attn.bias" % i][cfg.n_embd:2 * cfg.n_embd].abs().max().item()
                for i in range(cfg.n_layer)),
            "tolerance_hint": N_STEPS * LR,
        },
        "seed": SEED,
        "torch": torch.__version__,
    }
    with open(os.path.join(FIXTURES, "tiny_reference.json"), "w") as f:
        json.dump(ref, f, indent=1)  # json writes floats with repr: full precision
        f.write("\n")

    # --- greedy generation from the saved (untrained) model ------------------------------
    model = GPT2LMHeadModel.from_pretrained(tiny_dir, attn_implementation=ATTN_IMPL).float().eval()
    pgen = torch.Generator().manual_seed(SEED + 2)
    for attempt in range(100):
        prompt = torch.randint(0, VOCAB, (PROMPT_LEN,), generator=pgen).tolist()
        greedy, margin = greedy_with_margin(model, prompt)
        if margin >= MIN_MARGIN:
            break
        print(f"prompt {prompt}: min_margin {margin:.3g} < {MIN_MARGIN}, trying another", file=sys.stderr)
    else:
        raise SystemExit("no prompt with a clear greedy margin found")
    with open(os.path.join(FIXTURES, "tiny_generate.json"), "w") as f:
        json.dump({
            "prompt_ids": prompt,
            "greedy_ids": greedy,
            "max_new_tokens": NEW_TOKENS,
            "min_margin": margin,
        }, f)
        f.write("\n")

    for d, _, files in os.walk(FIXTURES):  # safetensors writes 0600; make them readable
        for name in files:
            os.chmod(os.path.join(d, name), 0o644)

    print(json.dumps({k: ref[k] for k in ("loss", "grad_clip", "grad_norms", "losses")}))
    print("min_margin", margin, "prompt", prompt)
    st = load_file(os.path.join(tiny_dir, "model.safetensors"))
    print("tiny/model.safetensors:", sorted(st))


def check_load(path, tol):
    ref = load_file(os.path.join(FIXTURES, "tiny_reference.safetensors"))
    model = GPT2LMHeadModel.from_pretrained(path, attn_implementation=ATTN_IMPL).float().eval()
    with torch.no_grad():
        logits = model(ref["input_ids"].long()).logits
    torch.set_printoptions(precision=6, sci_mode=False)
    print("logits", tuple(logits.shape))
    print(logits)
    if logits.shape != ref["logits"].shape:
        print(f"shape mismatch: {tuple(logits.shape)} vs reference {tuple(ref['logits'].shape)}")
        return 1
    diff = (logits - ref["logits"]).abs().max().item()
    print(f"max_abs_diff {diff:.3e}")
    return 0 if diff <= tol else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check-load", metavar="DIR", help="load DIR in transformers and compare logits")
    ap.add_argument("--tol", type=float, default=1e-4, help="max abs logit difference for --check-load")
    args = ap.parse_args()
    if args.check_load:
        sys.exit(check_load(args.check_load, args.tol))
    make()


if __name__ == "__main__":
    main()
