//! Helpers shared by the worker's fidelity tests: the fixture folder, its pairs, checkpoints
//! and goldens.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

#[path = "../../../tests/common/smollm2.rs"]
mod smollm2;
#[allow(unused_imports)]
pub use smollm2::smollm2_gguf;

use apscore_core::model_settings::{Profile, TruncationMode};
use apscore_core::pairs::{Conversation, Message};
use apscore_worker::model::Checkpoint;
use apscore_worker::reward_tokenization::RewardPair;
use apscore_worker::scorer::PairScores;
use apscore_worker::tokenization::{
    PairTokenizer, TokenizationParams, TokenizedPair, TokenizedResponse,
};
use serde_json::Value;

/// The fixture checkpoints: grouped-query attention, Qwen2 with one key/value head and tied
/// embeddings, a bf16 Llama.
pub const MODELS: [&str; 3] = ["llama-gqa", "qwen2-tied", "llama-bf16"];

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn message(v: &Value) -> Message {
    Message {
        role: v["role"].as_str().unwrap().into(),
        content: v["content"].as_str().unwrap().into(),
    }
}

/// The fixture pairs as the UltraFeedback layout reads them (prompt messages and responses).
pub fn conversations() -> Vec<Conversation> {
    let pairs = read_json(&fixtures().join("pairs.json"));
    pairs
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let chosen = p["chosen"].as_array().unwrap();
            let rejected = p["rejected"].as_array().unwrap();
            Conversation {
                prompt: chosen[..chosen.len() - 1].iter().map(message).collect(),
                chosen: message(chosen.last().unwrap()),
                rejected: message(rejected.last().unwrap()),
                rejected_prompt: None,
            }
        })
        .collect()
}

pub fn params(case: &Value) -> TokenizationParams {
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

pub fn golden_response(v: &Value) -> TokenizedResponse {
    TokenizedResponse {
        prompt: ids(&v["prompt_ids"]),
        answer: ids(&v["answer_ids"]),
    }
}

/// A fixture checkpoint and its goldens.
pub fn open(name: &str) -> (Checkpoint, Value) {
    let checkpoint = Checkpoint::open_dir(&fixtures().join("models").join(name)).unwrap();
    let golden = read_json(&fixtures().join("goldens").join(format!("{name}.json")));
    (checkpoint, golden)
}

/// The fixture's scored pairs (those without an expected error) and their goldens.
pub fn golden_pairs(checkpoint: &Checkpoint, golden: &Value) -> (Vec<TokenizedPair>, Vec<Value>) {
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
pub fn assert_equal_to_goldens(what: &str, scores: &[PairScores], wanted: &[Value]) -> f64 {
    assert_sums(what, scores, wanted, |side| side.to_string(), true)
}

/// Every response's sum within 1e-4 of the golden under `key(side)` (and, with
/// `check_tokens`, its token count equal to `{side}_tokens`); returns the largest difference.
pub fn assert_sums(
    what: &str,
    scores: &[PairScores],
    wanted: &[Value],
    key: impl Fn(&str) -> String,
    check_tokens: bool,
) -> f64 {
    assert_eq!(scores.len(), wanted.len(), "{what}");
    let mut worst = 0f64;
    for (i, (got, want)) in scores.iter().zip(wanted).enumerate() {
        for (side, g) in [("chosen", got.chosen), ("rejected", got.rejected)] {
            let expected = want[key(side)].as_f64().unwrap();
            if check_tokens {
                let tokens = want[format!("{side}_tokens")].as_u64().unwrap();
                assert_eq!(g.tokens, tokens, "{what} pair {i} {side}");
            }
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

/// Tokenizes every conversation of one golden tokenization case and checks it: the pair's
/// ids equal the golden's, or the row fails with the golden's error. `at` names the case in
/// messages; returns the pairs that tokenized.
pub fn assert_tokenization_case(
    at: &str,
    tokenizer: &PairTokenizer,
    rows: &[Value],
) -> Vec<TokenizedPair> {
    let conversations = conversations();
    assert_eq!(rows.len(), conversations.len(), "{at}");
    let mut tokenized = Vec::new();
    for (i, (conversation, want)) in conversations.iter().zip(rows).enumerate() {
        let got = tokenizer.tokenize(conversation);
        let at = format!("{at}, pair {i}");
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
        tokenized.push(got);
    }
    tokenized
}

/// The fixture checkpoints of the families beyond Llama and Qwen2: Qwen3, Gemma 2 (a
/// transformers-5 config in f32, an older Hub config in bf16), Mistral with a sliding window.
pub const FAMILIES: [&str; 4] = [
    "qwen3-tiny",
    "gemma2-tiny",
    "gemma2-hub-bf16",
    "mistral-window",
];

/// The checkpoint with the template file `name` (under chat_templates/) in force, as
/// `--chat-template` puts it; `None` or "native": its own.
pub fn with_template(checkpoint: &Checkpoint, name: Option<&str>) -> Checkpoint {
    let mut checkpoint = checkpoint.clone();
    if let Some(file) = name.filter(|n| *n != "native") {
        let path = fixtures().join("chat_templates").join(file);
        checkpoint.chat_template = std::fs::read_to_string(path).unwrap();
    }
    checkpoint
}

/// A fixture checkpoint with the template its goldens' log-probs used (`chat_template` in the
/// golden file), and its goldens.
pub fn open_family(name: &str) -> (Checkpoint, Value) {
    let (checkpoint, golden) = open(name);
    let checkpoint = with_template(&checkpoint, golden["chat_template"].as_str());
    (checkpoint, golden)
}

/// The reward-model fixtures, one per architecture, in f32 and bf16 weights:
/// - rm-llama: pad = EOS and a template that ends with it, so the score is read before the
///   trailing pad tokens;
/// - rm-mistral: a sliding window shorter than most conversations, no pad token (the last
///   token is read);
/// - rm-qwen2 (bf16), rm-qwen3, rm-gemma2 (soft-capping that would bite, were it applied to the
///   score: transformers does not), and bf16 copies of Llama and Gemma 2;
/// - rm-armorm: ArmoRM's gated multi-objective head (19 objectives, goldens from its public
///   `modeling_custom.py` run by transformers with `trust_remote_code`).
pub const REWARD_MODELS: [&str; 8] = [
    "rm-armorm",
    "rm-llama",
    "rm-mistral",
    "rm-qwen2",
    "rm-qwen3",
    "rm-gemma2",
    "rm-llama-bf16",
    "rm-gemma2-bf16",
];

/// A reward golden's conversations, as the token ids it scored.
pub fn reward_pairs(golden: &Value) -> Vec<RewardPair> {
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| RewardPair {
            chosen: ids(&c["chosen_ids"]),
            rejected: ids(&c["rejected_ids"]),
        })
        .collect()
}
