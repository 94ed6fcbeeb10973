"""Loading a real-size checkpoint: apscore's peak memory and load time against transformers'.

One run does all of it and prints the figures:
  1. makes a random 0.9 B-parameter Llama checkpoint stored in bf16, in three safetensors
     shards (cached under --work), and a few preference pairs;
  2. runs `apscore run` on those pairs on the CPU (f32 compute) and reads its peak resident
     memory from summary.json: the target is at most 1.15 × the weights in f32;
  3. times `apscore inspect-model DIR --load` (read, convert and place every tensor) and a
     whole Python process that runs transformers' `from_pretrained(DIR, dtype=torch.float32)`,
     alternating, --repeats times each, and prints the medians and their ratio.

    python3 benches/large_model.py --apscore target/release/apscore

Needs torch, transformers and pyarrow (not needed by the tests). The checkpoint takes 1.8 GB
of disk; the runs about 5 GB of memory.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")

# TinyLlama-1.1B's layer shapes with 16 instead of 22 layers: 0.9 B parameters.
SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
             num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
             tie_word_embeddings=False, rope_theta=10000.0)


def make_checkpoint(path):
    import shutil
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    if os.path.exists(os.path.join(path, "config.json")):
        return
    os.makedirs(path, exist_ok=True)
    cfg = LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=None,
                      eos_token_id=2, **SHAPE)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(path, max_shard_size="700MB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(FIXTURES, "models", "qwen2-tied", name), path)


def parameters(path):
    index = json.load(open(os.path.join(path, "model.safetensors.index.json")))
    return index["metadata"]["total_size"] // 2  # bf16: two bytes per parameter


def make_pairs(path, n):
    rows = {"prompt": [f"Question {i}: how do the parts of a model fit together?" for i in range(n)],
            "chosen": ["They are loaded one tensor at a time and placed where they run."] * n,
            "rejected": ["Somehow."] * n,
            "score_chosen": [8.0 + i % 3 for i in range(n)], "score_rejected": [2.0] * n}
    pq.write_table(pa.table(rows), path)


def timed(cmd):
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apscore", default=os.path.join(HERE, "..", "target", "release", "apscore"))
    ap.add_argument("--python", default=sys.executable, help="the Python with transformers")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", default="/tmp/apscore-large")
    args = ap.parse_args()

    model = os.path.join(args.work, "llama-0.9b-bf16")
    make_checkpoint(model)
    data = os.path.join(args.work, "pairs.parquet")
    make_pairs(data, 4)
    params = parameters(model)
    f32_bytes = 4 * params

    out = os.path.join(args.work, "out")
    subprocess.run([args.apscore, "-q", "run", "-i", data, "-m", model, "-o", out, "--overwrite"],
                   check=True, stdout=subprocess.DEVNULL)
    peak = json.load(open(os.path.join(out, "summary.json")))["peak_memory_bytes"]

    load = (f"import torch, transformers; "
            f"transformers.AutoModelForCausalLM.from_pretrained({model!r}, dtype=torch.float32)")
    times = {"apscore": [], "transformers": []}
    for _ in range(args.repeats):
        times["apscore"].append(timed([args.apscore, "-q", "inspect-model", model, "--load"]))
        times["transformers"].append(timed([args.python, "-c", load]))
    a, t = (statistics.median(times[k]) for k in ("apscore", "transformers"))

    print(f"checkpoint: {params / 1e9:.2f} B parameters in bf16, three shards; "
          f"f32 weights {f32_bytes / 2**30:.2f} GiB")
    print(f"apscore run (4 pairs, CPU, f32): peak memory {peak / 2**30:.2f} GiB = "
          f"{peak / f32_bytes:.2f} × the f32 weights (target ≤ 1.15)")
    print(f"load every tensor, whole process, median of {args.repeats}: apscore inspect-model "
          f"--load {a:.2f} s, transformers from_pretrained(dtype=float32) {t:.2f} s; "
          f"transformers ÷ apscore {t / a:.2f}")


if __name__ == "__main__":
    main()
