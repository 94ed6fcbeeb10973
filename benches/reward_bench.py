"""What `--reward-model` costs: `apscore run` with and without it, and transformers scoring the
same conversations with the same reward model, on the same machine.

One run does all of it and prints the figures:
  1. makes a random policy checkpoint of a real model's shape (SmolLM2-135M by default) and a
     random reward model of the same shape (`LlamaForSequenceClassification`, one label), with
     the fixture tokenizer and ChatML template (cached under --work);
  2. writes --pairs preference pairs of realistic length (benches/model_bench.py's);
  3. runs `apscore run` without and with `--reward-model`, alternating, --repeats times each, and
     reads the scoring seconds and peak memory from summary.json;
  4. scores the chosen and rejected conversations with transformers'
     `AutoModelForSequenceClassification` (conversations rendered and tokenized by
     `apply_chat_template`, right-padded batches of --reference-batch-pairs pairs, sdpa),
  5. checks that both give the same scores and prints pairs/s, the ratios and the memory.

    python3 benches/reward_bench.py --apscore target/release/apscore

Needs torch, transformers, tokenizers and pyarrow (not needed by the tests).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import pyarrow.parquet as pq
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from model_bench import FIXTURES, SHAPES, make_checkpoint, make_pairs  # noqa: E402


def make_reward_checkpoint(path, shape):
    from transformers import LlamaConfig, LlamaForSequenceClassification
    if os.path.exists(os.path.join(path, "config.json")):
        return
    os.makedirs(path, exist_ok=True)
    cfg = LlamaConfig(max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=None,
                      eos_token_id=2, pad_token_id=0, num_labels=1, **SHAPES[shape])
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(cfg)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(FIXTURES, "models", "qwen2-tied", name), path)


def run_apscore(args, policy, reward, data, out):
    cmd = [args.apscore, "-q", "run", "-i", data, "-m", policy, "-o", out, "--overwrite"]
    if reward:
        cmd += ["--reward-model", reward]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    summary = json.load(open(os.path.join(out, "summary.json")))
    return wall, summary["timings_s"]["score"], summary.get("peak_memory_bytes") or 0


def run_transformers(args, reward, rows):
    from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast.from_pretrained(reward)
    model = AutoModelForSequenceClassification.from_pretrained(
        reward, dtype=torch.float32, attn_implementation="sdpa").eval()
    pad = model.config.pad_token_id
    scores = []
    started = time.perf_counter()
    convs = []

    def flush():
        ids = [tok.apply_chat_template(c, tokenize=True)["input_ids"] for c in convs]
        width = max(len(s) for s in ids)
        batch = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros_like(batch)
        for i, s in enumerate(ids):
            batch[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        with torch.no_grad():
            logits = model(input_ids=batch, attention_mask=mask).logits[:, 0]
        scores.extend(logits.double().tolist())
        convs.clear()

    n = len(rows["prompt"])
    for i in range(n):
        for side in ("chosen", "rejected"):
            convs.append([{"role": "user", "content": rows["prompt"][i]},
                          {"role": "assistant", "content": rows[side][i]}])
        if len(convs) == 2 * args.reference_batch_pairs:
            flush()
    if convs:
        flush()
    return time.perf_counter() - started, [(scores[2 * i], scores[2 * i + 1]) for i in range(n)]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apscore", default=os.path.join(HERE, "..", "target", "release", "apscore"))
    ap.add_argument("--shape", choices=SHAPES, default="smollm2")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference-batch-pairs", type=int, default=4,
                    help="pairs per transformers batch (both conversations of each)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    ap.add_argument("--work", default="/tmp/apscore-bench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    policy = os.path.join(args.work, f"{args.shape}-f32")
    reward = os.path.join(args.work, f"{args.shape}-reward")
    make_checkpoint(policy, args.shape, torch.float32)
    make_reward_checkpoint(reward, args.shape)
    data = os.path.join(args.work, f"pairs-{args.pairs}.parquet")
    rows = make_pairs(data, args.pairs)
    n = args.pairs

    runs = {"without": [], "with": []}
    for _ in range(args.repeats):
        for name, rm in (("without", None), ("with", reward)):
            runs[name].append(run_apscore(args, policy, rm, data, os.path.join(args.work, f"rm-{name}")))
    t_time, t_scores = run_transformers(args, reward, rows)

    scores = pq.read_table(os.path.join(args.work, "rm-with", "scores")).to_pydict()
    diff = max(max(abs(scores["rm_chosen"][i] - t_scores[rid][0]),
                   abs(scores["rm_rejected"][i] - t_scores[rid][1]))
               for i, rid in enumerate(scores["row_id"]))
    median = lambda name, k: statistics.median(r[k] for r in runs[name])
    print(f"shape {args.shape} (policy and reward model), {n} pairs, {args.repeats} runs each, "
          f"median figures, {torch.get_num_threads()} torch threads")
    for name in ("without", "with"):
        score, peak = median(name, 1), median(name, 2)
        print(f"apscore {name:7} --reward-model: scoring {score:7.2f} s  {n / score:7.2f} pairs/s  "
              f"peak memory {peak / 2**20:6.0f} MiB  (whole process {median(name, 0):.2f} s)")
    ratio = median("with", 1) / median("without", 1)
    print(f"scoring time with ÷ without: {ratio:.2f}; peak memory with − without: "
          f"{(median('with', 2) - median('without', 2)) / 2**20:.0f} MiB")
    print(f"transformers reward model alone: {t_time:7.2f} s  {n / t_time:7.2f} pairs/s "
          f"(batches of {args.reference_batch_pairs} pairs)")
    reward_only = median("with", 1) - median("without", 1)
    print(f"apscore's reward pass (with − without): {reward_only:.2f} s; transformers ÷ apscore: "
          f"{t_time / max(reward_only, 1e-9):.2f}")
    print(f"largest |Δ reward score| between the two: {diff:.2e}")


if __name__ == "__main__":
    main()
