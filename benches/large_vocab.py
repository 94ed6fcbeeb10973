"""A 256k vocabulary (Gemma's): the log-softmax working memory stays bounded by --batch-tokens.

One run does all of it and prints the figures:
  1. makes a random Gemma-2-shaped checkpoint with Gemma's 256,000-token vocabulary (hidden
     512, 2 layers, tied embeddings: the vocabulary dominates) and pairs with long responses;
  2. runs `apscore run` on the CPU at several --batch-tokens and reads each peak memory from
     summary.json;
  3. prints each peak beside what full logits of one batch would take (`batch tokens ×
     vocabulary × 4` bytes, what a framework that materialises the logits holds) and apscore's
     own estimate (`inspect-model`'s arithmetic).

    python3 benches/large_vocab.py --apscore target/release/apscore

Needs torch, transformers and pyarrow (not needed by the tests).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model_bench import FIXTURES, make_pairs  # noqa: E402

VOCAB = 256_000


def make_checkpoint(path):
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM
    if os.path.exists(os.path.join(path, "config.json")):
        return
    os.makedirs(path, exist_ok=True)
    cfg = Gemma2Config(vocab_size=VOCAB, hidden_size=512, intermediate_size=1024,
                       num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
                       head_dim=64, query_pre_attn_scalar=64, bos_token_id=None, eos_token_id=2,
                       pad_token_id=0)
    torch.manual_seed(0)
    Gemma2ForCausalLM(cfg).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(FIXTURES, "models", "qwen2-tied", name), path)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apscore", default=os.path.join(HERE, "..", "target", "release", "apscore"))
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--batch-tokens", default="512,2048,8192")
    ap.add_argument("--work", default="/tmp/apscore-vocab")
    args = ap.parse_args()

    model = os.path.join(args.work, "gemma2-256k")
    make_checkpoint(model)
    data = os.path.join(args.work, f"pairs-{args.pairs}.parquet")
    make_pairs(data, args.pairs)
    inspect = subprocess.run([args.apscore, "inspect-model", model], check=True,
                             capture_output=True, text=True).stdout
    print(f"Gemma-2 shape, vocabulary {VOCAB}, hidden 512, 2 layers, {args.pairs} pairs, CPU f32")
    for line in inspect.splitlines():
        if line.startswith(("parameters", "memory cpu")):
            print("  " + line)
    for batch in (int(b) for b in args.batch_tokens.split(",")):
        out = os.path.join(args.work, f"out-{batch}")
        subprocess.run([args.apscore, "-q", "run", "-i", data, "-m", model, "-o", out,
                        "--overwrite", "--batch-tokens", str(batch)],
                       check=True, stdout=subprocess.DEVNULL)
        summary = json.load(open(os.path.join(out, "summary.json")))
        peak = summary["peak_memory_bytes"]
        estimate = subprocess.run([args.apscore, "inspect-model", model, "--batch-tokens",
                                   str(batch)], check=True, capture_output=True, text=True).stdout
        estimate = next(l for l in estimate.splitlines() if l.startswith("memory cpu"))
        full_logits = batch * VOCAB * 4
        print(f"--batch-tokens {batch:6}: peak {peak / 2**20:7.0f} MiB; full logits of one batch "
              f"would be {full_logits / 2**20:7.0f} MiB; estimate: {estimate.split(None, 3)[3]}")


if __name__ == "__main__":
    main()
