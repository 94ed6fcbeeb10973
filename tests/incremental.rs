//! Scheduled runs over a growing dataset: `--incremental` scores only the files that are new
//! or changed, reuses the earlier job's scores for the others, and gives the same outputs as
//! a fresh run over all files.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// The same rows with the same values: `scores/`, `ranking.parquet`, `selected/` and
/// `rejected_rows.parquet` of two jobs, and their statistics.
fn assert_same_outputs(fresh: &Path, incremental: &Path) {
    for output in [
        "scores",
        "ranking.parquet",
        "selected",
        "rejected_rows.parquet",
    ] {
        let (a, b) = (
            read_parquet(&fresh.join(output)),
            read_parquet(&incremental.join(output)),
        );
        assert_eq!(a.schema(), b.schema(), "{output}: columns differ");
        assert_eq!(a.num_rows(), b.num_rows(), "{output}: row counts differ");
        for (i, field) in a.schema().fields().iter().enumerate() {
            assert_eq!(
                a.column(i).to_data(),
                b.column(i).to_data(),
                "{output}: column {} differs",
                field.name()
            );
        }
    }
    let (a, b) = (summary(fresh), summary(incremental));
    assert_eq!(a["job_id"], b["job_id"]);
    assert_eq!(a["counts"], b["counts"]);
    assert_eq!(a["statistics"], b["statistics"]);
    assert_eq!(a["selection_cutoff"], b["selection_cutoff"]);
}

/// One more night's file: `rows` pairs with log-probs, some broken.
fn add_file(path: &Path, rows: &str, seed: &str) {
    sample(
        path,
        &[
            "--rows",
            rows,
            "--row-group-rows",
            "40",
            "--with-logps",
            "--bad-rows",
            "3",
            "--seed",
            seed,
        ],
    );
}

fn rank(data: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "rank",
        "-i",
        path_str(data),
        "-o",
        path_str(out),
        "--shard-rows",
        "100",
    ];
    args.extend_from_slice(extra);
    run_ok(&args)
}

#[test]
fn an_incremental_night_scores_only_what_changed_and_equals_a_fresh_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (name, seed) in [("a", "1"), ("c", "2"), ("d", "3"), ("e", "4")] {
        add_file(&data.join(format!("{name}.parquet")), "300", seed);
    }
    let out = dir.path().join("out");
    // The first night has nothing to reuse.
    rank(&data, &out, &["--incremental"]);
    let first = summary(&out);
    assert!(first.get("reused").is_none(), "{first}");

    // The next night: a new file sorts between two old ones (the later files' row ids move),
    // one file is gone and one was rewritten in place.
    add_file(&data.join("b.parquet"), "200", "5");
    std::fs::remove_file(data.join("d.parquet")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    add_file(&data.join("e.parquet"), "250", "6");
    let stdout = rank(&data, &out, &["--incremental"]);
    assert!(stdout.contains("ranked"), "{stdout}");
    let second = summary(&out);
    assert_eq!(second["reused"]["files"], 2, "{second}");
    assert_eq!(second["reused"]["rows"], 600);
    assert_eq!(second["reused"]["from_job"], first["job_id"]);
    assert!(
        !out.join("_next").exists(),
        "the next job was not put in place"
    );

    // A fresh run over the same files gives the same outputs.
    let fresh = dir.path().join("fresh");
    rank(&data, &fresh, &[]);
    assert_same_outputs(&fresh, &out);

    // The same night again: already complete, nothing touched.
    let again = rank(&data, &out, &["--incremental"]);
    assert!(again.contains("already complete"), "{again}");

    // The earlier job's scores may also come from another output folder.
    let elsewhere = dir.path().join("elsewhere");
    add_file(&data.join("f.parquet"), "100", "7");
    rank(&data, &elsewhere, &["--reuse-from", path_str(&out)]);
    assert_eq!(summary(&elsewhere)["reused"]["files"], 4);
    let fresh = dir.path().join("fresh-2");
    rank(&data, &fresh, &[]);
    assert_same_outputs(&fresh, &elsewhere);
}

