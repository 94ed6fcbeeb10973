//! End to end: `apscore sample` writes data, `apscore rank` ranks it, the test reads every
//! output back with the Arrow Parquet reader and checks it against the input and against an
//! independent implementation of the reference formula.

mod common;

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, Float32Array, Float64Array, RecordBatch, StringArray, UInt32Array,
};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, Float32Type, Float64Type, Schema};
use common::*;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The reference formula (metric_selection.py), written independently of apscore: numpy-style
/// mean and population std, z-scores, M_AP = z(rm) − w · z(|lmn|), sort descending with ties
/// by input order, keep floor(ratio · N).
fn reference_order(rm: &[f64], lmn_abs: &[f64], metric: &str, w: f64) -> (Vec<usize>, Vec<f64>) {
    fn z(v: &[f64]) -> Vec<f64> {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        v.iter()
            .map(|x| if std == 0.0 { 0.0 } else { (x - mean) / std })
            .collect()
    }
    let (zr, zl) = (z(rm), z(lmn_abs));
    let score: Vec<f64> = match metric {
        "ap" => zr.iter().zip(&zl).map(|(a, b)| a - w * b).collect(),
        "explicit" => zr,
        "implicit" => zl.iter().map(|b| -b).collect(),
        other => panic!("no reference for {other}"),
    };
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[b].partial_cmp(&score[a]).unwrap().then(a.cmp(&b)));
    (order, score)
}

#[test]
fn selection_matches_the_reference_formula() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // 12,000 rows in 4 files of 1,000-row groups, ranked in 2,000-row shards: the job-wide
    // statistics are merged from 6 shards' partial statistics.
    sample(
        &data,
        &[
            "--rows",
            "12000",
            "--files",
            "4",
            "--row-group-rows",
            "1000",
            "--with-logps",
            "--no-text",
            "--seed",
            "7",
        ],
    );
    let input = read_parquet(&data);
    let rm: Vec<f64> = f64s(&input, "score_chosen")
        .iter()
        .zip(f64s(&input, "score_rejected"))
        .map(|(c, r)| c - r)
        .collect();
    let lmn_abs: Vec<f64> = f64s(&input, "chosen_logps_norm")
        .iter()
        .zip(f64s(&input, "rejected_logps_norm"))
        .map(|(c, r)| (c - r).abs())
        .collect();

    for (metric, weight, selection) in [
        ("ap", "1", ["--ratio", "0.4"]),
        ("ap", "0.5", ["--ratio", "0.25"]),
        ("explicit", "1", ["--ratio", "0.4"]), // many exact ties: UltraFeedback scores are quantised
        ("implicit", "1", ["--top-k", "1000"]),
    ] {
        let out = dir
            .path()
            .join(format!("out-{metric}-{weight}-{}", selection[1]));
        run_ok(&[
            "rank",
            "-i",
            path_str(&data),
            "-o",
            path_str(&out),
            "--shard-rows",
            "2000",
            "--metric",
            metric,
            "--implicit-weight",
            weight,
            selection[0],
            selection[1],
        ]);
        let (order, score) = reference_order(&rm, &lmn_abs, metric, weight.parse().unwrap());
        let k = match selection[0] {
            "--ratio" => (selection[1].parse::<f64>().unwrap() * rm.len() as f64).floor() as usize,
            _ => selection[1].parse().unwrap(),
        };
        let ranking = read_parquet(&out.join("ranking.parquet"));
        let ranked: Vec<usize> = i64s(&ranking, "row_id")
            .iter()
            .map(|&v| v as usize)
            .collect();
        assert_eq!(ranked.len(), rm.len());
        assert_eq!(
            &ranked[..k],
            &order[..k],
            "{metric} w={weight}: selected rows differ from the reference"
        );
        assert_eq!(
            ranked, order,
            "{metric} w={weight}: ranking differs from the reference"
        );
        let selected = bools(&ranking, "selected");
        assert_eq!(selected.iter().filter(|&&s| s).count(), k);
        assert!(selected[..k].iter().all(|&s| s) && selected[k..].iter().all(|&s| !s));
        for (i, s) in f64s(&ranking, "score").iter().enumerate() {
            let want = score[ranked[i]];
            assert!(
                (s - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{metric}: score {s} vs {want}"
            );
        }
        let ranks = i64s(&ranking, "rank");
        assert!(ranks.iter().enumerate().all(|(i, &r)| r == i as i64 + 1));
        // The selected rows, in rank order, are the reference's top k.
        let sel = read_parquet(&out.join("selected"));
        let sel_ids: Vec<usize> = i64s(&sel, "row_id").iter().map(|&v| v as usize).collect();
        assert_eq!(sel_ids, &order[..k]);
    }
}

