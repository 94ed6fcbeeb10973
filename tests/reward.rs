//! End-to-end tests of `--reward-model`: the binary scores the fixture pairs with a policy and a
//! reward model, writes the reward model's scores (equal to transformers', goldens from
//! `tests/fixtures/make_reward_fixtures.py`), ranks by its margin, compares it with the data's
//! own, and rejects conversations longer than `--reward-max-length` with the reason.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use common::*;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `run` of the fixture pairs in `input` with qwen3-tiny as the policy and `reward` as the
/// reward model, three shards of 8 rows.
fn run_with_reward(input: &Path, reward: &str, out: &Path, extra: &[&str]) -> String {
    let policy = fixtures().join("models/qwen3-tiny");
    let reward = fixtures().join("models").join(reward);
    let mut args = vec![
        "run",
        "-i",
        path_str(input),
        "-m",
        path_str(&policy),
        "--reward-model",
        path_str(&reward),
        "-o",
        path_str(out),
        "--shard-rows",
        "8",
    ];
    args.extend_from_slice(extra);
    run_ok(&args)
}

/// Spearman's rank correlation, the textbook way: average ranks of ties, then Pearson.
fn spearman(x: &[f64], y: &[f64]) -> f64 {
    let ranks = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .map(|a| {
                let below = v.iter().filter(|b| *b < a).count() as f64;
                let equal = v.iter().filter(|b| *b == a).count() as f64;
                below + (equal + 1.0) / 2.0
            })
            .collect()
    };
    let (rx, ry) = (ranks(x), ranks(y));
    let n = x.len() as f64;
    let (mx, my) = (rx.iter().sum::<f64>() / n, ry.iter().sum::<f64>() / n);
    let cov: f64 = rx.iter().zip(&ry).map(|(a, b)| (a - mx) * (b - my)).sum();
    let var = |r: &[f64], m: f64| r.iter().map(|a| (a - m).powi(2)).sum::<f64>();
    cov / (var(&rx, mx) * var(&ry, my)).sqrt()
}

#[test]
fn a_reward_model_gives_the_explicit_margin_and_is_compared_with_the_datas() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let golden = json(&fixtures().join("goldens/rm-qwen2.json"));
    let cases = golden["cases"].as_array().unwrap();
    // A limit that some conversations exceed: their rows are rejected, never truncated.
    let limit = 80usize;
    let too_long = |c: &serde_json::Value| {
        let len = |side: &str| c[side].as_array().unwrap().len();
        len("chosen_ids").max(len("rejected_ids")) > limit
    };
    assert!(cases.iter().any(too_long) && !cases.iter().all(too_long));
    let input = fixtures().join("pairs.parquet");
    run_with_reward(
        &input,
        "rm-qwen2",
        &out,
        &["--reward-max-length", &limit.to_string()],
    );

    let scores = read_parquet(&out.join("scores"));
    let ids = i64s(&scores, "row_id");
    let (rm_c, rm_r) = (f64s(&scores, "rm_chosen"), f64s(&scores, "rm_rejected"));
    let (rm, data) = (f64s(&scores, "rm_margin"), f64s(&scores, "data_rm_margin"));
    let pairs = json(&fixtures().join("pairs.json"));
    for (i, &id) in ids.iter().enumerate() {
        let case = &cases[id as usize];
        assert!(!too_long(case), "row {id} is over the limit but was scored");
        let (want_c, want_r) = (
            case["chosen"].as_f64().unwrap(),
            case["rejected"].as_f64().unwrap(),
        );
        assert!(
            (rm_c[i] - want_c).abs() < 1e-4,
            "row {id}: {} vs {want_c}",
            rm_c[i]
        );
        assert!(
            (rm_r[i] - want_r).abs() < 1e-4,
            "row {id}: {} vs {want_r}",
            rm_r[i]
        );
        assert_eq!(rm[i], rm_c[i] - rm_r[i], "row {id}");
        let pair = &pairs[id as usize];
        let want_data =
            pair["score_chosen"].as_f64().unwrap() - pair["score_rejected"].as_f64().unwrap();
        assert_eq!(data[i], want_data, "row {id}");
    }
    // Every row over the limit is listed with the reason.
    let rejected = read_parquet(&out.join("rejected_rows.parquet"));
    let reasons: HashMap<i64, String> = i64s(&rejected, "row_id")
        .into_iter()
        .zip(strings(&rejected, "reason"))
        .collect();
    for (id, case) in cases.iter().enumerate() {
        if too_long(case) {
            let reason = &reasons[&(id as i64)];
            assert!(
                reason.contains(&format!("--reward-max-length ({limit} tokens)")),
                "{reason}"
            );
        }
    }
    assert_eq!(ids.len() + reasons.len(), cases.len());

    // The ranking is M_AP with the reward model's margin (population z-scores, ties by id).
    let z = |v: &[f64]| -> Vec<f64> {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        v.iter().map(|x| (x - mean) / std).collect()
    };
    let implicit: Vec<f64> = f64s(&scores, "logp_margin_norm")
        .iter()
        .map(|x| x.abs())
        .collect();
    let (z_rm, z_implicit) = (z(&rm), z(&implicit));
    let mut expected: Vec<(f64, i64)> = (0..ids.len())
        .map(|i| (z_rm[i] - z_implicit[i], ids[i]))
        .collect();
    expected.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let ranking = read_parquet(&out.join("ranking.parquet"));
    assert_eq!(
        i64s(&ranking, "row_id"),
        expected.iter().map(|e| e.1).collect::<Vec<_>>()
    );

    // summary.json says where the margin came from and how it agrees with the data's.
    let summary = summary(&out);
    let explicit = &summary["explicit_margin"];
    assert_eq!(explicit["source"], "reward_model");
    let identity = explicit["reward_model"].as_str().unwrap();
    assert!(identity.contains("rm-qwen2 (sha256:"), "{identity}");
    assert!(summary["model"].as_str().unwrap().ends_with(identity));
    let agreement = &explicit["agreement"];
    assert_eq!(agreement["rows"].as_u64(), Some(ids.len() as u64));
    let want = spearman(&rm, &data);
    let got = agreement["spearman"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    let negative = rm.iter().filter(|m| **m < 0.0).count() as f64 / rm.len() as f64;
    assert_eq!(explicit["prefers_rejected_share"].as_f64(), Some(negative));
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("Spearman") && report.contains("reward_vs_data.png"));
    assert!(out.join("report/reward_vs_data.png").is_file());
}