#[test]
fn reuse_needs_the_same_scoring_or_every_file_is_scored() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    add_file(&data.join("a.parquet"), "200", "1");
    let out = dir.path().join("out");
    rank(&data, &out, &[]);
    add_file(&data.join("b.parquet"), "100", "2");
    // Another shard size cuts the files into other shards: nothing is reused, all is scored.
    run_ok(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&out),
        "--shard-rows",
        "50",
        "--incremental",
    ]);
    assert!(summary(&out).get("reused").is_none());
    // Without --incremental a finished job of other inputs is still refused.
    add_file(&data.join("c.parquet"), "100", "3");
    let err = run_err(&["rank", "-i", path_str(&data), "-o", path_str(&out)]);
    assert!(err.contains("already holds a finished job"), "{err}");
}

#[test]
fn a_model_run_reuses_scores_and_the_model_runs_only_on_the_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let pairs = |path: &Path, seed: &str| {
        sample(
            path,
            &[
                "--rows",
                "30",
                "--row-group-rows",
                "10",
                "--bad-rows",
                "2",
                "--seed",
                seed,
            ],
        );
    };
    pairs(&data.join("a.parquet"), "1");
    pairs(&data.join("b.parquet"), "2");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama-gqa");
    let run = |input: &Path, out: &Path, extra: &[&str]| {
        let mut args = vec![
            "run",
            "-i",
            path_str(input),
            "-o",
            path_str(out),
            "--model",
            path_str(&model),
            "--max-length",
            "128",
            "--max-prompt-length",
            "96",
            "--shard-rows",
            "10",
        ];
        args.extend_from_slice(extra);
        run_ok(&args);
        summary(out)
    };
    let out = dir.path().join("out");
    let first = run(&data, &out, &["--incremental"]);
    pairs(&data.join("c.parquet"), "3");
    let second = run(&data, &out, &["--incremental"]);
    assert_eq!(second["reused"]["files"], 2, "{second}");
    // The model ran on the new file's pairs only: as many tokens as a job over it alone.
    let c_alone = run(&data.join("c.parquet"), &dir.path().join("c-alone"), &[]);
    assert_eq!(second["scoring"]["tokens"], c_alone["scoring"]["tokens"]);
    assert!(
        second["scoring"]["tokens"].as_u64() < first["scoring"]["tokens"].as_u64(),
        "{second}"
    );
    let fresh = dir.path().join("fresh");
    run(&data, &fresh, &[]);
    assert_same_outputs(&fresh, &out);
}

#[test]
fn an_incremental_night_cut_short_leaves_the_finished_job_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    add_file(&data.join("a.parquet"), "300", "1");
    add_file(&data.join("b.parquet"), "300", "2");
    let out = dir.path().join("out");
    rank(&data, &out, &[]);
    let finished = std::fs::read(out.join("summary.json")).unwrap();
    let ranking = std::fs::read(out.join("ranking.parquet")).unwrap();

    // The next night's coordinator fills the reused shards, then waits for workers for the
    // new file, and is killed there.
    add_file(&data.join("c.parquet"), "200", "3");
    let mut coordinator = apscore()
        .args([
            "coordinator",
            "-i",
            path_str(&data),
            "-o",
            path_str(&out),
            "--shard-rows",
            "100",
            "--incremental",
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let done = out.join("_next/_work/done");
    let started = Instant::now();
    while std::fs::read_dir(&done).map_or(0, |d| d.count()) < 6 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the reused shards were not filled"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    // The finished job is untouched.
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), finished);
    assert_eq!(std::fs::read(out.join("ranking.parquet")).unwrap(), ranking);

    // The same command again resumes the next job and puts it in place.
    rank(&data, &out, &["--incremental"]);
    let s = summary(&out);
    assert_eq!(s["counts"]["input_rows"], 800);
    assert_eq!(s["shards"]["resumed"], 6, "{s}");
    let fresh = dir.path().join("fresh");
    rank(&data, &fresh, &[]);
    assert_same_outputs(&fresh, &out);
}