#[test]
fn rank_writes_every_output_and_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    sample(
        &data,
        &[
            "--rows",
            "3000",
            "--files",
            "3",
            "--row-group-rows",
            "300",
            "--with-logps",
            "--bad-rows",
            "25",
            "--seed",
            "11",
        ],
    );
    let stdout = run_ok(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&out),
        "--shard-rows",
        "600",
    ]);
    assert!(
        stdout.contains("ranked 2975 of 3000 input rows (25 rejected)"),
        "{stdout}"
    );

    // Every input row is scored or rejected, never both, never lost.
    let s = summary(&out);
    assert_eq!(s["counts"]["input_rows"], 3000);
    assert_eq!(s["counts"]["scored_rows"], 2975);
    assert_eq!(s["counts"]["rejected_rows"], 25);
    assert_eq!(s["counts"]["selected_rows"], 1190); // floor(0.4 · 2975)
    assert_eq!(s["counts"]["shards"], 6);

    let input = read_parquet(&data);
    let scores = read_parquet(&out.join("scores"));
    let rejected = read_parquet(&out.join("rejected_rows.parquet"));
    let mut ids: Vec<i64> = i64s(&scores, "row_id");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "scores/ is in input order"
    );
    ids.extend(i64s(&rejected, "row_id"));
    ids.sort();
    assert_eq!(ids, (0..3000).collect::<Vec<i64>>());

    // Rejected rows say which file and row, and why.
    let reasons = strings(&rejected, "reason");
    let files = strings(&rejected, "source_file");
    for (reason, file) in reasons.iter().zip(&files) {
        assert!(
            file.ends_with(".parquet") && file.starts_with('/'),
            "{file}"
        );
        assert!(
            reason.contains("`score_chosen` is null")
                || reason.contains("`chosen_logps` is NaN")
                || reason.contains("`rejected_logps` is -inf")
                || reason.contains("`chosen` is an empty message list")
                || reason.contains("the last message of `chosen` is from `user`")
                || (reason.starts_with("message ")
                    && reason.ends_with(" of `rejected` has no content")),
            "unexpected reason: {reason}"
        );
    }
    for reason in [
        "is null",
        "NaN",
        "-inf",
        "empty message list",
        "from `user`",
        "has no content",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(reason)),
            "no row rejected for {reason}"
        );
    }

    // scores/ holds the row keys and the computed columns only: joinable to the input. The
    // log-probs were the input's, so they stay there.
    let names: Vec<String> = scores
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "chosen_tokens",
            "rejected_tokens",
            "logp_margin",
            "logp_margin_norm",
            "logp_margin_abs",
            "logp_margin_norm_abs",
            "rm_margin",
            "truncated",
            "row_id",
            "source_file",
            "source_row"
        ]
    );
    // selected/ has whole rows: the input's columns untouched, as the input rows of the same
    // row_id hold them.
    let selected = read_parquet(&out.join("selected"));
    let assert_input_columns = |batch: &RecordBatch, what: &str| {
        let row_ids =
            UInt32Array::from_iter_values(i64s(batch, "row_id").iter().map(|&v| v as u32));
        let expected = take_record_batch(&input, &row_ids).unwrap();
        for field in input.schema().fields() {
            let got = batch.column_by_name(field.name()).unwrap();
            let want = expected.column_by_name(field.name()).unwrap();
            assert_eq!(
                got.to_data(),
                want.to_data(),
                "{what}: column {} changed",
                field.name()
            );
        }
    };
    assert_input_columns(&selected, "selected/");
    // --scores-with-input keeps a full copy in scores/, and the same selection.
    let full = dir.path().join("full");
    run_ok(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&full),
        "--shard-rows",
        "600",
        "--scores-with-input",
    ]);
    assert_input_columns(&read_parquet(&full.join("scores")), "scores/ with input");
    let full_selected = read_parquet(&full.join("selected"));
    assert_eq!(full_selected.schema(), selected.schema());
    for i in 0..selected.num_columns() {
        assert_eq!(
            full_selected.column(i).to_data(),
            selected.column(i).to_data()
        );
    }
    // Score columns follow from the input's columns, joined back by row_id.
    let row_ids = UInt32Array::from_iter_values(i64s(&scores, "row_id").iter().map(|&v| v as u32));
    let joined = take_record_batch(&input, &row_ids).unwrap();
    let lm = f64s(&scores, "logp_margin");
    let c = f64s(&joined, "chosen_logps");
    let r = f64s(&joined, "rejected_logps");
    assert!(
        lm.iter()
            .zip(c.iter().zip(&r))
            .all(|(m, (c, r))| *m == c - r)
    );
    let rm = f64s(&scores, "rm_margin");
    let sc = f64s(&joined, "score_chosen");
    let sr = f64s(&joined, "score_rejected");
    assert!(
        rm.iter()
            .zip(sc.iter().zip(&sr))
            .all(|(m, (c, r))| *m == c - r)
    );
    let source_rows = i64s(&scores, "source_row");
    let source_files = strings(&scores, "source_file");
    assert_eq!(source_rows[0], 0);
    assert!(source_files[0].ends_with("data/part-00000.parquet"));

    // ranking.parquet: one row per scored pair, and the facts in its metadata.
    let ranking = read_parquet(&out.join("ranking.parquet"));
    assert_eq!(ranking.num_rows(), 2975);
    for name in [
        "row_id",
        "source_file",
        "source_row",
        "rm_margin",
        "logp_margin",
        "logp_margin_norm",
        "logp_margin_abs",
        "logp_margin_norm_abs",
        "z_rm_margin",
        "z_logp_margin_norm_abs",
        "alignment_potential",
        "rank",
        "selected",
    ] {
        assert!(
            ranking.column_by_name(name).is_some(),
            "ranking.parquet lacks {name}"
        );
    }
    let facts =
        key_value(&out.join("ranking.parquet"), "apscore.facts").expect("facts in metadata");
    let facts: serde_json::Value = serde_json::from_str(&facts).unwrap();
    assert_eq!(facts["counts"]["rejected_rows"], 25);
    assert_eq!(facts["ranking"]["metric"], "ap");

    // selected/: the top rows with their original columns and their rank.
    let selected = read_parquet(&out.join("selected"));
    assert_eq!(selected.num_rows(), 1190);
    assert_eq!(
        i64s(&selected, "row_id"),
        i64s(&ranking, "row_id")[..1190].to_vec()
    );
    for field in input.schema().fields() {
        assert!(
            selected.column_by_name(field.name()).is_some(),
            "selected/ lacks {}",
            field.name()
        );
    }
    assert!(
        !out.join("_work").exists(),
        "intermediate files are removed"
    );
}

