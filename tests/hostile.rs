//! Hostile input and concurrent use: every case ends with a clear error (exit 2 or 3) or a
//! correct result, never a hang, a lost row or a wrong answer with exit 0. The table of cases
//! is `docs/hostile-input.md`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use common::*;
use parquet::arrow::ArrowWriter;

/// Runs `apscore args…` and fails the test if it has not ended after `limit`.
fn run_within(limit: Duration, args: &[&str]) -> Output {
    let mut child = apscore()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "apscore {} did not end within {limit:?}; stderr:\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Waits until `path` exists; fails the test after `limit`.
fn wait_for_path(path: &Path, limit: Duration) {
    let started = Instant::now();
    while !path.exists() {
        assert!(
            started.elapsed() < limit,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn exit_code(out: &Output) -> i32 {
    out.status.code().expect("exited, not killed by a signal")
}

/// A pre-scored dataset without text: the score and log-prob columns `rank` reads.
fn write_scored(path: &Path, columns: &[(&str, Vec<f64>)]) {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(name, _)| Field::new(*name, DataType::Float64, true))
        .collect();
    let arrays: Vec<ArrayRef> = columns
        .iter()
        .map(|(_, v)| Arc::new(Float64Array::from(v.clone())) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

/// `n` ordinary pre-scored pairs, deterministic.
fn ordinary(n: usize) -> Vec<(&'static str, Vec<f64>)> {
    let wave = |scale: f64, shift: f64| -> Vec<f64> {
        (0..n)
            .map(|i| shift + scale * ((i as f64 * 0.7).sin() + (i as f64 * 0.13).cos()))
            .collect()
    };
    vec![
        ("score_chosen", wave(2.0, 6.0)),
        ("score_rejected", wave(1.5, 4.0)),
        ("chosen_logps", wave(40.0, -150.0)),
        ("rejected_logps", wave(35.0, -160.0)),
        ("chosen_logps_norm", wave(0.4, -1.2)),
        ("rejected_logps_norm", wave(0.3, -1.4)),
    ]
}

fn every_statistic_is_finite(out: &Path) {
    let summary = summary(out);
    let stats = summary["statistics"].as_object().unwrap();
    assert!(!stats.is_empty());
    for (name, s) in stats {
        for key in ["mean", "std"] {
            assert!(
                s[key].as_f64().is_some_and(f64::is_finite),
                "statistics.{name}.{key} is {}",
                s[key]
            );
        }
    }
}

#[test]
fn an_extreme_weight_never_hangs_and_any_finite_range_plots() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.parquet");
    write_scored(&data, &ordinary(200));
    let limit = Duration::from_secs(60);

    // Scores that span most of f64: ranked and reported; a plot whose axis cannot hold the
    // span says so in the report instead.
    for weight in ["1e307", "-1e307", "1e300"] {
        let out = dir.path().join(format!("out-{weight}"));
        let got = run_within(
            limit,
            &[
                "rank",
                "-i",
                path_str(&data),
                "-o",
                path_str(&out),
                "--implicit-weight",
                weight,
            ],
        );
        assert_eq!(exit_code(&got), 0, "w = {weight}: {}", stderr(&got));
        assert!(out.join("report.html").is_file());
        let ranking = read_parquet(&out.join("ranking.parquet"));
        assert!(f64s(&ranking, "score").iter().all(|s| s.is_finite()));
    }
    // Scores beyond f64 (w · z overflows): refused with the reason, not ranked arbitrarily.
    let out = dir.path().join("out-overflow");
    let got = run_within(
        limit,
        &[
            "rank",
            "-i",
            path_str(&data),
            "-o",
            path_str(&out),
            "--implicit-weight",
            "1e308",
        ],
    );
    assert_eq!(exit_code(&got), 3, "{}", stderr(&got));
    assert!(
        stderr(&got).contains("cannot be ranked") && stderr(&got).contains("--implicit-weight"),
        "{}",
        stderr(&got)
    );
    // `select` with the same weight ends the same way.
    let base = dir.path().join("out-1e300");
    let got = run_within(
        limit,
        &[
            "select",
            "--from",
            path_str(&base),
            "-o",
            path_str(&dir.path().join("sel")),
            "--implicit-weight",
            "1e308",
        ],
    );
    assert_eq!(exit_code(&got), 3, "{}", stderr(&got));

    // Margins whose spread is lost in their magnitude, and margins near the bounds.
    let mut flat = ordinary(50);
    // rm_margin = 1e99 − a few: the same f64 on every row (std 0); log-prob sums ±1e100.
    flat[0].1 = vec![1e99; 50];
    flat[2].1 = (0..50)
        .map(|i| if i % 2 == 0 { -1e100 } else { 1e100 })
        .collect();
    let flat_data = dir.path().join("flat.parquet");
    write_scored(&flat_data, &flat);
    let out = dir.path().join("out-flat");
    let got = run_within(
        limit,
        &["rank", "-i", path_str(&flat_data), "-o", path_str(&out)],
    );
    assert_eq!(exit_code(&got), 0, "{}", stderr(&got));
    every_statistic_is_finite(&out);
}

#[test]
fn a_signal_ends_a_job_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.parquet");
    write_scored(&data, &ordinary(100));
    // A coordinator with no workers waits forever: only a signal ends it.
    let mut child: Child = apscore()
        .args([
            "coordinator",
            "-i",
            path_str(&data),
            "-o",
            path_str(&dir.path().join("out")),
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Once the job has planned (its manifest is written), it is waiting for workers.
    wait_for_path(
        &dir.path().join("out/_work/manifest.json"),
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(300));
    let term = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SIGTERM did not end the coordinator"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(child.wait().unwrap().code(), Some(5));
}

#[test]
fn flags_must_be_finite() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.parquet");
    write_scored(&data, &ordinary(20));
    let out = dir.path().join("out");
    for weight in ["NaN", "inf", "-inf", "1e400"] {
        let flag = format!("--implicit-weight={weight}");
        let got = run_within(
            Duration::from_secs(30),
            &["rank", "-i", path_str(&data), "-o", path_str(&out), &flag],
        );
        assert_eq!(exit_code(&got), 2, "w = {weight}: {}", stderr(&got));
        assert!(
            stderr(&got).contains("not a finite number"),
            "{}",
            stderr(&got)
        );
    }
    for timeout in ["1e400s", "nan", "inf"] {
        let got = run_within(
            Duration::from_secs(30),
            &[
                "rank",
                "-i",
                path_str(&data),
                "-o",
                path_str(&out),
                "--lease-timeout",
                timeout,
            ],
        );
        assert_eq!(exit_code(&got), 2, "{timeout}: {}", stderr(&got));
        assert!(!stderr(&got).contains("panicked"), "{}", stderr(&got));
    }
    let got = run_within(
        Duration::from_secs(30),
        &[
            "rank",
            "-i",
            path_str(&data),
            "-o",
            path_str(&out),
            "--shard-rows",
            "0",
        ],
    );
    assert_eq!(exit_code(&got), 2, "{}", stderr(&got));
    assert!(!out.exists(), "a refused flag must not touch the output");
}

#[test]
fn values_too_large_for_the_statistics_are_rejected_rows_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.parquet");
    let mut columns = ordinary(60);
    columns[2].1[3] = 1e308; // chosen_logps
    columns[0].1[5] = -1e308; // score_chosen
    columns[5].1[7] = 1e101; // rejected_logps_norm
    columns[1].1[9] = 1e100; // score_rejected: at the bound, kept
    columns[2].1[11] = -1.7e308; // chosen_logps
    columns[3].1[11] = 1.7e308; // rejected_logps: their margin would overflow
    write_scored(&data, &columns);
    let out = dir.path().join("out");
    run_ok(&["rank", "-i", path_str(&data), "-o", path_str(&out)]);
    let rejected = read_parquet(&out.join("rejected_rows.parquet"));
    assert_eq!(i64s(&rejected, "row_id"), [3, 5, 7, 11]);
    for reason in strings(&rejected, "reason") {
        assert!(reason.contains("beyond ±1e100"), "{reason}");
    }
    let ranking = read_parquet(&out.join("ranking.parquet"));
    assert_eq!(ranking.num_rows(), 56);
    assert!(
        f64s(&ranking, "alignment_potential")
            .iter()
            .all(|v| v.is_finite())
    );
    every_statistic_is_finite(&out);
    let s = summary(&out);
    assert_eq!(s["counts"]["input_rows"], 60);
    assert_eq!(s["counts"]["scored_rows"], 56);
}

#[test]
fn one_job_per_output_and_a_dead_holder_is_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.parquet");
    write_scored(&data, &ordinary(100));
    let out = dir.path().join("out");
    // The first job: a coordinator that holds the output while it waits for workers.
    let mut first = apscore()
        .args([
            "coordinator",
            "-i",
            path_str(&data),
            "-o",
            path_str(&out),
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock_dir = out.join("_lock");
    wait_for_path(&lock_dir, Duration::from_secs(30));
    let second = run_within(
        Duration::from_secs(30),
        &["rank", "-i", path_str(&data), "-o", path_str(&out)],
    );
    assert_eq!(exit_code(&second), 3, "{}", stderr(&second));
    let message = stderr(&second);
    assert!(
        message.contains("in use by another apscore job")
            && message.contains(&format!("pid {}", first.id())),
        "{message}"
    );
    // A different output is free.
    run_ok(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&dir.path().join("other")),
    ]);
    // The holder dies without a word: on its own host its lock is taken over at once.
    first.kill().unwrap();
    first.wait().unwrap();
    run_ok(&["rank", "-i", path_str(&data), "-o", path_str(&out)]);
    assert!(out.join("summary.json").is_file());
    assert!(
        !lock_dir.exists(),
        "the lock goes with the job that held it"
    );
}

#[test]
fn select_refuses_scores_that_are_not_the_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    sample(
        &data,
        &[
            "--rows",
            "300",
            "--files",
            "3",
            "--row-group-rows",
            "50",
            "--with-logps",
            "--bad-rows",
            "4",
        ],
    );
    let job = dir.path().join("job");
    run_ok(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&job),
        "--shard-rows",
        "100",
    ]);
    let select = |from: &Path, to: &str| {
        run_within(
            Duration::from_secs(60),
            &[
                "select",
                "--from",
                path_str(from),
                "-o",
                path_str(&dir.path().join(to)),
            ],
        )
    };
    assert_eq!(exit_code(&select(&job, "intact")), 0);

    let copy = |name: &str| -> PathBuf {
        let to = dir.path().join(name);
        copy_dir(&job, &to);
        to
    };
    // A part deleted.
    let missing = copy("missing");
    std::fs::remove_file(missing.join("scores/part-00001.parquet")).unwrap();
    let got = select(&missing, "from-missing");
    assert_eq!(exit_code(&got), 3, "{}", stderr(&got));
    assert!(stderr(&got).contains("parts"), "{}", stderr(&got));
    // A part duplicated under another number.
    let doubled = copy("doubled");
    std::fs::copy(
        doubled.join("scores/part-00000.parquet"),
        doubled.join("scores/part-00009.parquet"),
    )
    .unwrap();
    let got = select(&doubled, "from-doubled");
    assert_eq!(exit_code(&got), 3, "{}", stderr(&got));
    // A part replaced by another: the right count, the wrong rows.
    let swapped = copy("swapped");
    std::fs::copy(
        swapped.join("scores/part-00000.parquet"),
        swapped.join("scores/part-00001.parquet"),
    )
    .unwrap();
    let got = select(&swapped, "from-swapped");
    assert_eq!(exit_code(&got), 3, "{}", stderr(&got));
    assert!(
        stderr(&got).contains("row_id") && stderr(&got).contains("part-00001.parquet"),
        "{}",
        stderr(&got)
    );
    // Every scores part gone.
    let emptied = copy("emptied");
    std::fs::remove_dir_all(emptied.join("scores")).unwrap();
    assert_eq!(exit_code(&select(&emptied, "from-emptied")), 3);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn ambiguous_empty_or_overlapping_inputs() {
    let dir = tempfile::tempdir().unwrap();
    // Two columns of the same name: refused, naming the file and the column.
    let dup = dir.path().join("dup.parquet");
    {
        let columns = ordinary(5);
        let mut fields: Vec<Field> = columns
            .iter()
            .map(|(n, _)| Field::new(*n, DataType::Float64, true))
            .collect();
        fields.push(Field::new("score_chosen", DataType::Float64, true));
        let mut arrays: Vec<ArrayRef> = columns
            .iter()
            .map(|(_, v)| Arc::new(Float64Array::from(v.clone())) as ArrayRef)
            .collect();
        arrays.push(Arc::new(Float64Array::from(vec![0.0; 5])));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap();
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(&dup).unwrap(), batch.schema(), None)
                .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let err = run_err(&[
        "rank",
        "-i",
        path_str(&dup),
        "-o",
        path_str(&dir.path().join("o1")),
    ]);
    assert!(
        err.contains("dup.parquet") && err.contains("two columns are named `score_chosen`"),
        "{err}"
    );

    // No rows at all: a correct, empty result whose summary lists only what exists.
    {
        let (name, rows) = ("empty", 0usize);
        let file = dir.path().join(format!("{name}.parquet"));
        write_scored(&file, &ordinary(rows));
        let out = dir.path().join(format!("out-{name}"));
        run_ok(&["rank", "-i", path_str(&file), "-o", path_str(&out)]);
        let s = summary(&out);
        assert_eq!(s["counts"]["input_rows"], 0);
        for (what, path) in s["outputs"].as_object().unwrap() {
            let path = path.as_str().unwrap().split(' ').next().unwrap();
            assert!(
                out.join(path).exists(),
                "summary lists {what} at {path}, which does not exist"
            );
        }
        // And it reads back as an empty ranking.
        assert_eq!(read_rows(&out.join("ranking.parquet")), 0);
    }

    // The output inside the input folder, or the input folder itself: refused before any work.
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    write_scored(&data.join("a.parquet"), &ordinary(30));
    for output in [data.join("out"), data.clone()] {
        let got = run_within(
            Duration::from_secs(30),
            &["rank", "-i", path_str(&data), "-o", path_str(&output)],
        );
        assert_eq!(exit_code(&got), 3, "{}", stderr(&got));
        assert!(stderr(&got).contains("--output"), "{}", stderr(&got));
    }
    assert!(!data.join("out").exists());
    // An output that is a file, or beneath one.
    let file = data.join("a.parquet");
    for output in [file.clone(), file.join("out")] {
        let got = run_within(
            Duration::from_secs(30),
            &["rank", "-i", path_str(&data), "-o", path_str(&output)],
        );
        assert_eq!(exit_code(&got), 3, "{}", stderr(&got));
        assert!(
            stderr(&got).contains("is a file, not a folder"),
            "{}",
            stderr(&got)
        );
    }
    // A glob that cannot match what the job writes is fine.
    run_ok(&[
        "rank",
        "-i",
        &format!("{}/a*.parquet", data.display()),
        "-o",
        path_str(&data.join("ranked")),
    ]);
    // An input inside the folder a job writes (another job's scores): refused.
    let got = run_within(
        Duration::from_secs(30),
        &[
            "rank",
            "-i",
            path_str(&data.join("ranked/scores")),
            "-o",
            path_str(&data.join("ranked")),
            "--overwrite",
        ],
    );
    assert_eq!(exit_code(&got), 3, "{}", stderr(&got));
    assert!(data.join("ranked/scores").is_dir());
}

