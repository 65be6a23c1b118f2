#!/usr/bin/env python3
"""Make the LoRA (Hugging Face PEFT) parity fixtures under tests/fixtures/.

What it makes (deterministic: torch.manual_seed, float32, CPU, dropout 0), on the tiny random
GPT-2 of make_fixtures.py (tests/fixtures/tiny):

  tests/fixtures/tiny_lora/             a PEFT LoRA adapter saved with save_pretrained:
                                        adapter_config.json, adapter_model.safetensors
                                        (r 4, lora_alpha 8, target_modules c_attn,
                                        attn.c_proj, c_fc, mlp.c_proj, fan_in_fan_out true);
                                        lora_B is set to random values (PEFT starts it at zero,
                                        which would test nothing)
  tests/fixtures/tiny_lora_reference.json
        input_ids    [2, 12]            random ids in [0, 96)
        logits       [2, 12, 96]        PeftModel(input_ids).logits, the adapter unmerged
        merged_max_abs_diff             max |logits of merge_and_unload() - unmerged logits|
  tests/fixtures/tiny_lora_wte/         the same kind of adapter (r 4, lora_alpha 8, c_attn and
                                        c_fc) that also trains the token embedding:
                                        modules_to_save ["wte", "lm_head"], both copies set to
                                        the same perturbed embedding (our model ties them)
  tests/fixtures/tiny_lora_wte_reference.json   as tiny_lora_reference.json, for that adapter

How to run (once, by a developer; needs torch + transformers + peft):

    python scripts/make_lora_fixtures.py                 # (re)writes the fixtures
    python scripts/make_lora_fixtures.py --check-load DIR --merged MERGED
        loads the adapter in DIR (one `gpt2 train --init tests/fixtures/tiny --lora-r ...`
        wrote) on tests/fixtures/tiny with PeftModel.from_pretrained, and prints the max abs
        difference of its logits against those of MERGED (`gpt2 convert --from
        tests/fixtures/tiny --adapter DIR --to hf --out MERGED`); exits 1 above 1e-4. Used
        once to prove that PEFT loads the adapters we write and computes what we do.
"""
import argparse
import json
import pathlib

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GPT2LMHeadModel

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--check-load", type=pathlib.Path)
    parser.add_argument("--merged", type=pathlib.Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    base = GPT2LMHeadModel.from_pretrained(FIXTURES / "tiny").eval()
    if args.check_load:
        ids = torch.tensor(json.loads((FIXTURES / "tiny_lora_reference.json").read_text())["input_ids"])
        with torch.no_grad():
            plain = base(ids).logits
            model = PeftModel.from_pretrained(base, str(args.check_load)).eval()
            logits = model(ids).logits
            ours = GPT2LMHeadModel.from_pretrained(str(args.merged)).eval()(ids).logits
        peft = model.peft_config["default"]
        print("PEFT loaded r", peft.r, "alpha", peft.lora_alpha, "targets", sorted(peft.target_modules))
        print("the adapter changes the logits by", (logits - plain).abs().max().item())
        diff = (logits - ours).abs().max().item()
        print("PEFT's logits vs our merged model's: max abs diff", diff)
        raise SystemExit(0 if diff <= 1e-4 else 1)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["c_attn", "attn.c_proj", "c_fc", "mlp.c_proj"],
        fan_in_fan_out=True,
        task_type="CAUSAL_LM",
    )
    write_fixture(get_peft_model(base, config).eval(), "tiny_lora", None)
    torch.manual_seed(1)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["c_attn", "c_fc"],
        modules_to_save=["wte", "lm_head"],
        fan_in_fan_out=True,
        task_type="CAUSAL_LM",
    )
    base = GPT2LMHeadModel.from_pretrained(FIXTURES / "tiny").eval()
    wte = base.transformer.wte.weight.detach().clone()
    write_fixture(get_peft_model(base, config).eval(), "tiny_lora_wte", wte + torch.randn_like(wte) * 0.1)


def write_fixture(model, name, trained_wte):
    """Sets lora_B (and the copies of wte and lm_head to `trained_wte`) and writes the adapter
    and its reference logits."""
    with torch.no_grad():
        for param_name, p in model.named_parameters():
            if "lora_B" in param_name:
                p.copy_(torch.randn_like(p) * 0.1)
            elif "modules_to_save" in param_name:
                p.copy_(trained_wte)
    out = FIXTURES / name
    model.save_pretrained(out)
    (out / "README.md").unlink()  # PEFT's model card: nothing the tests read
    # The base as a path relative to the repository, not this machine's absolute one.
    saved = json.loads((out / "adapter_config.json").read_text())
    saved["base_model_name_or_path"] = "tests/fixtures/tiny"
    (out / "adapter_config.json").write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    ids = torch.randint(0, 96, (2, 12))
    with torch.no_grad():
        logits = model(ids).logits
        merged = model.merge_and_unload()(ids).logits
    reference = {
        "input_ids": ids.tolist(),
        "logits": [[[round(x, 7) for x in row] for row in seq] for seq in logits.tolist()],
        "merged_max_abs_diff": (merged - logits).abs().max().item(),
    }
    (FIXTURES / f"{name}_reference.json").write_text(json.dumps(reference))
    print("wrote", out, f"and {name}_reference.json; merged vs unmerged", reference["merged_max_abs_diff"])


if __name__ == "__main__":
    main()