#[test]
fn selected_rows_are_the_same_whatever_the_sort_memory_and_file_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    sample(
        &data,
        &[
            "--rows",
            "6000",
            "--files",
            "2",
            "--row-group-rows",
            "500",
            "--with-logps",
            "--seed",
            "5",
        ],
    );
    let roomy = dir.path().join("roomy");
    run_ok(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&roomy),
        "--shard-rows",
        "1000",
    ]);
    // 1 MiB holds a few hundred of these rows: the selection is sorted in many runs and merged,
    // into four files of 600 rows, each merged on its own.
    let tight = dir.path().join("tight");
    let args = [
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&tight),
        "--shard-rows",
        "1000",
        "--sort-memory-mib",
        "1",
        "--selected-file-rows",
        "700",
    ];
    let out = apscore()
        .args(args)
        .env("RUST_LOG", "apscore_coordinator=debug")
        .output()
        .unwrap();
    assert_success(&out, &args);
    let log = String::from_utf8_lossy(&out.stderr);
    let runs: usize = log
        .split("runs=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no run count in the log:\n{log}"));
    assert!(runs >= 3, "expected several sorted runs, got {runs}");

    let files: Vec<_> = (0..4)
        .map(|p| tight.join(format!("selected/part-{p:05}.parquet")))
        .collect();
    assert!(files.iter().all(|f| read_parquet(f).num_rows() == 600));
    assert_eq!(
        std::fs::read_dir(tight.join("selected")).unwrap().count(),
        4
    );
    let a = read_parquet(&roomy.join("selected"));
    let b = read_parquet(&tight.join("selected"));
    assert_eq!(a.num_rows(), 2400);
    assert_eq!(a.schema(), b.schema());
    for (x, y) in a.columns().iter().zip(b.columns()) {
        assert_eq!(x.to_data(), y.to_data());
    }
    let ranking = read_parquet(&tight.join("ranking.parquet"));
    assert_eq!(
        i64s(&b, "row_id"),
        i64s(&ranking, "row_id")[..2400].to_vec()
    );
    assert_eq!(i64s(&b, "rank"), (1..=2400).collect::<Vec<i64>>());
    assert!(!tight.join("_work").exists());
}

#[test]
fn armorm_margin_is_max_minus_min() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("armorm.parquet");
    let out = dir.path().join("out");
    sample(
        &data,
        &["--rows", "500", "--schema", "armorm", "--with-logps"],
    );
    run_ok(&["rank", "-i", path_str(&data), "-o", path_str(&out)]);
    let input = read_parquet(&data);
    let scores = read_parquet(&out.join("scores"));
    let lists = input
        .column_by_name("all_rm_scores")
        .unwrap()
        .as_list::<i32>();
    let rm = f64s(&scores, "rm_margin");
    for (i, got) in rm.iter().enumerate() {
        let v = lists.value(i);
        let v = v.as_primitive::<Float64Type>();
        let max = v.values().iter().cloned().fold(f64::MIN, f64::max);
        let min = v.values().iter().cloned().fold(f64::MAX, f64::min);
        assert_eq!(*got, max - min);
    }
    assert_eq!(summary(&out)["layout"]["kind"], "armorm");
}

