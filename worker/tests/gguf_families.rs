//! GGUF files of the architectures beside SmolLM2's `llama`, written as llama.cpp's converter
//! writes them (`tests/fixtures/make_gguf_fixtures.py`): `qwen2`, `qwen3`, `gemma2` (norms stored
//! as 1 + w, no LM head) and a `llama` file with a SentencePiece vocabulary. Goldens: transformers
//! loading each file with `gguf_file=` (weights dequantized, tokenizer rebuilt from the metadata),
//! log-probs in f32 with eager attention.

use apscore_worker::model::{
    Checkpoint, ComputeDtype, DeviceSpec, Kernels, Packing, load_cpu_model, load_model,
};
use apscore_worker::scorer::{ScorerProgress, score_pairs};
use apscore_worker::tokenization::{TokenizationParams, TokenizedPair, TokenizedResponse};
use serde_json::Value;

mod common;
use common::*;

/// Fixture name → its GGUF file's architecture.
const FILES: [(&str, &str); 4] = [
    ("qwen2", "Qwen2ForCausalLM"),
    ("qwen3", "Qwen3ForCausalLM"),
    ("gemma2", "Gemma2ForCausalLM"),
    ("llama-sp", "LlamaForCausalLM"),
];

fn open_gguf(name: &str) -> (Checkpoint, Value) {
    let path = fixtures().join("gguf").join(format!("{name}.gguf"));
    let checkpoint = Checkpoint::open_gguf(&path).unwrap();
    let golden = read_json(&fixtures().join("goldens").join(format!("{name}-gguf.json")));
    (checkpoint, golden)
}

fn response(v: &Value) -> TokenizedResponse {
    TokenizedResponse {
        prompt: ids(&v["prompt_ids"]),
        answer: ids(&v["answer_ids"]),
    }
}

/// The goldens' pairs, as transformers tokenized them.
fn golden_token_pairs(golden: &Value) -> Vec<TokenizedPair> {
    golden["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| TokenizedPair {
            chosen: response(&p["chosen"]),
            rejected: response(&p["rejected"]),
            truncated: p["truncated"].as_bool().unwrap(),
        })
        .collect()
}

#[test]
fn gguf_architectures_load_as_their_families() {
    for (name, architecture) in FILES {
        let (checkpoint, _) = open_gguf(name);
        assert_eq!(checkpoint.config.architecture, architecture, "{name}");
    }
    let (gemma, _) = open_gguf("gemma2");
    let c = &gemma.config;
    assert!(c.tie_word_embeddings);
    assert_eq!(c.head_dim, 256);
    assert_eq!(c.design.windows, vec![Some(12), None, Some(12)]);
    assert_eq!(
        (c.design.attention.softcap, c.design.final_softcap),
        (Some(50.0), Some(30.0))
    );
    let (qwen3, _) = open_gguf("qwen3");
    assert!(qwen3.config.design.attention.qk_norm);
    assert_eq!(qwen3.config.head_dim, 128);
}

/// The weights, read under transformers' names (Gemma's norms back to w, Q/K rows of `llama`
/// unpermuted), score transformers' token ids as transformers does, on both kernel paths.
#[test]
fn gguf_families_score_like_transformers() {
    for (name, _) in FILES {
        let (checkpoint, golden) = open_gguf(name);
        let pairs = golden_token_pairs(&golden);
        assert_eq!(pairs.len(), 24);
        let host = load_model(&checkpoint, DeviceSpec::Cpu, ComputeDtype::F32).unwrap();
        let burn = load_cpu_model(&checkpoint, Kernels::Burn).unwrap();
        for (kernels, model) in [("host", &host), ("burn", &burn)] {
            let scores = score_pairs(
                model.as_ref(),
                &pairs,
                400,
                Packing::SharedPrefix,
                &ScorerProgress::default(),
            );
            let what = format!("{name}.gguf, {kernels} kernels");
            let wanted = golden["pairs"].as_array().unwrap();
            let worst = assert_sums(
                &what,
                &scores,
                wanted,
                |side| format!("{side}_logps"),
                false,
            );
            eprintln!("{what}: largest difference from transformers {worst:.2e}");
        }
    }
}

/// The tokenizer rebuilt from `tokenizer.ggml.*` gives transformers' ids, on varied text and on
/// the fixture pairs.
#[test]
fn gguf_tokenizers_equal_transformers() {
    for (name, _) in FILES {
        let (checkpoint, golden) = open_gguf(name);
        let tokenizer = checkpoint
            .pair_tokenizer(TokenizationParams::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            checkpoint.special_tokens.bos.as_deref(),
            golden["special_tokens"]["bos"].as_str(),
            "{name}"
        );
        for case in golden["texts"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                tokenizer.encode(text).unwrap(),
                ids(&case["ids"]),
                "{name}: {text:?}"
            );
        }
        let wanted = golden_token_pairs(&golden);
        for (i, (conversation, want)) in conversations().iter().zip(&wanted).enumerate() {
            let got = tokenizer
                .tokenize(conversation)
                .unwrap_or_else(|e| panic!("{name} pair {i}: {e}"));
            assert_eq!(&got, want, "{name} pair {i}");
        }
    }
}
