"""GPU parity: apscore's log-prob sums on CUDA (f32 and bf16) against the committed f32 goldens
(transformers on CPU) and against transformers itself on the same GPU in bf16.

    python3 benches/gpu_parity.py --apscore .gpu/apscore

Prints, per fixture model and dtype, the largest |Δ sum| and the mean |Δ sum| / tokens, and
apscore bf16 against transformers bf16 directly (largest relative difference of a sum).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import pyarrow.parquet as pq
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")
sys.path.insert(0, FIXTURES)


MODELS = ["llama-gqa", "qwen2-tied", "llama-bf16", "qwen3-tiny", "gemma2-tiny", "gemma2-hub-bf16",
          "mistral-window"]


DEVICE = "cuda"


def apscore_sums(binary, model, dtype, out, golden):
    cmd = [binary, "-q", "run", "-i", os.path.join(FIXTURES, "pairs.parquet"),
           "-m", os.path.join(FIXTURES, "models", model), "-o", out, "--overwrite",
           "--device", DEVICE, "--dtype", dtype, "--max-length", "128", "--max-prompt-length", "96"]
    if golden.get("chat_template"):
        cmd += ["--chat-template", os.path.join(FIXTURES, "chat_templates", golden["chat_template"])]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    t = pq.read_table(os.path.join(out, "scores")).to_pydict()
    return {rid: (c, r) for rid, c, r in zip(t["row_id"], t["chosen_logps"], t["rejected_logps"])}


def transformers_bf16(model_name, golden):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(os.path.join(FIXTURES, "models", model_name),
                                                 dtype=torch.bfloat16, attn_implementation="eager")
    model.to(DEVICE).eval()
    sums = {}
    # The tokenization case of the goldens' log-probs (their template, where they name one).
    case = next(c for c in golden["tokenization"] if c["max_length"] == 128 and c["profile"] == "simpo"
                and c["truncation_mode"] == "keep_end" and c.get("chat_template") == golden.get("chat_template"))
    for i, row in enumerate(case["rows"]):
        if "error" in row:
            continue
        c, r = logps_on(model, [row["chosen"], row["rejected"]])
        sums[i] = (c, r)
    return sums


def logps_on(model, responses):
    seqs = [r["prompt_ids"] + r["answer_ids"] for r in responses]
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    with torch.no_grad():
        lp = model(input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE)).logits.float().log_softmax(-1).cpu()
    out = []
    for i, r in enumerate(responses):
        p, a = len(r["prompt_ids"]), len(r["answer_ids"])
        out.append(float(lp[i, torch.arange(p - 1, p + a - 1), torch.tensor(r["answer_ids"])].double().sum()))
    return out


def compare(name, got, golden_rows):
    worst, per_token = 0.0, []
    for rid, (c, r) in got.items():
        g = golden_rows[rid]
        for v, want, n in ((c, g["chosen"], g["chosen_tokens"]), (r, g["rejected"], g["rejected_tokens"])):
            worst = max(worst, abs(v - want))
            per_token.append(abs(v - want) / n)
    print(f"  {name:<28} max |Δ sum| {worst:9.2e}   mean |Δ|/token {sum(per_token) / len(per_token):9.2e}")


def side_by_side(name, got, reference):
    worst = 0.0
    for rid, (c, r) in got.items():
        tc, tr = reference[rid]
        worst = max(worst, abs(c - tc) / abs(tc), abs(r - tr) / abs(tr))
    print(f"  {name:<28} largest relative |Δ sum| {worst:9.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--apscore", default=".gpu/apscore")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script (f32 only)")
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated fixture models (each costs a process start and its kernel compilation)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            golden = json.load(open(os.path.join(FIXTURES, "goldens", f"{model}.json")))
            rows = golden["logps"]["rows"]
            print(f"{model} (vs transformers f32 on CPU, the committed goldens):", flush=True)
            try:
                got = {}
                for dtype in ("f32", "bf16") if DEVICE == "cuda" else ("f32",):
                    got[dtype] = apscore_sums(args.apscore, model, dtype, os.path.join(tmp, dtype), golden)
                    compare(f"apscore {DEVICE} {dtype}", got[dtype], rows)
                reference = transformers_bf16(model, golden)
                compare(f"transformers {DEVICE} bf16", reference, rows)
                side_by_side(f"apscore vs transformers, {'bf16' if DEVICE == 'cuda' else 'f32 vs bf16'}",
                             got["bf16" if DEVICE == "cuda" else "f32"], reference)
            except Exception as e:  # one model's failure must not hide the others' figures
                print(f"  FAILED: {e}", flush=True)


if __name__ == "__main__":
    main()
