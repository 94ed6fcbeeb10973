//! The families beyond Llama against transformers (eager attention, f32): Qwen3, Gemma 2 (a
//! transformers-5 config in f32 and an older Hub config in bf16) and Mistral with a sliding
//! window shorter than the pairs. Token ids must equal the goldens and each response's log-prob
//! sum must be within 1e-4 of transformers', on the host kernels (prompt shared and not) and on
//! burn's kernels. Goldens: `tests/fixtures/make_fixtures.py`; where a golden names a template
//! file (`chat_template`), it replaces the checkpoint's, as `--chat-template` does.

use apscore_worker::model::{
    Checkpoint, ComputeDtype, DeviceSpec, Kernels, Packing, load_cpu_model, load_model,
};
use apscore_worker::scorer::{ScorerProgress, score_pairs};

mod common;
use common::*;

const FAMILIES: [&str; 4] = [
    "qwen3-tiny",
    "gemma2-tiny",
    "gemma2-hub-bf16",
    "mistral-window",
];

#[test]
fn family_configs_are_read_as_their_config_classes() {
    let config = |name: &str| open(name).0.config;
    let qwen3 = config("qwen3-tiny");
    assert_eq!(qwen3.architecture, "Qwen3ForCausalLM");
    assert!(qwen3.design.attention.qk_norm && !qwen3.design.attention.qkv_bias);
    let gemma = config("gemma2-tiny");
    assert_eq!(gemma.design.windows, vec![None, Some(16), None]);
    assert_eq!(gemma.design.attention.scale, 20f64.powf(-0.5));
    assert_eq!(
        (gemma.design.attention.softcap, gemma.design.final_softcap),
        (Some(4.0), Some(8.0))
    );
    // No layer_types in the older Hub layout: even layers slide.
    let hub = config("gemma2-hub-bf16");
    assert_eq!(hub.design.windows, vec![Some(12), None, Some(12)]);
    assert_eq!(hub.stored_dtype.as_deref(), Some("bfloat16"));
    let mistral = config("mistral-window");
    assert_eq!(mistral.design.windows, vec![Some(12); 2]);
}

#[test]
fn family_token_ids_equal_the_reference_preprocessing() {
    for name in FAMILIES {
        let (checkpoint, golden) = open(name);
        for case in golden["tokenization"].as_array().unwrap() {
            let template = case["chat_template"].as_str();
            let checkpoint = with_template(&checkpoint, template);
            let params = params(case);
            let tokenizer = checkpoint.pair_tokenizer(params).unwrap();
            let rows = case["rows"].as_array().unwrap();
            let at = format!("{name}, template {template:?}, {params:?}");
            let scored = assert_tokenization_case(&at, &tokenizer, rows).len();
            // A template that refuses rows refuses them all here (Gemma's own refuses the
            // system message); any other case scores most pairs.
            assert!(
                scored == 0 || scored * 2 > rows.len(),
                "{name}: {scored} pairs"
            );
        }
    }
}

#[test]
fn family_logprob_sums_equal_transformers_within_1e4() {
    for name in FAMILIES {
        let (checkpoint, golden) = open_family(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        assert!(pairs.len() >= 12, "{name}: {} pairs scored", pairs.len());
        let model = load_model(&checkpoint, DeviceSpec::Cpu, ComputeDtype::F32).unwrap();
        for packing in [Packing::SharedPrefix, Packing::Separate] {
            let scores = score_pairs(
                model.as_ref(),
                &pairs,
                400,
                packing,
                &ScorerProgress::default(),
            );
            let what = format!("{name}, host kernels, {packing:?}");
            let worst = assert_equal_to_goldens(&what, &scores, &wanted);
            eprintln!("{what}: largest difference from transformers {worst:.2e}");
        }
    }
}

#[test]
fn family_burn_kernels_score_like_transformers() {
    for name in FAMILIES {
        let (checkpoint, golden) = open_family(name);
        let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
        let model = load_cpu_model(&checkpoint, Kernels::Burn).unwrap();
        for packing in [Packing::SharedPrefix, Packing::Separate] {
            let scores = score_pairs(
                model.as_ref(),
                &pairs,
                400,
                packing,
                &ScorerProgress::default(),
            );
            let what = format!("{name}, burn kernels, {packing:?}");
            let worst = assert_equal_to_goldens(&what, &scores, &wanted);
            eprintln!("{what}: largest difference from transformers {worst:.2e}");
        }
    }
}

/// The window is real: without it the Mistral sums move away from transformers'.
#[test]
fn mistral_window_changes_the_sums() {
    let (mut checkpoint, golden) = open_family("mistral-window");
    let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
    checkpoint.config.design.windows = vec![None; checkpoint.config.num_layers];
    let model = load_model(&checkpoint, DeviceSpec::Cpu, ComputeDtype::F32).unwrap();
    let scores = score_pairs(
        model.as_ref(),
        &pairs,
        400,
        Packing::SharedPrefix,
        &ScorerProgress::default(),
    );
    let moved = scores
        .iter()
        .zip(&wanted)
        .filter(|(s, w)| (s.chosen.sum - w["chosen"].as_f64().unwrap()).abs() > 1e-3)
        .count();
    assert!(moved >= pairs.len() / 4, "only {moved} sums moved");
}

/// Gemma 2's soft-capping and windows are real on the fixture: without any one of them the sums
/// move away from transformers'.
#[test]
fn gemma2_capping_and_windows_change_the_sums() {
    let (checkpoint, golden) = open_family("gemma2-tiny");
    let (pairs, wanted) = golden_pairs(&checkpoint, &golden);
    type Change = fn(&mut Checkpoint);
    let changes: [(&str, Change); 3] = [
        ("attention soft-capping", |c| {
            c.config.design.attention.softcap = None
        }),
        ("final soft-capping", |c| {
            c.config.design.final_softcap = None
        }),
        ("sliding window", |c| {
            c.config.design.windows = vec![None; c.config.num_layers]
        }),
    ];
    for (what, change) in changes {
        let mut changed = checkpoint.clone();
        change(&mut changed);
        let model = load_model(&changed, DeviceSpec::Cpu, ComputeDtype::F32).unwrap();
        let scores = score_pairs(
            model.as_ref(),
            &pairs,
            400,
            Packing::SharedPrefix,
            &ScorerProgress::default(),
        );
        let moved = scores
            .iter()
            .zip(&wanted)
            .filter(|(s, w)| (s.chosen.sum - w["chosen"].as_f64().unwrap()).abs() > 1e-3)
            .count();
        assert!(moved >= pairs.len() / 4, "{what}: only {moved} sums moved");
    }
}
