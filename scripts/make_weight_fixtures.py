#!/usr/bin/env python3
"""Write the tiny fixture model (tests/fixtures/tiny, made by make_fixtures.py) in the other
weight formats that the Rust code reads, each by the other tool's own writer.

  openai    tests/fixtures/tiny_openai/: OpenAI's GPT-2 checkpoint directory as OpenAI
            published it (hparams.json, checkpoint, model.ckpt.index,
            model.ckpt.data-00000-of-00001, model.ckpt.meta, encoder.json, vocab.bpe), written
            by TensorFlow's tf.compat.v1.train.Saver from variables named and shaped as in
            openai/gpt-2 src/model.py: model/wte [V, C], model/wpe [T, C],
            model/h{i}/ln_1/{g,b} [C], model/h{i}/attn/c_attn/{w [1, C, 3C], b [3C]},
            model/h{i}/attn/c_proj/{w [1, C, C], b}, model/h{i}/ln_2/{g,b},
            model/h{i}/mlp/c_fc/{w [1, C, 4C], b}, model/h{i}/mlp/c_proj/{w [1, 4C, C], b},
            model/ln_f/{g,b}.  The tokenizer files hold a 96-token byte-level vocabulary
            (bytes 0x20..0x7f, no merges) that fits the tiny model.
            Needs: tensorflow-cpu, safetensors, numpy (no torch).
  llmc      tests/fixtures/tiny_llmc.bin (fp32, version 3) and tiny_llmc_bf16.bin (bf16,
            version 5): llm.c's checkpoint format, by a copy of write_model / write_tensors /
            pad_vocab from llm.c's train_gpt2.py (whose model is nanoGPT's, with nn.Linear
            weights [out, in], i.e. the transpose of Hugging Face's Conv1D [in, out]).  The
            only change: pad_vocab's `assert V == 50257` is dropped, so the tiny vocabulary
            (96) pads to 128.  Needs: torch, safetensors.
  sharded   tests/fixtures/tiny_sharded/: the same model saved by transformers with
            save_pretrained(max_shard_size="60KB"): model-0000k-of-0000n.safetensors +
            model.safetensors.index.json.  Needs: torch, transformers.

The weights are the exact float32 values of tests/fixtures/tiny/model.safetensors, so every
format must give tiny_reference.safetensors' logits.

    /path/to/tf-venv/bin/python scripts/make_weight_fixtures.py openai
    /path/to/torch-venv/bin/python scripts/make_weight_fixtures.py llmc sharded
"""

import argparse
import json
import os
import shutil

import numpy as np
from safetensors.numpy import load_file

from byte_level import bytes_to_unicode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TINY = os.path.join(FIXTURES, "tiny")


def tiny_weights():
    """The tiny model's config and tensors, HF names without the `transformer.` prefix."""
    with open(os.path.join(TINY, "config.json")) as f:
        config = json.load(f)
    tensors = load_file(os.path.join(TINY, "model.safetensors"))
    tensors = {k.removeprefix("transformer."): v for k, v in tensors.items() if k != "lm_head.weight"}
    return config, tensors