fn read_rows(file: &Path) -> i64 {
    let f = std::fs::File::open(file).unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(f).unwrap();
    parquet::file::reader::FileReader::metadata(&reader)
        .file_metadata()
        .num_rows()
}

#[test]
fn leftovers_of_interrupted_writes_go_and_globs_list_only_what_they_can_match() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("other")).unwrap();
    write_scored(&data.join("train-1.parquet"), &ordinary(40));
    write_scored(&data.join("train-2.parquet"), &ordinary(30));
    write_scored(&data.join("other/train-3.parquet"), &ordinary(20));
    // A symlink loop in an unrelated subfolder.
    std::os::unix::fs::symlink(&data, data.join("other/loop")).unwrap();
    let out = dir.path().join("out");
    let glob = format!("{}/train-*.parquet", data.display());
    run_ok(&["rank", "-i", &glob, "-o", path_str(&out)]);
    assert_eq!(summary(&out)["counts"]["input_rows"], 70);

    // What interrupted writes leave on a local disk (`NAME#N`) is gone after the next run.
    std::fs::write(out.join("ranking.parquet#1"), b"partial").unwrap();
    std::fs::write(out.join("scores/part-00000.parquet#3"), b"partial").unwrap();
    run_ok(&["rank", "-i", &glob, "-o", path_str(&out), "--overwrite"]);
    let mut leftovers = Vec::new();
    let mut folders = vec![out.clone()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else if path.to_string_lossy().contains('#') {
                leftovers.push(path);
            }
        }
    }
    assert!(leftovers.is_empty(), "left over: {leftovers:?}");
}

#[test]
fn rerunning_a_finished_job_is_immediate_and_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.parquet");
    write_scored(&data, &ordinary(100));
    let out = dir.path().join("out");
    run_ok(&["rank", "-i", path_str(&data), "-o", path_str(&out)]);
    let started = Instant::now();
    let again = apscore()
        .args(["rank", "-i", path_str(&data), "-o", path_str(&out)])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already complete"));
    let log = stderr(&again);
    assert!(
        !log.contains("did not answer") && !log.contains("WARN"),
        "{log}"
    );
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
