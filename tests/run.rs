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
    let args = model_run_args(model, out, extra);
    run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// [`run_model`], expected to fail: its standard error.
fn run_model_err(model: &str, out: &Path, extra: &[&str]) -> String {
    let args = model_run_args(model, out, extra);
    run_err(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// The arguments of `apscore run` of the fixture pairs with `model` into `out`, then `extra`.
fn model_run_args(model: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let input = fixtures().join("pairs.parquet");
    let model_dir = fixtures().join("models").join(model);
    let mut args: Vec<String> = vec![
        "run".into(),
        "--input".into(),
        input.to_str().unwrap().into(),
        "--model".into(),
        model_dir.to_str().unwrap().into(),
        "--output".into(),
        out.to_str().unwrap().into(),
        "--max-length".into(),
        "128".into(),
        "--max-prompt-length".into(),
        "96".into(),
        // Rows of 8: three shards, scored two at a time.
        "--shard-rows".into(),
        "8".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
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
        assert!(
            (chosen[i] - c).abs() < 1e-4,
            "{model} row {id}: {} vs {c}",
            chosen[i]
        );
        assert!(
            (rejected[i] - r).abs() < 1e-4,
            "{model} row {id}: {} vs {r}",
            rejected[i]
        );
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
    assert!(
        truncated.iter().any(|&t| t),
        "some pairs are truncated at 128 tokens"
    );
    for name in [
        "ranking.parquet",
        "rejected_rows.parquet",
        "report.html",
        "summary.json",
    ] {
        assert!(out.join(name).exists(), "{name}");
    }
    let summary = summary(&out);
    assert_eq!(summary["command"], "run");
    assert_eq!(summary["tokenization_profile"], "simpo");
    let model = summary["model"].as_str().unwrap();
    assert!(
        model.contains("qwen2-tied") && model.contains("sha256:"),
        "{model}"
    );
    let scoring = &summary["scoring"];
    assert!(scoring["tokens"].as_u64().unwrap() > 24 * 20, "{scoring}");
    let waste = scoring["padding_waste"].as_f64().unwrap();
    assert!((0.0..0.5).contains(&waste), "{scoring}");
    assert!(scoring.get("reward_tokens").is_none(), "{scoring}");
    assert!(stdout.contains("% padding"), "{stdout}");
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

/// `--chat-template FILE` replaces the checkpoint's template (SimPO's for Gemma 2, whose own
/// refuses the system message): the scores are transformers' under that template, and the
/// template's name and sha256 are in summary.json and its bytes in the job id.
#[test]
fn a_chat_template_file_replaces_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let template = fixtures().join("chat_templates/gemma-2-simpo.jinja");
    let template = template.to_str().unwrap();
    let out = dir.path().join("gemma");
    let stdout = run_model("gemma2-tiny", &out, &["--chat-template", template]);
    assert!(stdout.contains("ranked 24 of 24 input rows"), "{stdout}");
    assert!(assert_scores_match("gemma2-tiny", &out).is_empty());
    let facts = summary(&out);
    let model = facts["model"].as_str().unwrap();
    assert!(
        model.contains("chat template") && model.contains("gemma-2-simpo.jinja"),
        "{model}"
    );
    let setup = &facts["scoring_setup"]["model"]["chat_template"];
    let sha = setup["sha256"].as_str().unwrap();
    assert!(model.contains(sha), "{model} vs {setup}");
    assert!(setup.get("text").is_none(), "{setup}");

    // Other bytes are another job, scoring other tokens.
    let edited = dir.path().join("edited.jinja");
    let text = std::fs::read_to_string(template).unwrap();
    std::fs::write(&edited, text.replace("<start_of_turn>", "<start_of_turn> ")).unwrap();
    let edited_out = dir.path().join("edited");
    run_model(
        "gemma2-tiny",
        &edited_out,
        &["--chat-template", edited.to_str().unwrap()],
    );
    let job_id = |out: &Path| summary(out)["job_id"].as_str().unwrap().to_string();
    assert_ne!(job_id(&edited_out), job_id(&out));
    let scores = f64s(&read_parquet(&edited_out.join("scores")), "chosen_logps");
    let golden = f64s(&read_parquet(&out.join("scores")), "chosen_logps");
    assert_ne!(scores, golden, "an edited template scores other tokens");

    // inspect-model says which template is in force.
    let gemma = fixtures().join("models/gemma2-tiny");
    let text = run_ok(&["inspect-model", gemma.to_str().unwrap()]);
    assert!(
        text.contains("chat template in force the checkpoint's"),
        "{text}"
    );
    let text = run_ok(&[
        "inspect-model",
        gemma.to_str().unwrap(),
        "--chat-template",
        template,
    ]);
    assert!(
        text.contains(sha) && text.contains("Gemma2ForCausalLM"),
        "{text}"
    );
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
    let err = run_err(&[
        "run",
        "-i",
        input,
        "-o",
        out,
        "-m",
        dir.path().to_str().unwrap(),
    ]);
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
        "run",
        "-i",
        input,
        "-o",
        out,
        "-m",
        qwen.to_str().unwrap(),
        "--dtype",
        "bf16",
    ]);
    assert!(err.contains("--device cuda"), "{err}");

    // A GPU that is not there, on the command line or in a job file (or a build without
    // wgpu): the device is named, nothing panics.
    let job = dir.path().join("gpu.toml");
    std::fs::write(&job, "device = \"wgpu:98\"\n").unwrap();
    let job = job.to_str().unwrap();
    for device in [["--device", "wgpu:99"], ["--job", job]] {
        let mut args = vec!["run", "-i", input, "-o", out, "-m", qwen.to_str().unwrap()];
        args.extend(device);
        let err = run_err(&args);
        assert!(
            err.contains("--device wgpu:9") && !err.contains("panicked"),
            "{err}"
        );
    }

    // Nothing was written for the failed jobs.
    assert!(!Path::new(out).join("summary.json").exists());
}

/// `--device wgpu` end to end, from a job file (its keys are the flags): the scores equal
/// transformers' and the log names the adapter that ran them; the kernel tuning is kept in
/// `--kernel-cache`.
#[cfg(feature = "wgpu")]
#[test]
#[ignore = "needs a Vulkan device (mesa-vulkan-drivers): bash .ci/run installs it"]
fn run_on_wgpu_scores_like_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    std::fs::write(&job, "device = \"wgpu\"\n").unwrap();
    let (input, model) = (
        fixtures().join("pairs.parquet"),
        fixtures().join("models/llama-gqa"),
    );
    let out = dir.path().join("llama");
    let kernels = dir.path().join("kernels");
    let args = [
        "run",
        "--job",
        path_str(&job),
        "--kernel-cache",
        path_str(&kernels),
        "--input",
        path_str(&input),
        "--model",
        path_str(&model),
        "--output",
        path_str(&out),
        "--max-length",
        "128",
        "--max-prompt-length",
        "96",
    ];
    let output = apscore()
        .env("RUST_LOG", "info")
        .args(args)
        .output()
        .unwrap();
    assert_success(&output, &args);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("wgpu adapter"), "{log}");
    assert_eq!(assert_scores_match("llama-gqa", &out).len(), 1);
    // CubeCL's autotune results, written under the folder named (not under ./target); CubeCL
    // creates its files empty, so an empty one proves nothing.
    let tuned = files_under(&kernels);
    assert!(
        tuned.iter().any(|f| {
            f.strip_prefix(&kernels).unwrap().starts_with("autotune")
                && f.metadata().unwrap().len() > 0
        }),
        "no autotune results in {}: {tuned:?}",
        kernels.display()
    );
}