def make_openai():
    import tensorflow as tf

    config, w = tiny_weights()
    out = os.path.join(FIXTURES, "tiny_openai")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    hparams = {
        "n_vocab": config["vocab_size"],
        "n_ctx": config["n_positions"],
        "n_embd": config["n_embd"],
        "n_head": config["n_head"],
        "n_layer": config["n_layer"],
    }
    with open(os.path.join(out, "hparams.json"), "w") as f:
        json.dump(hparams, f, indent=2)

    # TensorFlow name -> value; Conv1D weights get OpenAI's leading 1.
    variables = {"model/wte": w["wte.weight"], "model/wpe": w["wpe.weight"]}
    for i in range(config["n_layer"]):
        for ln in ["ln_1", "ln_2"]:
            variables[f"model/h{i}/{ln}/g"] = w[f"h.{i}.{ln}.weight"]
            variables[f"model/h{i}/{ln}/b"] = w[f"h.{i}.{ln}.bias"]
        for conv in ["attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"]:
            hf = f"h.{i}." + conv.replace("/", ".")
            variables[f"model/h{i}/{conv}/w"] = w[hf + ".weight"][None]
            variables[f"model/h{i}/{conv}/b"] = w[hf + ".bias"]
    variables["model/ln_f/g"] = w["ln_f.weight"]
    variables["model/ln_f/b"] = w["ln_f.bias"]

    graph = tf.Graph()
    with graph.as_default():
        # Values are fed in, not baked into the graph, so model.ckpt.meta stays small.
        tf_vars = {
            name: tf.compat.v1.get_variable(name, value.shape, tf.float32, tf.compat.v1.zeros_initializer())
            for name, value in variables.items()
        }
        saver = tf.compat.v1.train.Saver(var_list=list(tf_vars.values()))
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for name, var in tf_vars.items():
                var.load(variables[name], sess)
            saver.save(sess, os.path.join(out, "model.ckpt"))
    # The checkpoint file names the prefix relative to the directory, as in OpenAI's.
    with open(os.path.join(out, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n')

    # Read it back with TensorFlow's own reader: the values must be the fixture's.
    reader = tf.train.load_checkpoint(os.path.join(out, "model.ckpt"))
    for name, value in variables.items():
        assert np.array_equal(reader.get_tensor(name), value), name

    alphabet = dict(zip(*bytes_to_unicode()))
    encoder = {alphabet[b]: b - 0x20 for b in range(0x20, 0x20 + config["vocab_size"])}
    with open(os.path.join(out, "encoder.json"), "w") as f:
        json.dump(encoder, f)
    with open(os.path.join(out, "vocab.bpe"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    print("wrote", out, sorted(os.listdir(out)))


# --- llm.c's writer (train_gpt2.py), on Linear-layout tensors ----------------------------------


def make_llmc():
    import torch
    import torch.nn.functional as F

    config, w = tiny_weights()
    L = config["n_layer"]
    # nanoGPT / llm.c names, Linear layout: the Conv1D weights transposed.
    params = {}
    for name, value in w.items():
        t = torch.from_numpy(value.copy())
        if name.startswith("h.") and name.endswith(".weight") and t.ndim == 2:
            t = t.t().contiguous()
        params["transformer." + name] = t

    def write_fp32(tensor, file):
        t = tensor.detach().cpu().to(torch.float32)
        file.write(t.numpy().tobytes())

    def write_bf16(tensor, file):
        t = tensor.detach().cpu().to(torch.bfloat16)
        t = t.view(torch.int16)  # numpy has no bf16: reinterpret as int16
        file.write(t.numpy().tobytes())

    def write_tensors(model_tensors, L, file, dtype):
        write_fun = write_fp32 if dtype == "float32" else write_bf16
        write_fun(model_tensors["transformer.wte.weight"], file)  # (V, C)
        write_fun(model_tensors["transformer.wpe.weight"], file)  # (T, C)
        for key in [
            "ln_1.weight", "ln_1.bias",  # (L, C)
            "attn.c_attn.weight", "attn.c_attn.bias",  # (L, 3C, C), (L, 3C)
            "attn.c_proj.weight", "attn.c_proj.bias",  # (L, C, C), (L, C)
            "ln_2.weight", "ln_2.bias",  # (L, C)
            "mlp.c_fc.weight", "mlp.c_fc.bias",  # (L, 4C, C), (L, 4C)
            "mlp.c_proj.weight", "mlp.c_proj.bias",  # (L, C, 4C), (L, C)
        ]:
            for i in range(L):
                write_fun(model_tensors[f"transformer.h.{i}.{key}"], file)
        write_fun(model_tensors["transformer.ln_f.weight"], file)  # (C, )
        write_fun(model_tensors["transformer.ln_f.bias"], file)  # (C, )

    def pad_vocab(tensor, multiple=128, value=0):
        V, C = tensor.shape
        Vp = ((V + multiple - 1) // multiple) * multiple
        pad_rows = Vp - V
        padded = tensor if pad_rows == 0 else F.pad(tensor, (0, 0, 0, pad_rows), value=value)
        assert padded.shape == (Vp, C)
        return padded

    def write_model(params, filename, dtype):
        version = {"float32": 3, "bfloat16": 5}[dtype]
        header = torch.zeros(256, dtype=torch.int32)
        header[0] = 20240326  # magic
        header[1] = version
        header[2] = config["n_positions"]  # block_size
        header[3] = config["vocab_size"]
        header[4] = config["n_layer"]
        header[5] = config["n_head"]
        header[6] = config["n_embd"]
        params = dict(params)
        wte_padded = pad_vocab(params["transformer.wte.weight"])
        params["transformer.wte.weight"] = wte_padded
        header[7] = wte_padded.size(0)  # padded vocab size
        with open(filename, "wb") as file:
            file.write(header.numpy().tobytes())
            write_tensors(params, L, file, dtype)
        print("wrote", filename, os.path.getsize(filename), "bytes")

    write_model(params, os.path.join(FIXTURES, "tiny_llmc.bin"), "float32")
    write_model(params, os.path.join(FIXTURES, "tiny_llmc_bf16.bin"), "bfloat16")


def make_sharded():
    from transformers import GPT2LMHeadModel

    out = os.path.join(FIXTURES, "tiny_sharded")
    shutil.rmtree(out, ignore_errors=True)
    model = GPT2LMHeadModel.from_pretrained(TINY)
    model.save_pretrained(out, safe_serialization=True, max_shard_size="60KB")
    assert os.path.exists(os.path.join(out, "model.safetensors.index.json")), "not sharded"
    print("wrote", out, sorted(os.listdir(out)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="+", choices=["openai", "llmc", "sharded"])
    args = ap.parse_args()
    for what in args.what:
        {"openai": make_openai, "llmc": make_llmc, "sharded": make_sharded}[what]()


if __name__ == "__main__":
    main()
