"""apscore's forward pass against transformers on the same checkpoint, data and machine.

One run does both and prints the ratio:
  1. makes a random checkpoint of a real model's shape (SmolLM2-135M by default) with the
     fixture tokenizer and ChatML template (cached under --work);
  2. writes --pairs preference pairs of realistic length (plain strings);
  3. scores them the way the reference pipeline does (TRL-style: chosen and rejected
     concatenated into one padded batch, sdpa attention, full-vocabulary log-softmax, then
     gather), timing tokenization + forward, and prints that first;
  4. runs `apscore run` on them (each --packing, --apscore-runs times) and reads its scoring
     time from summary.json, printing each run as it ends;
  5. checks that both give the same log-prob sums, and prints tokens/s, pairs/s and the ratio.

    python3 benches/model_bench.py --apscore target/release/apscore            # CPU
    python3 benches/model_bench.py --device cuda --dtype bf16 --shape llama3-8b-4l \
        --apscore ./apscore-cuda                                              # GPU

Needs torch, transformers, tokenizers and pyarrow (not needed by the tests).
"""

import argparse
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")
sys.path.insert(0, FIXTURES)
from make_fixtures import tokenize_pair  # noqa: E402  (docs/models.md#tokenization: the reference preprocessing)

SHAPES = {
    # SmolLM2-135M-Instruct: 30 layers, hidden 576, 9 heads over 3 KV heads, tied embeddings.
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                    tie_word_embeddings=True, rope_theta=100000.0),
    # Llama-3-8B layer shapes, 4 layers (a per-layer figure), full vocabulary.
    "llama3-8b-4l": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=4,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=False, rope_theta=500000.0),
}
WORDS = ("the model answers quickly and the reward is high while a careful reader checks every "
         "step of the proof before trusting it").split()


def make_checkpoint(path, shape, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    if os.path.exists(os.path.join(path, "config.json")):
        return
    os.makedirs(path, exist_ok=True)
    cfg = LlamaConfig(max_position_embeddings=8192, rms_norm_eps=1e-5, bos_token_id=None,
                      eos_token_id=2, **SHAPES[shape])
    torch.manual_seed(0)
    # Initialised on the GPU where there is one: the 8B layer shapes take minutes on a CPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg)
    model.to(dtype).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(FIXTURES, "models", "qwen2-tied", name), path)


def make_pairs(path, n, seed=1):
    rng = random.Random(seed)
    text = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))
    rows = {"prompt": [], "chosen": [], "rejected": [], "score_chosen": [], "score_rejected": []}
    for _ in range(n):
        # Lengths like UltraFeedback's: prompts of tens to a few hundred words, answers longer.
        rows["prompt"].append(text(rng.randint(10, 60)))
        rows["chosen"].append(text(rng.randint(20, 90)))
        rows["rejected"].append(text(rng.randint(20, 90)))
        rows["score_chosen"].append(rng.uniform(5, 10))
        rows["score_rejected"].append(rng.uniform(0, 5))
    # Row groups as large as real datasets have: apscore buckets by length within each.
    pq.write_table(pa.table(rows), path, row_group_size=1024)
    return rows


def run_apscore(args, model_dir, data, out, packing="auto"):
    quiet = [] if args.apscore_log else ["-q"]
    cmd = [args.apscore, *quiet, "run", "-i", data, "-m", model_dir, "-o", out, "--overwrite",
           "--device", args.device, "--dtype", args.dtype, "--packing", packing]
    env = dict(os.environ, RUST_LOG=args.apscore_log) if args.apscore_log else None
    if args.batch_tokens:
        cmd += ["--batch-tokens", str(args.batch_tokens)]
    gpu_memory = GpuMemory() if args.device.startswith("cuda") else None
    started = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - started
    summary = json.load(open(os.path.join(out, "summary.json")))
    summary["gpu_memory_used_peak_mib"] = gpu_memory.stop() if gpu_memory else None
    scores = pq.read_table(os.path.join(out, "scores")).to_pydict()
    return wall, summary["timings_s"]["score"], scores, summary