#[test]
fn a_reference_model_gives_the_dpo_margin_and_ranks_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dpo");
    // llama-gqa and llama-bf16 share the tokenizer and template, so the goldens of each apply.
    let reference = fixtures().join("models/llama-bf16");
    run_model(
        "llama-gqa",
        &out,
        &[
            "--reference-model",
            reference.to_str().unwrap(),
            "--implicit",
            "dpo",
        ],
    );
    assert_scores_match("llama-gqa", &out);
    let policy = golden("llama-gqa");
    let reference = golden("llama-bf16");
    let scores = read_parquet(&out.join("scores"));
    let ids = i64s(&scores, "row_id");
    let c_ref = f64s(&scores, "ref_chosen_logps");
    let r_ref = f64s(&scores, "ref_rejected_logps");
    let dpo = f64s(&scores, "dpo_margin");
    let rm = f64s(&scores, "rm_margin");
    for (i, &id) in ids.iter().enumerate() {
        let p = &policy["logps"]["rows"][id as usize];
        let r = &reference["logps"]["rows"][id as usize];
        let want_c_ref = r["chosen"].as_f64().unwrap();
        let want_r_ref = r["rejected"].as_f64().unwrap();
        assert!((c_ref[i] - want_c_ref).abs() < 1e-4, "row {id}");
        assert!((r_ref[i] - want_r_ref).abs() < 1e-4, "row {id}");
        let want = (p["chosen"].as_f64().unwrap() - want_c_ref)
            - (p["rejected"].as_f64().unwrap() - want_r_ref);
        assert!(
            (dpo[i] - want).abs() < 2e-4,
            "row {id}: {} vs {want}",
            dpo[i]
        );
    }

    // The ranking is M_AP over the DPO margin (population z-scores, ties by row id).
    let z = |v: &[f64]| -> Vec<f64> {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        v.iter().map(|x| (x - mean) / std).collect()
    };
    let abs: Vec<f64> = dpo.iter().map(|x| x.abs()).collect();
    let (z_rm, z_dpo) = (z(&rm), z(&abs));
    let mut expected: Vec<(f64, i64)> = (0..ids.len())
        .map(|i| (z_rm[i] - z_dpo[i], ids[i]))
        .collect();
    expected.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let ranking = read_parquet(&out.join("ranking.parquet"));
    let ranked = i64s(&ranking, "row_id");
    assert_eq!(ranked, expected.iter().map(|e| e.1).collect::<Vec<_>>());
    let ap = f64s(&ranking, "alignment_potential");
    assert!((ap[0] - expected[0].0).abs() < 1e-9);
    assert!(ranking.column_by_name("z_dpo_margin_abs").is_some());
    assert!(ranking.column_by_name("dpo_margin").is_some());
    let summary = summary(&out);
    assert_eq!(summary["implicit_margin"], "dpo_margin");
    assert!(summary["model"].as_str().unwrap().contains("reference"));
    assert!(summary["statistics"]["dpo_margin"]["count"].as_u64() == Some(23));

    // selected/ trains without another reference pass: it carries the reference log-probs
    // under the names TRL's DPOTrainer reads as precomputed.
    let selected = read_parquet(&out.join("selected"));
    let by_id: std::collections::HashMap<i64, (f64, f64)> = ids
        .iter()
        .zip(c_ref.iter().zip(&r_ref))
        .map(|(&id, (&c, &r))| (id, (c, r)))
        .collect();
    let (sel_c, sel_r) = (
        f64s(&selected, "ref_chosen_logps"),
        f64s(&selected, "ref_rejected_logps"),
    );
    for (i, id) in i64s(&selected, "row_id").into_iter().enumerate() {
        assert_eq!((sel_c[i], sel_r[i]), by_id[&id], "row {id}");
    }

    // `select` can re-rank the same scores by the SimPO margin without scoring again.
    let simpo = dir.path().join("simpo");
    run_ok(&[
        "select",
        "--from",
        out.to_str().unwrap(),
        "--output",
        simpo.to_str().unwrap(),
        "--implicit",
        "simpo",
    ]);
    assert!(
        read_parquet(&simpo.join("ranking.parquet"))
            .column_by_name("z_logp_margin_norm_abs")
            .is_some()
    );
    assert_eq!(
        common::summary(&simpo)["implicit_margin"],
        "logp_margin_norm"
    );
    // … and back to DPO (the copied scores keep the reference columns), but not from a job
    // that ran without a reference model.
    let back = dir.path().join("back");
    run_ok(&[
        "select",
        "--from",
        simpo.to_str().unwrap(),
        "--output",
        back.to_str().unwrap(),
        "--implicit",
        "dpo",
    ]);
    assert_eq!(
        i64s(&read_parquet(&back.join("ranking.parquet")), "row_id"),
        ranked
    );
    let plain = dir.path().join("plain");
    run_model("llama-gqa", &plain, &[]);
    let err = run_err(&[
        "select",
        "--from",
        plain.to_str().unwrap(),
        "--output",
        dir.path().join("none").to_str().unwrap(),
        "--implicit",
        "dpo",
    ]);
    assert!(err.contains("no dpo_margin"), "{err}");

    // Without a reference model, --implicit dpo is refused up front.
    let err = run_model_err("llama-gqa", &dir.path().join("x"), &["--implicit", "dpo"]);
    assert!(err.contains("--reference-model"), "{err}");
}

