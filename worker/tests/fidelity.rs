//! Fidelity against transformers: token ids (docs/models.md#tokenization) and per-response log-prob sums of the
//! fixture checkpoints must equal the goldens that `tests/fixtures/make_fixtures.py` computed
//! with transformers on the same files.

use std::sync::atomic::Ordering;

use apscore_core::model_settings::{Profile, TruncationMode};
use apscore_worker::model::{
    Checkpoint, ComputeDtype, DeviceSpec, Kernels, Packing, load_cpu_model, load_model,
};
use apscore_worker::scorer::{PairScores, ScorerProgress, score_pairs};
use apscore_worker::tokenization::{TokenizationParams, TokenizedPair, TokenizedResponse};
use serde_json::Value;

mod common;
use common::*;

const MODELS: [&str; 3] = ["llama-gqa", "qwen2-tied", "llama-bf16"];

fn params(case: &Value) -> TokenizationParams {
    TokenizationParams {
        profile: match case["profile"].as_str().unwrap() {
            "simpo" => Profile::Simpo,
            _ => Profile::Conversation,
        },
        max_length: case["max_length"].as_u64().unwrap() as usize,
        max_prompt_length: case["max_prompt_length"].as_u64().unwrap() as usize,
        truncation_mode: match case["truncation_mode"].as_str().unwrap() {
            "keep_end" => TruncationMode::KeepEnd,
            _ => TruncationMode::KeepStart,
        },
    }
}

fn golden_response(v: &Value) -> TokenizedResponse {
    TokenizedResponse {
        prompt: ids(&v["prompt_ids"]),
        answer: ids(&v["answer_ids"]),
    }
}

fn open(name: &str) -> (Checkpoint, Value) {
    let checkpoint = Checkpoint::open_dir(&fixtures().join("models").join(name)).unwrap();
    let golden = read_json(&fixtures().join("goldens").join(format!("{name}.json")));
    (checkpoint, golden)
}

#[test]
fn token_ids_equal_the_reference_preprocessing() {
    let conversations = conversations();
    for name in MODELS {
        let (checkpoint, golden) = open(name);
        for case in golden["tokenization"].as_array().unwrap() {
            let params = params(case);
            let tokenizer = checkpoint.pair_tokenizer(params).unwrap();
            let rows = case["rows"].as_array().unwrap();
            assert_eq!(rows.len(), conversations.len());
            let mut truncated = 0;
            for (i, (conversation, want)) in conversations.iter().zip(rows).enumerate() {
                let got = tokenizer.tokenize(conversation);
                let at = format!("{name}, {params:?}, pair {i}");
                if let Some(error) = want.get("error") {
                    let problem = got.expect_err(&at);
                    assert!(
                        problem.0.contains(error.as_str().unwrap()),
                        "{at}: {problem} vs {error}"
                    );
                    continue;
                }
                let got = got.unwrap_or_else(|e| panic!("{at}: {e}"));
                let want = TokenizedPair {
                    chosen: golden_response(&want["chosen"]),
                    rejected: golden_response(&want["rejected"]),
                    truncated: want["truncated"].as_bool().unwrap(),
                };
                assert_eq!(got, want, "{at}");
                truncated += usize::from(got.truncated);
            }
            if params.max_length == 128 {
                assert!(truncated > 0, "{name}: the short case truncates some pairs");
            }
        }
    }
}

/// The fixture's scored pairs (those without an expected error) and their goldens.
fn golden_pairs(checkpoint: &Checkpoint, golden: &Value) -> (Vec<TokenizedPair>, Vec<Value>) {
    let case = &golden["logps"];
    let tokenizer = checkpoint.pair_tokenizer(params(case)).unwrap();
    let rows = case["rows"].as_array().unwrap();
    let mut pairs = Vec::new();
    let mut wanted = Vec::new();
    for (conversation, want) in conversations().iter().zip(rows) {
        if want.get("error").is_none() {
            pairs.push(tokenizer.tokenize(conversation).unwrap());
            wanted.push(want.clone());
        }
    }
    (pairs, wanted)
}