class GpuMemory:
    """The GPU's used memory, polled by nvidia-smi every 100 ms while a run lasts (the whole
    device's, so nothing else should run on it)."""

    def __init__(self):
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                      "-lms", "100"], stdout=subprocess.PIPE, text=True)

    def stop(self):
        self.proc.terminate()
        out, _ = self.proc.communicate()
        values = [int(v) for v in out.split() if v.strip().isdigit()]
        return max(values) if values else None


def run_transformers(args, model_dir, rows):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[args.dtype]
    tok = PreTrainedTokenizerFast.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    model.to(device).eval()
    # A first forward outside the timing: CUDA's context, cuBLAS handles and kernels load there
    # (apscore's timed run is its second, for the same reason).
    with torch.no_grad():
        model(input_ids=torch.ones((2, 64), dtype=torch.long, device=device))
    if device == "cuda":
        torch.cuda.synchronize()
    sums, tokens = [], 0
    started = time.perf_counter()
    batch = []

    def flush():
        nonlocal tokens
        # TRL's concatenated_forward: chosen then rejected, padded to the longest.
        seqs = [p[k]["prompt_ids"] + p[k]["answer_ids"] for p in batch for k in ("chosen", "rejected")]
        width = max(len(s) for s in seqs)
        ids = torch.zeros((len(seqs), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        i = 0
        for p in batch:
            for k in ("chosen", "rejected"):
                pr, an = p[k]["prompt_ids"], p[k]["answer_ids"]
                s = pr + an
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
                labels[i, len(pr): len(s)] = torch.tensor(an)
                i += 1
        tokens += int(mask.sum())
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logits = logits[:, :-1].float()
            lab = labels[:, 1:].to(device)
            keep = lab != -100
            per_token = torch.gather(logits.log_softmax(-1), 2, lab.clamp(min=0).unsqueeze(2)).squeeze(2)
            s = (per_token * keep).sum(-1).double().cpu().tolist()
        for j in range(len(batch)):
            sums.append((s[2 * j], s[2 * j + 1]))
        batch.clear()

    for i in range(len(rows["prompt"])):
        pair = {"chosen": [{"role": "user", "content": rows["prompt"][i]},
                           {"role": "assistant", "content": rows["chosen"][i]}],
                "rejected": [{"role": "user", "content": rows["prompt"][i]},
                             {"role": "assistant", "content": rows["rejected"][i]}]}
        batch.append(tokenize_pair(tok, pair, "simpo", 2048, 1800, "keep_end"))
        if len(batch) == args.reference_batch_pairs:
            flush()
    if batch:
        flush()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, sums, tokens


def parameter_count(model_dir):
    from safetensors import safe_open
    import glob
    total = 0
    for path in glob.glob(os.path.join(model_dir, "*.safetensors")):
        with safe_open(path, "pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apscore", default=os.path.join(HERE, "..", "target", "release", "apscore"))
    ap.add_argument("--shape", choices=SHAPES, default="smollm2")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"])
    ap.add_argument("--batch-tokens", type=int, default=None, help="apscore's default when absent")
    ap.add_argument("--reference-batch-pairs", type=int, default=4,
                    help="pairs per transformers batch (TRL's per-device batch size)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    ap.add_argument("--work", default="/tmp/apscore-bench")
    ap.add_argument("--packing", default="auto",
                    help="apscore's --packing; several, comma-separated, are each timed (auto, shared-prefix, separate)")
    ap.add_argument("--apscore-runs", type=int, default=1,
                    help="runs of apscore per packing; the last is timed (the first compiles and autotunes the GPU kernels)")
    ap.add_argument("--apscore-log", default=None, metavar="FILTER",
                    help="apscore's log on stderr with this RUST_LOG filter (e.g. apscore_worker::scorer=debug "
                         "for each forward batch's shape and time); quiet when absent")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="the device's peak (GFLOP/s in the compute dtype): prints MFU")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model_dir = os.path.join(args.work, f"{args.shape}-{args.dtype}")
    make_checkpoint(model_dir, args.shape, torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    data = os.path.join(args.work, f"pairs-{args.pairs}.parquet")
    rows = make_pairs(data, args.pairs)

    # transformers first: on a GPU, apscore's first run compiles and tunes its kernels and may
    # outlast a time limit; the baseline and each apscore run's ratio are printed as they come.
    t_time, t_sums, t_tokens = run_transformers(args, model_dir, rows)
    # The model is gone with run_transformers' frame; torch's allocator would still hold its
    # memory, which apscore's free-memory check and the GPU peak below would count.
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"transformers: scoring {t_time:.2f} s, {t_tokens} tokens (batch of {args.reference_batch_pairs} pairs)",
          flush=True)

    def largest_difference(scores):
        order = sorted(range(len(scores["row_id"])), key=lambda i: scores["row_id"][i])
        return max(max(abs(scores["chosen_logps"][i] - t_sums[k][0]), abs(scores["rejected_logps"][i] - t_sums[k][1]))
                   for k, i in enumerate(order))

    runs = {}
    for packing in args.packing.split(","):
        for run in range(args.apscore_runs):
            runs[packing] = run_apscore(args, model_dir, data, os.path.join(args.work, "out"), packing)
            wall, score, scores, summary = runs[packing]
            print(f"apscore --packing {packing} run {run + 1}: scoring {score:.2f} s (ratio {t_time / score:.2f}), "
                  f"whole process {wall:.2f} s, {summary.get('scoring', {}).get('tokens')} tokens through the model, "
                  f"host peak {(summary.get('peak_memory_bytes') or 0) / 2**20:.0f} MiB, "
                  f"GPU memory used peak {summary['gpu_memory_used_peak_mib']} MiB, "
                  f"largest |Δ log-prob sum| {largest_difference(scores):.2e}", flush=True)
    packing = min(runs, key=lambda p: runs[p][1])
    a_wall, a_score, scores, summary = runs[packing]
    a_tokens = sum(scores["chosen_tokens"]) + sum(scores["rejected_tokens"])
    diff = largest_difference(scores)
    n = args.pairs
    print(f"shape {args.shape}, {n} pairs, device {args.device}, dtype {args.dtype}, "
          f"{t_tokens} tokens (prompt + response, both responses), {torch.get_num_threads()} torch threads")
    print(f"apscore      scoring {a_score:8.2f} s  {n / a_score:8.2f} pairs/s  {t_tokens / a_score:9.0f} tokens/s"
          f"   (whole process {a_wall:.2f} s, batch tokens {args.batch_tokens or 'default'}, --packing {packing})")
    print(f"transformers scoring {t_time:8.2f} s  {n / t_time:8.2f} pairs/s  {t_tokens / t_time:9.0f} tokens/s"
          f"   (batch of {args.reference_batch_pairs} pairs)")
    print(f"ratio (apscore pairs/s ÷ transformers pairs/s): {t_time / a_score:.2f}")
    print(f"largest |Δ log-prob sum| between the two: {diff:.2e}")
    scoring = summary.get("scoring", {})
    peak = summary.get("peak_memory_bytes") or 0
    print(f"apscore: padding waste {100 * scoring.get('padding_waste', 0):.1f} %, "
          f"peak memory {peak / 2**20:.0f} MiB, {a_tokens} response tokens scored")
    if args.peak_gflops:
        # FLOPs each system actually executes (matmuls; attention's are left out): the body's
        # weights once per token it runs, the LM head once per position it evaluates.
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        head = cfg["vocab_size"] * cfg["hidden_size"]
        embedding_and_head = head if cfg.get("tie_word_embeddings") else 2 * head
        body = parameter_count(model_dir) - embedding_and_head
        a_run = scoring.get("tokens", t_tokens)  # a pair's shared prompt once
        executed = {
            "apscore": 2 * body * a_run + 2 * head * a_tokens,
            "transformers": 2 * body * t_tokens + 2 * head * t_tokens,
        }
        for name, seconds in (("apscore", a_score), ("transformers", t_time)):
            flops = executed[name]
            mfu = 100 * flops / seconds / (args.peak_gflops * 1e9)
            print(f"MFU {name}: {mfu:.1f} % ({flops / 1e12:.2f} TFLOP executed in {seconds:.2f} s; "
                  f"peak {args.peak_gflops:.0f} GFLOP/s)")
        print(f"apscore ran {a_run} tokens where the reference ran {t_tokens} "
              f"({100 * (1 - a_run / t_tokens):.0f} % fewer: the prompt once per pair) and "
              f"evaluated the LM head at {a_tokens} positions instead of {t_tokens}")

if __name__ == "__main__":
    main()