#[test]
fn data_without_a_margin_is_ranked_by_the_reward_model_alone() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture pairs without their score columns: raw preference data.
    let all = read_parquet(&fixtures().join("pairs.parquet"));
    let keep: Vec<usize> = ["chosen", "rejected"]
        .iter()
        .map(|n| all.schema().index_of(n).unwrap())
        .collect();
    let raw: RecordBatch = all.project(&keep).unwrap();
    let input = dir.path().join("raw.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&input).unwrap(),
        Arc::clone(&raw.schema()),
        None,
    )
    .unwrap();
    writer.write(&raw).unwrap();
    writer.close().unwrap();

    // Without a reward model such data cannot be ranked: the error says what is missing.
    let policy = fixtures().join("models/qwen3-tiny");
    let err = run_err(&[
        "run",
        "-i",
        path_str(&input),
        "-m",
        path_str(&policy),
        "-o",
        path_str(&dir.path().join("none")),
    ]);
    assert!(err.contains("no explicit reward margin"), "{err}");

    let out = dir.path().join("out");
    run_with_reward(&input, "rm-gemma2", &out, &[]);
    let golden = json(&fixtures().join("goldens/rm-gemma2.json"));
    let scores = read_parquet(&out.join("scores"));
    assert!(scores.column_by_name("data_rm_margin").is_none());
    let rm = f64s(&scores, "rm_margin");
    // The reward model's tokens: both conversations of each pair, their common start once
    // (or twice, where the model reads each conversation in its own row).
    let (mut shared_start_once, mut each_alone) = (0, 0);
    for (i, id) in i64s(&scores, "row_id").into_iter().enumerate() {
        let case = &golden["cases"][id as usize];
        let want = case["chosen"].as_f64().unwrap() - case["rejected"].as_f64().unwrap();
        assert!((rm[i] - want).abs() < 2e-4, "row {id}: {} vs {want}", rm[i]);
        let ids = |side: &str| -> Vec<u64> {
            let ids = case[side].as_array().unwrap();
            ids.iter().map(|v| v.as_u64().unwrap()).collect()
        };
        let (chosen, rejected) = (ids("chosen_ids"), ids("rejected_ids"));
        let common = chosen
            .iter()
            .zip(&rejected)
            .take_while(|(a, b)| a == b)
            .count();
        each_alone += chosen.len() + rejected.len();
        shared_start_once += chosen.len() + rejected.len() - common;
    }
    let summary = summary(&out);
    let reward_tokens = summary["scoring"]["reward_tokens"].as_u64().unwrap() as usize;
    assert!(
        reward_tokens == shared_start_once || reward_tokens == each_alone,
        "{reward_tokens} reward tokens, not {shared_start_once} nor {each_alone}"
    );
    assert_eq!(summary["counts"]["scored_rows"].as_u64(), Some(24));
    assert_eq!(summary["explicit_margin"]["source"], "reward_model");
    assert!(summary["explicit_margin"].get("agreement").is_none());
}

#[test]
fn models_given_in_the_wrong_place_are_refused_by_flag() {
    let dir = tempfile::tempdir().unwrap();
    let input = fixtures().join("pairs.parquet");
    let refusal = |policy: &str, reward: Option<&str>| {
        let model = |name: &str| fixtures().join("models").join(name);
        let out = dir
            .path()
            .join(format!("{policy}-{}", reward.unwrap_or("none")));
        let (policy, reward) = (model(policy), reward.map(model));
        let mut args = vec!["run", "-i", path_str(&input), "-m", path_str(&policy)];
        if let Some(reward) = &reward {
            args.extend(["--reward-model", path_str(reward)]);
        }
        args.extend(["-o", path_str(&out)]);
        run_err(&args)
    };
    let err = refusal("qwen3-tiny", Some("qwen3-tiny"));
    assert!(
        err.contains("--reward-model") && err.contains("a causal language model"),
        "{err}"
    );
    let err = refusal("rm-qwen3", None);
    assert!(
        err.contains("--model") && err.contains("give it as --reward-model"),
        "{err}"
    );
    // Two labels: not a reward model apscore can use.
    let err = refusal("qwen3-tiny", Some("rm-two-labels"));
    assert!(err.contains("2 labels"), "{err}");
}