#[test]
fn plain_strings_with_globs_and_several_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("plain");
    let out = dir.path().join("out");
    sample(
        &data,
        &[
            "--rows",
            "900",
            "--files",
            "3",
            "--schema",
            "plain",
            "--with-logps",
        ],
    );
    let glob = format!("{}/part-0000[01].parquet", data.display());
    let third = format!("{}/part-00002.parquet", data.display());
    run_ok(&["rank", "-i", &glob, "-i", &third, "-o", path_str(&out)]);
    let s = summary(&out);
    assert_eq!(s["counts"]["input_rows"], 900);
    assert_eq!(s["counts"]["input_files"], 3);
    assert_eq!(s["layout"]["kind"], "plain");
    let scores = read_parquet(&out.join("scores"));
    let files = strings(&scores, "source_file");
    assert!(files[0].ends_with("part-00000.parquet") && files[899].ends_with("part-00002.parquet"));
}

fn write_batch(path: &Path, batch: &RecordBatch) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

#[test]
fn bad_input_stops_before_any_work_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let no_logps = dir.path().join("no_logps.parquet");
    sample(&no_logps, &["--rows", "50"]);
    let out = dir.path().join("out");
    let err = run_err(&["rank", "-i", path_str(&no_logps), "-o", path_str(&out)]);
    assert!(
        err.contains("no_logps.parquet")
            && err.contains("missing column `chosen_logps`")
            && err.contains("`score_chosen`"),
        "{err}"
    );
    assert!(!out.join("summary.json").exists());
    assert!(!out.join("scores").exists(), "no work was done");

    // A mistyped score column.
    let mistyped = dir.path().join("mistyped.parquet");
    let mut fields = vec![
        Field::new("score_chosen", DataType::Utf8, true),
        Field::new("score_rejected", DataType::Float64, true),
    ];
    for n in [
        "chosen_logps",
        "rejected_logps",
        "chosen_logps_norm",
        "rejected_logps_norm",
    ] {
        fields.push(Field::new(n, DataType::Float64, true));
    }
    let mut columns: Vec<Arc<dyn Array>> = vec![Arc::new(StringArray::from(vec!["8.5"]))];
    for _ in 0..5 {
        columns.push(Arc::new(arrow::array::Float64Array::from(vec![-1.0])));
    }
    write_batch(
        &mistyped,
        &RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap(),
    );
    let err = run_err(&["rank", "-i", path_str(&mistyped), "-o", path_str(&out)]);
    assert!(
        err.contains("mistyped.parquet")
            && err.contains("`score_chosen` has type Utf8, expected a number"),
        "{err}"
    );

    // A truncated Parquet file.
    let good = dir.path().join("good.parquet");
    sample(&good, &["--rows", "200", "--with-logps"]);
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.parquet");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = run_err(&["rank", "-i", path_str(&truncated), "-o", path_str(&out)]);
    assert!(
        err.contains("cannot read Parquet file") && err.contains("truncated.parquet"),
        "{err}"
    );

    // Files of one dataset with different columns.
    let err = run_err(&[
        "rank",
        "-i",
        path_str(&good),
        "-i",
        path_str(&mistyped),
        "-o",
        path_str(&out),
    ]);
    assert!(err.contains("mistyped.parquet"), "{err}");

    // Nothing at the input path.
    let err = run_err(&[
        "rank",
        "-i",
        &format!("{}/nothing-here", dir.path().display()),
        "-o",
        path_str(&out),
    ]);
    assert!(
        err.contains("no Parquet files found") && err.contains("nothing-here"),
        "{err}"
    );

    // A bad flag value.
    let err = run_err(&[
        "rank",
        "-i",
        path_str(&good),
        "-o",
        path_str(&out),
        "--ratio",
        "1.5",
    ]);
    assert!(err.contains("between 0 and 1"), "{err}");
}

#[test]
fn a_finished_job_is_not_overwritten_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.parquet");
    let out = dir.path().join("out");
    sample(&data, &["--rows", "100", "--with-logps"]);
    run_ok(&["rank", "-i", path_str(&data), "-o", path_str(&out)]);
    // The same job again: already complete, exit 0, nothing touched.
    let summary_before = std::fs::read(out.join("summary.json")).unwrap();
    let again = run_ok(&["rank", "-i", path_str(&data), "-o", path_str(&out)]);
    assert!(again.contains("already complete"), "{again}");
    assert_eq!(
        std::fs::read(out.join("summary.json")).unwrap(),
        summary_before
    );
    // The same input rewritten in place (same bytes, a new version) is another job.
    let file = parquet_files(&data)[0].clone();
    let bytes = std::fs::read(&file).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&file, bytes).unwrap();
    let rewritten = apscore()
        .args(["rank", "-i", path_str(&data), "-o", path_str(&out)])
        .output()
        .unwrap();
    assert_eq!(rewritten.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&rewritten.stderr).contains("already holds a finished job"));
    let err = run_err(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&out),
        "--ratio",
        "0.1",
    ]);
    assert!(
        err.contains("already holds a finished job") && err.contains("--overwrite"),
        "{err}"
    );
    run_ok(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&out),
        "--ratio",
        "0.1",
        "--overwrite",
    ]);
    assert_eq!(summary(&out)["counts"]["selected_rows"], 10);
}