/// Every response's sum within 1e-4 of transformers' and its token count equal; returns the
/// largest difference.
fn assert_equal_to_goldens(what: &str, scores: &[PairScores], wanted: &[Value]) -> f64 {
    assert_eq!(scores.len(), wanted.len(), "{what}");
    let mut worst = 0f64;
    for (i, (got, want)) in scores.iter().zip(wanted).enumerate() {
        for (side, g) in [("chosen", got.chosen), ("rejected", got.rejected)] {
            let expected = want[side].as_f64().unwrap();
            let tokens = want[format!("{side}_tokens")].as_u64().unwrap();
            assert_eq!(g.tokens, tokens, "{what} pair {i} {side}");
            let diff = (g.sum - expected).abs();
            worst = worst.max(diff);
            assert!(
                diff < 1e-4,
                "{what} pair {i} {side}: {} vs transformers {expected}",
                g.sum
            );
        }
    }
    worst
}

#[test]
fn logprob_sums_equal_transformers_within_1e4() {
    for name in MODELS {
        let (checkpoint, golden) = open(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        let model = load_model(&checkpoint, DeviceSpec::Cpu, ComputeDtype::F32).unwrap();
        // A small token budget: several padded batches of mixed lengths.
        let progress = ScorerProgress::default();
        let scores = score_pairs(
            model.as_ref(),
            &pairs,
            400,
            Packing::SharedPrefix,
            &progress,
        );
        assert_eq!(progress.pairs.load(Ordering::Relaxed), pairs.len() as u64);
        // The prompt once per pair: the same results as each response on its own row.
        let separate = ScorerProgress::default();
        let unshared = score_pairs(model.as_ref(), &pairs, 400, Packing::Separate, &separate);
        let saved =
            separate.tokens.load(Ordering::Relaxed) - progress.tokens.load(Ordering::Relaxed);
        assert!(saved > 0, "{name}: sharing the prompt runs fewer tokens");
        for (i, (shared, alone)) in scores.iter().zip(&unshared).enumerate() {
            for (side, a, b) in [
                ("chosen", shared.chosen, alone.chosen),
                ("rejected", shared.rejected, alone.rejected),
            ] {
                assert_eq!(a.tokens, b.tokens, "{name} pair {i} {side}");
                // Equal up to f32 rounding: other batch shapes, other partial sums.
                assert!(
                    (a.sum - b.sum).abs() <= 1e-5f64.max(1e-7 * b.sum.abs()),
                    "{name} pair {i} {side}: shared prefix {} vs separate {}",
                    a.sum,
                    b.sum
                );
            }
        }
        let worst = assert_equal_to_goldens(name, &scores, &wanted);
        eprintln!("{name}: largest difference from transformers {worst:.2e}");
    }
}

/// burn's own kernels (fused attention with each packed row's mask, burn's softmax, SiLU and
/// RMSNorm) are what runs on CUDA; on the CPU they check that code path against the goldens.
#[test]
fn burn_kernels_score_packed_pairs_like_transformers() {
    for name in MODELS {
        let (checkpoint, golden) = open(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        let model = load_cpu_model(&checkpoint, Kernels::Burn).unwrap();
        // On CUDA these kernels get a row per response; the packed rows' masks are checked here.
        assert_eq!(model.packing(), Packing::Separate);
        let progress = ScorerProgress::default();
        let scores = score_pairs(
            model.as_ref(),
            &pairs,
            400,
            Packing::SharedPrefix,
            &progress,
        );
        let worst = assert_equal_to_goldens(&format!("{name}, burn kernels"), &scores, &wanted);
        eprintln!("{name}, burn kernels: largest difference from transformers {worst:.2e}");
    }
}

#[test]
fn a_checkpoint_with_an_extra_tensor_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let source = fixtures().join("models/qwen2-tied");
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    // Qwen2 has no o_proj bias: a checkpoint carrying one must not load silently.
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("Qwen2ForCausalLM", "LlamaForCausalLM"),
    )
    .unwrap();
    let checkpoint = Checkpoint::open_dir(dir.path()).unwrap();
    let err = load_model(&checkpoint, DeviceSpec::Cpu, ComputeDtype::F32)
        .err()
        .expect("q/k/v biases are not used by a plain Llama")
        .to_string();
    assert!(err.contains("q_proj.bias"), "{err}");
}