#[test]
#[ignore = "needs the SmolLM2 GGUF in the apscore cache: bash .ci/run fetches it"]
fn demo_ranks_real_pairs_with_smollm2() {
    smollm2_gguf();
    let cache = apscore_cache();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let stdout = run_ok(&[
        "demo",
        "--output",
        out.to_str().unwrap(),
        "--model-cache",
        cache.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("20 pairs scored by SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{stdout}"
    );
    assert!(
        stdout.contains("What is 12 times 12?") || stdout.contains("rank"),
        "{stdout}"
    );
    let summary = summary(&out.join("run"));
    assert_eq!(summary["counts"]["scored_rows"], 20);
    assert_eq!(summary["counts"]["selected_rows"], 8);
    assert!(summary["model"].as_str().unwrap().contains("sha256:"));
    // An instruct model prefers the right answers: most pairs have a positive margin.
    let margins = f64s(&read_parquet(&out.join("run/scores")), "logp_margin_norm");
    let positive = margins.iter().filter(|m| **m > 0.0).count();
    assert!(
        positive >= 14,
        "only {positive} of 20 pairs have chosen ≻ rejected"
    );
}

#[test]
#[ignore = "needs the SmolLM2 GGUF in the apscore cache: bash .ci/run fetches it"]
fn inspect_model_says_what_a_checkpoint_holds() {
    let qwen = fixtures().join("models/qwen2-tied");
    let text = run_ok(&["inspect-model", qwen.to_str().unwrap(), "--load"]);
    for expected in [
        "Qwen2ForCausalLM",
        "key/value heads 1",
        "tied embeddings        true",
        "every tensor loads",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    let gguf = smollm2_gguf();
    let text = run_ok(&["inspect-model", gguf.to_str().unwrap()]);
    for expected in [
        "GGUF v3",
        "Q4_1 ×",
        "Q8_0 ×1",
        "layers                 30",
        "<|im_start|>",
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
}

#[test]
fn a_job_the_machine_cannot_hold_is_refused_at_start_with_the_arithmetic() {
    let dir = tempfile::tempdir().unwrap();
    // A batch so large that its working memory exceeds any machine's.
    let err = run_model_err(
        "llama-gqa",
        &dir.path().join("out"),
        &["--batch-tokens", "100000000000"],
    );
    assert!(
        err.contains("the job's models: ")
            && err.contains("needed on cpu (weights")
            && err.contains("GiB available")
            && err.contains("--batch-tokens"),
        "{err}"
    );
    assert!(!dir.path().join("out/summary.json").exists());
}