#[test]
fn help_explains_every_flag() {
    for args in [
        vec!["-h"],
        vec!["rank", "-h"],
        vec!["run", "-h"],
        vec!["demo", "-h"],
        vec!["inspect-model", "-h"],
        vec!["select", "-h"],
        vec!["report", "-h"],
        vec!["sample", "-h"],
        vec!["coordinator", "-h"],
        vec!["worker", "-h"],
        vec!["status", "-h"],
    ] {
        let text = run_ok(&args);
        let lines: Vec<&str> = text.lines().collect();
        let mut flags = 0;
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            if !trimmed.starts_with('-') {
                continue;
            }
            flags += 1;
            // The explanation follows the flag on its line, or on the next, indented line.
            let same_line = trimmed
                .split("  ")
                .skip(1)
                .any(|part| !part.trim().is_empty());
            let next_line = lines
                .get(i + 1)
                .is_some_and(|next| next.starts_with("          ") && !next.trim().is_empty());
            assert!(
                same_line || next_line,
                "`apscore {}` does not explain: {trimmed}",
                args.join(" ")
            );
        }
        assert!(flags >= 3, "no flags found in `apscore {}`", args.join(" "));
    }
}

/// `--text-length` scales every text of the sample: rows as long as UltraFeedback's for
/// benchmarks, in the same layout.
#[test]
fn sample_text_length_scales_the_texts_only() {
    let dir = tempfile::tempdir().unwrap();
    let text_bytes = |batch: &RecordBatch| -> usize {
        batch
            .columns()
            .iter()
            .map(|c| c.get_array_memory_size())
            .sum()
    };
    let short = read_parquet(&sample(
        &dir.path().join("short.parquet"),
        &["--rows", "400"],
    ));
    let long = read_parquet(&sample(
        &dir.path().join("long.parquet"),
        &["--rows", "400", "--text-length", "3"],
    ));
    assert_eq!(short.num_rows(), long.num_rows());
    assert_eq!(short.schema(), long.schema());
    let prompts = |b: &RecordBatch| strings(b, "prompt").iter().map(String::len).sum::<usize>();
    let ratio = prompts(&long) as f64 / prompts(&short) as f64;
    assert!((2.5..3.5).contains(&ratio), "prompts {ratio}x as long");
    let ratio = text_bytes(&long) as f64 / text_bytes(&short) as f64;
    assert!((2.0..3.5).contains(&ratio), "rows {ratio}x as large");
    let err = run_err(&["sample", "-o", "x.parquet", "--text-length", "0"]);
    assert!(
        err.contains("--text-length") && err.contains("above 0"),
        "{err}"
    );
}

fn assert_same_parquet(a: &Path, b: &Path) {
    let (x, y) = (read_parquet(a), read_parquet(b));
    assert_eq!(x.schema(), y.schema(), "{} vs {}", a.display(), b.display());
    assert_eq!(x.num_rows(), y.num_rows());
    for (name, (cx, cy)) in x
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .zip(x.columns().iter().zip(y.columns()))
    {
        assert_eq!(
            cx.to_data(),
            cy.to_data(),
            "column {name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

#[test]
fn select_reproduces_rank_without_scoring_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    sample(
        &data,
        &[
            "--rows",
            "4000",
            "--files",
            "2",
            "--row-group-rows",
            "400",
            "--with-logps",
            "--bad-rows",
            "9",
        ],
    );
    let first = dir.path().join("first");
    run_ok(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&first),
        "--shard-rows",
        "800",
    ]);

    for params in [
        vec!["--metric", "explicit", "--ratio", "0.25"],
        vec!["--implicit-weight", "0.5", "--top-k", "777"],
        vec!["--metric", "random", "--seed", "3"],
    ] {
        let direct = dir.path().join(format!("direct-{}", params.join("_")));
        let mut args = vec![
            "rank",
            "-i",
            path_str(&data),
            "-o",
            path_str(&direct),
            "--shard-rows",
            "800",
        ];
        args.extend(&params);
        run_ok(&args);
        let again = dir.path().join(format!("again-{}", params.join("_")));
        let mut args = vec!["select", "--from", path_str(&first), "-o", path_str(&again)];
        args.extend(&params);
        let stdout = run_ok(&args);
        assert!(
            stdout.contains("ranked 3991 of 4000 input rows (9 rejected)"),
            "{stdout}"
        );

        assert_same_parquet(
            &direct.join("ranking.parquet"),
            &again.join("ranking.parquet"),
        );
        assert_same_parquet(&direct.join("selected"), &again.join("selected"));
        assert_same_parquet(
            &direct.join("rejected_rows.parquet"),
            &again.join("rejected_rows.parquet"),
        );
        assert_same_parquet(&direct.join("scores"), &again.join("scores"));
        let (a, b) = (summary(&direct), summary(&again));
        assert_eq!(a["counts"], b["counts"]);
        assert_eq!(a["statistics"], b["statistics"]);
        assert_eq!(a["selection_cutoff"], b["selection_cutoff"]);
        assert_eq!(b["command"], "select");
        assert!(again.join("report.html").exists());
    }

    let err = run_err(&[
        "select",
        "--from",
        path_str(&dir.path().join("nothing")),
        "-o",
        path_str(&dir.path().join("x")),
    ]);
    assert!(err.contains("holds no finished apscore job"), "{err}");
    let err = run_err(&["select", "--from", path_str(&first), "-o", path_str(&first)]);
    assert!(err.contains("another location"), "{err}");
}

