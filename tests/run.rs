//! End-to-end tests of `apscore run`: the binary scores the fixture pairs with the fixture
//! checkpoints and its log-probs equal transformers' (goldens from
//! `tests/fixtures/make_fixtures.py`); bad rows and bad models give clear reasons.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn golden(model: &str) -> serde_json::Value {
    let path = fixtures().join(format!("goldens/{model}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn run_model(model: &str, out: &Path, extra: &[&str]) -> String {
    let input = fixtures().join("pairs.parquet");
    let model_dir = fixtures().join("models").join(model);
    let mut args = vec![
        "run",
        "--input",
        input.to_str().unwrap(),
        "--model",
        model_dir.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--max-length",
        "128",
        "--max-prompt-length",
        "96",
        // Rows of 8: three shards, scored two at a time.
        "--shard-rows",
        "8",
    ];
    args.extend_from_slice(extra);
    run_ok(&args)
}

/// Checks `scores/` against the golden log-probs row by row; returns the rejected row ids.
fn assert_scores_match(model: &str, out: &Path) -> Vec<i64> {
    let golden = golden(model);
    let rows = golden["logps"]["rows"].as_array().unwrap();
    let scores = read_parquet(&out.join("scores"));
    let row_ids = i64s(&scores, "row_id");
    let chosen = f64s(&scores, "chosen_logps");
    let rejected = f64s(&scores, "rejected_logps");
    let chosen_norm = f64s(&scores, "chosen_logps_norm");
    let margin_norm = f64s(&scores, "logp_margin_norm");
    let chosen_tokens = i64s(&scores, "chosen_tokens");
    let truncated = bools(&scores, "truncated");
    for (i, &id) in row_ids.iter().enumerate() {
        let want = &rows[id as usize];
        let c = want["chosen"].as_f64().unwrap();
        let r = want["rejected"].as_f64().unwrap();
        let ct = want["chosen_tokens"].as_f64().unwrap();
        let rt = want["rejected_tokens"].as_f64().unwrap();
        assert!((chosen[i] - c).abs() < 1e-4, "{model} row {id}: {} vs {c}", chosen[i]);
        assert!((rejected[i] - r).abs() < 1e-4, "{model} row {id}: {} vs {r}", rejected[i]);
        assert_eq!(chosen_tokens[i] as f64, ct, "{model} row {id}");
        assert!((chosen_norm[i] - c / ct).abs() < 1e-5);
        assert!((margin_norm[i] - (c / ct - r / rt)).abs() < 1e-5);
        assert_eq!(truncated[i], want["truncated"].as_bool().unwrap());
    }
    let expected_rejected: Vec<i64> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.get("error").is_some())
        .map(|(i, _)| i as i64)
        .collect();
    assert_eq!(row_ids.len() + expected_rejected.len(), rows.len());
    expected_rejected
}

#[test]
fn run_scores_like_transformers_and_writes_every_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("qwen");
    let stdout = run_model("qwen2-tied", &out, &["--batch-tokens", "300"]);
    assert!(stdout.contains("ranked 24 of 24 input rows"), "{stdout}");
    assert!(assert_scores_match("qwen2-tied", &out).is_empty());
    let truncated = bools(&read_parquet(&out.join("scores")), "truncated");
    assert!(truncated.iter().any(|&t| t), "some pairs are truncated at 128 tokens");
    for name in ["ranking.parquet", "rejected_rows.parquet", "report.html", "summary.json"] {
        assert!(out.join(name).exists(), "{name}");
    }
    let summary = summary(&out);
    assert_eq!(summary["command"], "run");
    assert_eq!(summary["tokenization_profile"], "simpo");
    let model = summary["model"].as_str().unwrap();
    assert!(model.contains("qwen2-tied") && model.contains("sha256:"), "{model}");
    // The ranking is over the computed margins.
    let ranking = read_parquet(&out.join("ranking.parquet"));
    assert_eq!(ranking.num_rows(), 24);
}

#[test]
fn a_template_error_rejects_the_row_with_the_templates_message() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("llama");
    run_model("llama-gqa", &out, &[]);
    let rejected_ids = assert_scores_match("llama-gqa", &out);
    assert_eq!(rejected_ids.len(), 1);
    let rejected = read_parquet(&out.join("rejected_rows.parquet"));
    assert_eq!(i64s(&rejected, "row_id"), rejected_ids);
    let reason = &strings(&rejected, "reason")[0];
    assert!(
        reason.contains("chat template") && reason.contains("Tool messages are not supported"),
        "{reason}"
    );
    let summary = summary(&out);
    assert_eq!(summary["counts"]["rejected_rows"], 1);
    assert_eq!(summary["counts"]["scored_rows"], 23);
}

#[test]
fn bf16_checkpoint_scores_in_f32_and_batch_size_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    let large = dir.path().join("large");
    run_model("llama-bf16", &small, &["--batch-tokens", "64"]);
    run_model("llama-bf16", &large, &["--batch-tokens", "100000"]);
    assert_scores_match("llama-bf16", &small);
    assert_scores_match("llama-bf16", &large);
}

#[test]
fn model_problems_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixtures().join("pairs.parquet");
    let input = input.to_str().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();

    // Not a checkpoint directory.
    let err = run_err(&["run", "-i", input, "-o", out, "-m", dir.path().to_str().unwrap()]);
    assert!(err.contains("config.json"), "{err}");

    // An architecture apscore does not have.
    let model = dir.path().join("gptneox");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(fixtures().join("models/qwen2-tied")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let config = std::fs::read_to_string(model.join("config.json")).unwrap();
    std::fs::write(
        model.join("config.json"),
        config.replace("Qwen2ForCausalLM", "GPTNeoXForCausalLM"),
    )
    .unwrap();
    let err = run_err(&["run", "-i", input, "-o", out, "-m", model.to_str().unwrap()]);
    assert!(
        err.contains("GPTNeoXForCausalLM") && err.contains("LlamaForCausalLM"),
        "{err}"
    );

    // bf16 compute needs a GPU.
    let qwen = fixtures().join("models/qwen2-tied");
    let err = run_err(&[
        "run", "-i", input, "-o", out, "-m", qwen.to_str().unwrap(), "--dtype", "bf16",
    ]);
    assert!(err.contains("--device cuda"), "{err}");

    // Nothing was written for the failed jobs.
    assert!(!Path::new(out).join("summary.json").exists());
}
