//! Reward models against transformers: every conversation of the fixture pairs tokenized as
//! `apply_chat_template(conversation, tokenize=True)` does, and scored within 1e-4 of
//! `AutoModelForSequenceClassification` (float32, batch of one), on both kernel paths, with
//! the two conversations of a pair packed after their common start and run apart.
//! Goldens: `tests/fixtures/make_reward_fixtures.py`.

mod common;

use apscore_worker::model::{Checkpoint, Kernels, Packing, load_cpu_model};
use apscore_worker::reward_tokenization::RewardPair;
use apscore_worker::scorer::score_rewards;
use common::{REWARD_MODELS, conversations, fixtures, ids, open, reward_pairs};

#[test]
fn conversations_tokenize_as_transformers_renders_them_for_the_reward_model() {
    for name in REWARD_MODELS {
        let (checkpoint, golden) = open(name);
        assert!(checkpoint.config.is_reward_model(), "{name}");
        assert_eq!(
            checkpoint.config.architecture,
            golden["architecture"].as_str().unwrap(),
            "{name}"
        );
        let tokenizer = checkpoint.reward_tokenizer(4096).unwrap();
        let cases = golden["cases"].as_array().unwrap();
        assert_eq!(cases.len(), conversations().len(), "{name}");
        for (conversation, case) in conversations().iter().zip(cases) {
            let pair = tokenizer.tokenize(conversation).unwrap();
            assert_eq!(pair.chosen, ids(&case["chosen_ids"]), "{name} {case}");
            assert_eq!(pair.rejected, ids(&case["rejected_ids"]), "{name} {case}");
        }
    }
}

#[test]
fn reward_scores_equal_transformers_on_both_kernels_packed_or_not() {
    for name in REWARD_MODELS {
        let (checkpoint, golden) = open(name);
        let cases = golden["cases"].as_array().unwrap();
        let pairs = reward_pairs(&golden);
        for kernels in [Kernels::Host, Kernels::Burn] {
            let model = load_cpu_model(&checkpoint, kernels).unwrap();
            for packing in [Packing::SharedPrefix, Packing::Separate] {
                // A small budget: several batches, rows of different lengths padded together.
                let got = score_rewards(model.as_ref(), &pairs, 160, packing);
                let mut worst = 0f64;
                for (i, ((chosen, rejected), case)) in got.scores.iter().zip(cases).enumerate() {
                    for (side, value) in [("chosen", chosen), ("rejected", rejected)] {
                        let want = case[side].as_f64().unwrap();
                        let diff = (value - want).abs();
                        worst = worst.max(diff);
                        assert!(
                            diff < 1e-4,
                            "{name} {kernels:?} {packing:?} pair {i} {side}: {value} vs \
                             transformers {want}"
                        );
                    }
                }
                let all: usize = pairs.iter().map(RewardPair::len).sum();
                if packing == Packing::SharedPrefix {
                    assert!(
                        (got.tokens as usize) < all,
                        "{name}: the shared start runs once"
                    );
                } else {
                    assert_eq!(got.tokens as usize, all, "{name}");
                }
                eprintln!("{name} {kernels:?} {packing:?}: largest |Δ| {worst:.2e}");
            }
        }
    }
}

#[test]
fn a_conversation_longer_than_the_limit_rejects_its_row_with_the_reason() {
    let (checkpoint, golden) = open("rm-qwen3");
    let case = &golden["cases"][0];
    let longer = ids(&case["chosen_ids"])
        .len()
        .max(ids(&case["rejected_ids"]).len());
    let conversation = &conversations()[0];
    let exact = checkpoint.reward_tokenizer(longer).unwrap();
    assert!(exact.tokenize(conversation).is_ok());
    let short = checkpoint.reward_tokenizer(longer - 1).unwrap();
    let problem = short.tokenize(conversation).unwrap_err().0;
    assert!(
        problem.contains(&format!("--reward-max-length ({} tokens)", longer - 1)),
        "{problem}"
    );
}

#[test]
fn a_classifier_with_more_than_one_label_is_refused_by_name() {
    let dir = fixtures().join("models/rm-two-labels");
    let err = Checkpoint::open_dir(&dir).unwrap_err().to_string();
    assert!(
        err.contains("config.json") && err.contains("2 labels") && err.contains("num_labels 1"),
        "{err}"
    );
}

#[test]
fn armorm_rejects_a_conversation_without_the_end_of_prompt_it_gates_on() {
    let (checkpoint, _) = open("rm-armorm");
    let tokenizer = checkpoint.reward_tokenizer(4096).unwrap();
    let mut conversation = conversations()[0].clone();
    assert!(tokenizer.tokenize(&conversation).is_ok());
    // No prompt: no `<|eot_id|><|start_header_id|>assistant…` before the response.
    conversation.prompt.clear();
    let problem = tokenizer.tokenize(&conversation).unwrap_err().0;
    assert!(
        problem.contains("the chosen conversation") && problem.contains("ArmoRM's gating"),
        "{problem}"
    );
}

#[test]
fn a_rejected_list_with_its_own_prompt_is_read_as_the_data_holds_it() {
    let (checkpoint, _) = open("rm-qwen3");
    let tokenizer = checkpoint.reward_tokenizer(4096).unwrap();
    let base = conversations()[0].clone();
    let mut other = base.clone();
    other.prompt[0].content = "A different question altogether?".into();
    // The rejected list's own prompt is what the reward model reads for that side.
    let mut split = base.clone();
    split.rejected_prompt = Some(other.prompt.clone());
    let got = tokenizer.tokenize(&split).unwrap();
    assert_eq!(got.chosen, tokenizer.tokenize(&base).unwrap().chosen);
    assert_eq!(got.rejected, tokenizer.tokenize(&other).unwrap().rejected);
    assert_ne!(got.rejected, tokenizer.tokenize(&base).unwrap().rejected);
}