#[test]
fn every_job_writes_a_self_contained_report() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    sample(
        &data,
        &[
            "--rows",
            "2500",
            "--files",
            "2",
            "--with-logps",
            "--bad-rows",
            "6",
        ],
    );
    run_ok(&["rank", "-i", path_str(&data), "-o", path_str(&out)]);

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        html.matches("src=\"data:image/png;base64,").count() >= 4,
        "plots are embedded"
    );
    assert!(
        !html.contains("<script") && !html.contains("src=\"http") && !html.contains("href=\"http"),
        "nothing is fetched"
    );
    for section in [
        "The margin landscape",
        "Rows per source file",
        "Rejected rows by reason",
        "Top pairs",
        "Bottom pairs",
    ] {
        assert!(html.contains(section), "report lacks {section}");
    }
    assert!(
        html.contains("997 of 2494 pairs selected by ap"),
        "headline"
    );
    assert!(html.contains("part-00001.parquet"), "per-file table");
    assert!(
        html.contains("is null") || html.contains("empty message list"),
        "reasons table"
    );
    assert!(
        html.contains("all 2494 pairs"),
        "scatter caption says how many points are drawn"
    );
    for plot in [
        "margins.png",
        "alignment_potential.png",
        "rm_margin.png",
        "logp_margin_norm.png",
    ] {
        let bytes = std::fs::read(out.join("report").join(plot)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{plot} is a PNG");
    }

    // `apscore report` draws the same report again.
    std::fs::remove_file(out.join("report.html")).unwrap();
    let stdout = run_ok(&["report", "--from", path_str(&out)]);
    assert!(stdout.contains("report.html"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(out.join("report.html")).unwrap(),
        html
    );
}

#[test]
fn edge_cases_leave_readable_outputs() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing selected: selected/ still holds a table with the usual columns.
    let data = dir.path().join("d.parquet");
    sample(&data, &["--rows", "300", "--with-logps"]);
    let out = dir.path().join("none-selected");
    run_ok(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&out),
        "--ratio",
        "0",
    ]);
    let files = parquet_files(&out.join("selected"));
    assert_eq!(files.len(), 1);
    let f = std::fs::File::open(&files[0]).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    assert_eq!(builder.metadata().file_metadata().num_rows(), 0);
    for column in ["prompt", "chosen", "row_id", "rank"] {
        assert!(
            builder.schema().field_with_name(column).is_ok(),
            "selected/ lacks {column}"
        );
    }

    // Every row rejected, and an empty input: the job completes and says so.
    let bad = dir.path().join("bad.parquet");
    sample(&bad, &["--rows", "10", "--with-logps", "--bad-rows", "10"]);
    let stdout = run_ok(&[
        "rank",
        "-i",
        path_str(&bad),
        "-o",
        path_str(&dir.path().join("all-bad")),
    ]);
    assert!(
        stdout.contains("ranked 0 of 10 input rows (10 rejected)"),
        "{stdout}"
    );
    let empty = dir.path().join("empty.parquet");
    sample(&empty, &["--rows", "0", "--with-logps"]);
    let stdout = run_ok(&[
        "rank",
        "-i",
        path_str(&empty),
        "-o",
        path_str(&dir.path().join("empty-out")),
    ]);
    assert!(stdout.contains("ranked 0 of 0 input rows"), "{stdout}");
    assert!(dir.path().join("empty-out/report.html").exists());
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d.parquet");
    sample(&data, &["--rows", "200", "--with-logps"]);
    let out_dir = dir.path().join("out");
    let args = [
        "--log-format",
        "json",
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&out_dir),
    ];
    let out = apscore()
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_success(&out, &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 2, "expected progress logs, got:\n{stderr}");
    for line in &lines {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            value["level"].is_string() && value["fields"].is_object(),
            "{line}"
        );
    }
    assert!(stderr.contains("job complete"), "{stderr}");
}

#[test]
fn a_job_file_gives_the_flags_and_the_command_line_wins() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("out");
    sample(
        &data,
        &["--rows", "200", "--row-group-rows", "50", "--with-logps"],
    );
    let job = dir.path().join("job.toml");
    std::fs::write(
        &job,
        format!(
            "input = [{:?}]\noutput = {:?}\nshard_rows = 50\nratio = 0.25\nmetric = \"explicit\"\n",
            path_str(&data),
            path_str(&out)
        ),
    )
    .unwrap();
    run_ok(&["rank", "--job", path_str(&job), "--ratio", "0.1"]);
    let s = summary(&out);
    assert_eq!(s["counts"]["shards"], 4, "shard_rows from the file");
    assert_eq!(s["ranking"]["metric"], "explicit", "metric from the file");
    assert_eq!(
        s["counts"]["selected_rows"], 20,
        "--ratio from the command line wins"
    );

    std::fs::write(&job, "input = [\"x\"]\noutput = \"y\"\nshard-rowz = 5\n").unwrap();
    let out = apscore()
        .args(["rank", "--job", path_str(&job)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`shard-rowz` is not a flag of `apscore rank`"),
        "{err}"
    );
}

#[test]
fn the_example_job_file_holds_only_real_flags() {
    // Every key and value of deploy/job.example.toml parses; the job then stops at its
    // (made-up) input, with the bad-input status.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/job.example.toml");
    let out = apscore()
        .args([
            "coordinator",
            "--job",
            path_str(&example),
            "--listen",
            "127.0.0.1:0",
            "--input",
            "/nonexistent/apscore-input",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("no Parquet files found at `/nonexistent/apscore-input`"),
        "{err}"
    );
}

#[test]
fn lean_scores_are_joinable_and_select_reads_the_unchanged_input() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    sample(
        &data,
        &[
            "--rows",
            "400",
            "--files",
            "2",
            "--row-group-rows",
            "50",
            "--with-logps",
            "--bad-rows",
            "5",
        ],
    );
    let lean = dir.path().join("lean");
    let full = dir.path().join("full");
    run_ok(&["rank", "-i", path_str(&data), "-o", path_str(&lean)]);
    run_ok(&[
        "rank",
        "-i",
        path_str(&data),
        "-o",
        path_str(&full),
        "--scores-with-input",
    ]);
    // Lean scores/ is smaller, and its keys join it to the input row for row.
    let size = |p: &Path| -> u64 {
        parquet_files(p)
            .iter()
            .map(|f| std::fs::metadata(f).unwrap().len())
            .sum()
    };
    assert!(size(&lean.join("scores")) * 2 < size(&full.join("scores")));
    let scores = read_parquet(&lean.join("scores"));
    let input = read_parquet(&data);
    let files = strings(&scores, "source_file");
    let rows = i64s(&scores, "source_row");
    let ids = i64s(&scores, "row_id");
    let first = files
        .iter()
        .position(|f| f.ends_with("part-00001.parquet"))
        .unwrap();
    assert!(rows[first] < 200 && ids[first] == 200 + rows[first]);
    let joined = take_record_batch(
        &input,
        &UInt32Array::from_iter_values(ids.iter().map(|&v| v as u32)),
    )
    .unwrap();
    let full_scores = read_parquet(&full.join("scores"));
    assert_eq!(
        strings(&joined, "prompt"),
        strings(&full_scores, "prompt"),
        "the join gives the rows a full copy holds"
    );

    // select from the lean job reads the input: the same selection as from the full one.
    let again = |from: &Path, to: &str| {
        apscore()
            .args([
                "select",
                "--from",
                path_str(from),
                "-o",
                path_str(&dir.path().join(to)),
                "--ratio",
                "0.3",
            ])
            .output()
            .unwrap()
    };
    assert!(again(&lean, "sel-lean").status.success());
    assert!(again(&full, "sel-full").status.success());
    assert_same_parquet(
        &dir.path().join("sel-lean/selected"),
        &dir.path().join("sel-full/selected"),
    );
    // An input rewritten since (or gone) is refused by name; a full copy needs no input.
    std::thread::sleep(std::time::Duration::from_millis(20));
    let rewritten = data.join("part-00001.parquet");
    sample(
        &rewritten,
        &["--rows", "200", "--with-logps", "--seed", "9"],
    );
    let out = again(&lean, "sel-changed");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("part-00001.parquet") && err.contains("changed since the job read it"),
        "{err}"
    );
    std::fs::remove_file(&rewritten).unwrap();
    let out = again(&lean, "sel-gone");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is gone"));
    assert!(again(&full, "sel-full-2").status.success());
}

/// Precomputed log-probs are the input's: `scores/` leaves them there, and `selected/` takes
/// them from the input as the doubles apscore ranked by — also when the input stores them as
/// 32-bit floats, through the in-memory sort and the external one, and again from `select`.
#[test]
fn precomputed_log_probs_stay_in_the_input_and_selected_has_them_as_doubles() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.parquet");
    let n = 400usize;
    let wave = |scale: f32, shift: f32, k: f32| -> Vec<Option<f32>> {
        (0..n)
            .map(|i| Some(shift + scale * (i as f32 * k).sin()))
            .collect()
    };
    let mut chosen = wave(40.0, -150.0, 0.7);
    chosen[5] = Some(f32::NAN); // rejected, not selected
    chosen[9] = None; // rejected, not selected
    let float32s = |v: Vec<Option<f32>>| -> Arc<dyn Array> { Arc::new(Float32Array::from(v)) };
    let scores: Vec<f64> = (0..n).map(|i| (i % 7) as f64).collect();
    let batch = RecordBatch::try_from_iter([
        (
            "score_chosen",
            Arc::new(Float64Array::from(scores.clone())) as Arc<dyn Array>,
        ),
        ("score_rejected", Arc::new(Float64Array::from(vec![2.0; n]))),
        ("chosen_logps", float32s(chosen)),
        ("rejected_logps", float32s(wave(35.0, -160.0, 0.3))),
        ("chosen_logps_norm", float32s(wave(0.4, -1.2, 0.11))),
        ("rejected_logps_norm", float32s(wave(0.3, -1.4, 0.05))),
    ])
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(&data).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let logps = [
        "chosen_logps",
        "rejected_logps",
        "chosen_logps_norm",
        "rejected_logps_norm",
    ];
    let rank = |name: &str, extra: &[&str]| -> std::path::PathBuf {
        let out = dir.path().join(name);
        let mut args = vec!["rank", "-i", path_str(&data), "-o", path_str(&out)];
        args.extend(extra);
        run_ok(&args);
        out
    };
    // The selected rows' log-probs as doubles, and the input's, row by row.
    let check_selected = |out: &Path, what: &str| -> RecordBatch {
        let selected = read_parquet(&out.join("selected"));
        assert_eq!(selected.num_rows(), 159, "{what}"); // floor(0.4 · 398)
        let row_ids: Vec<usize> = i64s(&selected, "row_id")
            .iter()
            .map(|&r| r as usize)
            .collect();
        for name in logps {
            let field = selected.schema().field_with_name(name).unwrap().clone();
            assert_eq!(field.data_type(), &DataType::Float64, "{what}: {name}");
            assert!(!field.is_nullable(), "{what}: {name}");
            let input = batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Float32Type>();
            let want: Vec<f64> = row_ids.iter().map(|&r| f64::from(input.value(r))).collect();
            assert_eq!(f64s(&selected, name), want, "{what}: {name}");
        }
        selected
    };

    let lean = rank("lean", &[]);
    let scores_out = read_parquet(&lean.join("scores"));
    for name in logps {
        assert!(
            scores_out.column_by_name(name).is_none(),
            "scores/ repeats {name}"
        );
    }
    let selected = check_selected(&lean, "in memory");
    // Many small sorted runs, merged.
    let runs = rank(
        "runs",
        &["--sort-memory-mib", "1", "--selected-file-rows", "50"],
    );
    let from_runs = check_selected(&runs, "from sorted runs");
    assert_eq!(from_runs.schema(), selected.schema());
    // A full copy in scores/ carries apscore's doubles, and selects the very same rows.
    let full = rank("full", &["--scores-with-input"]);
    let scores_full = read_parquet(&full.join("scores"));
    assert!(scores_full.column_by_name("chosen_logps").is_some());
    let from_full = check_selected(&full, "from a full scores/");
    assert_eq!(from_full.schema(), selected.schema());
    for i in 0..selected.num_columns() {
        assert_eq!(from_full.column(i).to_data(), selected.column(i).to_data());
    }
    // `select` again from the lean job reads the log-probs from the input once more.
    let again = dir.path().join("again");
    run_ok(&["select", "--from", path_str(&lean), "-o", path_str(&again)]);
    let reselected = check_selected(&again, "select --from");
    assert_eq!(reselected.schema(), selected.schema());
    // Nothing selected: the empty part has the same columns.
    let none = rank("none", &["--top-k", "0"]);
    let empty = std::fs::File::open(none.join("selected/part-00000.parquet")).unwrap();
    let empty = ParquetRecordBatchReaderBuilder::try_new(empty).unwrap();
    assert_eq!(empty.metadata().file_metadata().num_rows(), 0);
    assert_eq!(empty.schema().fields(), selected.schema().fields());
}
