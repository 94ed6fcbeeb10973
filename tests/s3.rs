//! The same job against a real S3-compatible server: moto, started on 127.0.0.1 by the test.
//!
//! Inputs are written to a bucket by `apscore sample`, ranked from the bucket into the bucket,
//! and the outputs are read back from the bucket and compared with a local run on the same
//! data. `.ci/run` installs moto (`pip install "moto[server]"`); without `moto_server` on the
//! PATH this test fails and says so.

mod common;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use bytes::Bytes;
use common::*;
use futures::TryStreamExt;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Every row of the Parquet object `prefix` (a `.parquet` name) or the objects under it.
async fn read_objects(store: &Arc<dyn ObjectStore>, prefix: &str) -> RecordBatch {
    let mut paths: Vec<StorePath> = if prefix.ends_with(".parquet") {
        vec![StorePath::from(prefix)]
    } else {
        let metas: Vec<_> = store
            .list(Some(&StorePath::from(prefix)))
            .try_collect()
            .await
            .unwrap();
        metas.into_iter().map(|m| m.location).collect()
    };
    paths.sort();
    let mut batches = Vec::new();
    for path in paths {
        let bytes: Bytes = store.get(&path).await.unwrap().bytes().await.unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        batches.extend(reader.map(|b| b.unwrap()));
    }
    assert!(!batches.is_empty(), "nothing under {prefix}");
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install \"moto[server]\"): bash .ci/run installs it"]
async fn rank_reads_and_writes_a_bucket() {
    let moto = Moto::start();
    moto.create_bucket("prefs");
    let dir = tempfile::tempdir().unwrap();

    // Three files in the bucket; the first is large enough (> 10 MiB) to go up in parts.
    let sample = |output: &str, rows: &str, seed: &str| {
        vec![
            "sample",
            "-o",
            output,
            "--rows",
            rows,
            "--with-logps",
            "--bad-rows",
            "7",
            "--seed",
            seed,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    let inputs = [
        ("train-00000.parquet", "24000", "1"),
        ("train-00001.parquet", "2000", "2"),
        ("train-00002.parquet", "2000", "3"),
    ];
    for (name, rows, seed) in inputs {
        let remote = format!("s3://prefs/data/{name}");
        let local = dir.path().join(name);
        let args = sample(&remote, rows, seed);
        moto.apscore(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let args = sample(local.to_str().unwrap(), rows, seed);
        run_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }
    let store = moto.store("prefs");
    let big = store
        .head(&StorePath::from("data/train-00000.parquet"))
        .await
        .unwrap();
    assert!(
        big.size > 10 * 1024 * 1024,
        "first input is {} bytes: too small to test multipart",
        big.size
    );

    // Rank from the bucket (a glob over the prefix) into the bucket, and locally.
    let stdout = moto.apscore(&[
        "rank",
        "-i",
        "s3://prefs/data/train-*.parquet",
        "-o",
        "s3://prefs/out/job-1",
        "--shard-rows",
        "5000",
    ]);
    assert!(
        stdout.contains("of 28000 input rows (21 rejected)"),
        "{stdout}"
    );
    let local_out = dir.path().join("out");
    run_ok(&[
        "rank",
        "-i",
        &format!("{}/train-*.parquet", dir.path().display()),
        "-o",
        path_str(&local_out),
        "--shard-rows",
        "5000",
    ]);

    // The bucket holds every output, and they equal the local run's.
    let summary: serde_json::Value = serde_json::from_slice(
        &store
            .get(&StorePath::from("out/job-1/summary.json"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(summary["counts"]["input_rows"], 28000);
    assert_eq!(summary["counts"]["scored_rows"], 28000 - 21);
    assert_eq!(
        summary["inputs"][0]["path"],
        "s3://prefs/data/train-00000.parquet"
    );

    let remote_ranking = read_objects(&store, "out/job-1/ranking.parquet").await;
    let local_ranking = read_parquet(&local_out.join("ranking.parquet"));
    assert_eq!(
        i64s(&remote_ranking, "row_id"),
        i64s(&local_ranking, "row_id")
    );
    assert_eq!(
        f64s(&remote_ranking, "alignment_potential"),
        f64s(&local_ranking, "alignment_potential")
    );
    assert_eq!(
        strings(&remote_ranking, "source_file")[0]
            .split('/')
            .next_back(),
        strings(&local_ranking, "source_file")[0]
            .split('/')
            .next_back()
    );
    assert!(
        strings(&remote_ranking, "source_file")
            .iter()
            .all(|f| f.starts_with("s3://prefs/data/train-"))
    );

    let remote_selected = read_objects(&store, "out/job-1/selected/").await;
    let local_selected = read_parquet(&local_out.join("selected"));
    assert_eq!(remote_selected.num_rows(), local_selected.num_rows());
    assert_eq!(
        i64s(&remote_selected, "row_id"),
        i64s(&local_selected, "row_id")
    );
    assert_eq!(
        strings(&remote_selected, "prompt"),
        strings(&local_selected, "prompt")
    );

    let remote_scores = read_objects(&store, "out/job-1/scores/").await;
    assert_eq!(remote_scores.num_rows(), 28000 - 21);
    let remote_rejected = read_objects(&store, "out/job-1/rejected_rows.parquet").await;
    assert_eq!(remote_rejected.num_rows(), 21);
    let leftovers: Vec<_> = store
        .list(Some(&StorePath::from("out/job-1/_work")))
        .try_collect()
        .await
        .unwrap();
    assert!(
        leftovers.is_empty(),
        "intermediate files remain: {leftovers:?}"
    );

    // A new selection from the bucket's scores, into the bucket, report included.
    let stdout = moto.apscore(&[
        "select",
        "--from",
        "s3://prefs/out/job-1",
        "-o",
        "s3://prefs/out/job-2",
        "--ratio",
        "0.1",
    ]);
    assert!(stdout.contains("selected 2797 by ap"), "{stdout}");
    let reselected = read_objects(&store, "out/job-2/selected/").await;
    assert_eq!(reselected.num_rows(), 2797);
    assert_eq!(
        i64s(&reselected, "row_id"),
        i64s(&local_ranking, "row_id")[..2797].to_vec()
    );
    let report = store
        .get(&StorePath::from("out/job-2/report.html"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&report).contains("2797 of 27979 pairs selected by ap"));

    // The same job run again on the same output is already complete: exit 0, nothing changed.
    let before = read_objects_bytes(&store, "out/job-1/summary.json").await;
    let again = moto.apscore(&[
        "rank",
        "-i",
        "s3://prefs/data/train-*.parquet",
        "-o",
        "s3://prefs/out/job-1",
        "--shard-rows",
        "5000",
    ]);
    assert!(again.contains("already complete"), "{again}");
    assert_eq!(
        read_objects_bytes(&store, "out/job-1/summary.json").await,
        before
    );
    // Another job (other shards) on it is refused.
    let out = moto
        .command(&[
            "rank",
            "-i",
            "s3://prefs/data/train-*.parquet",
            "-o",
            "s3://prefs/out/job-1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a finished job"));
}

async fn read_objects_bytes(store: &Arc<dyn ObjectStore>, path: &str) -> Bytes {
    store
        .get(&StorePath::from(path))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install \"moto[server]\"): bash .ci/run installs it"]
async fn a_missing_bucket_is_a_clear_error() {
    let moto = Moto::start();
    let out = moto
        .command(&[
            "rank",
            "-i",
            "s3://no-such-bucket/data/",
            "-o",
            "s3://no-such-bucket/out",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("s3://no-such-bucket"), "{err}");
}

/// A checkpoint in a bucket — a Hugging Face directory under a prefix, and a GGUF object — is
/// downloaded once into the model cache and scores exactly like the local copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install \"moto[server]\"): bash .ci/run installs it"]
async fn run_loads_models_from_a_bucket_once() {
    let moto = Moto::start();
    moto.create_bucket("models");
    let store = moto.store("models");
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let local_model = fixtures.join("models/qwen2-tied");
    for entry in std::fs::read_dir(&local_model).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let bytes = std::fs::read(entry.path()).unwrap();
        store
            .put(&StorePath::from(format!("qwen2-tied/{name}")), bytes.into())
            .await
            .unwrap();
    }
    let quants = std::fs::read(fixtures.join("quants.gguf")).unwrap();
    store
        .put(&StorePath::from("gguf/quants.gguf"), quants.into())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let input = fixtures.join("pairs.parquet");
    let run = |model: &str, out: &str| {
        let out = dir.path().join(out);
        let stdout = moto.apscore(&[
            "run",
            "-i",
            input.to_str().unwrap(),
            "-m",
            model,
            "-o",
            out.to_str().unwrap(),
            "--model-cache",
            cache.to_str().unwrap(),
        ]);
        assert!(stdout.contains("ranked 24 of 24"), "{stdout}");
        read_parquet(&out.join("scores"))
    };
    let local = run(local_model.to_str().unwrap(), "local");
    let remote = run("s3://models/qwen2-tied/", "remote");
    assert_eq!(f64s(&local, "chosen_logps"), f64s(&remote, "chosen_logps"));
    let cached: Vec<_> = std::fs::read_dir(cache.join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    // A second run reuses the cached copy: removing the bucket's files does not matter.
    store
        .delete(&StorePath::from("qwen2-tied/model.safetensors"))
        .await
        .unwrap();
    let again = run("s3://models/qwen2-tied/", "again");
    assert_eq!(f64s(&local, "chosen_logps"), f64s(&again, "chosen_logps"));

    // A GGUF object: downloaded into the cache and read (this one has no model in it, so
    // apscore must say what is missing rather than fail on the download).
    let out = moto
        .command(&[
            "inspect-model",
            "s3://models/gguf/quants.gguf",
            "--model-cache",
            cache.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("llama.attention.head_count"), "{err}");
    assert!(cache.join("models/s3___models_gguf_quants.gguf").is_file());
}

/// The output lock on an object store: a conditional create that moto implements as S3 does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server (pip install \"moto[server]\"): bash .ci/run installs it"]
async fn a_second_job_on_a_bucket_output_is_refused_while_the_first_holds_it() {
    let moto = Moto::start();
    moto.create_bucket("lock");
    moto.apscore(&[
        "sample",
        "-o",
        "s3://lock/data/",
        "--rows",
        "50",
        "--with-logps",
    ]);
    // The first job holds the output while it waits for workers that never come.
    let mut first = moto
        .command(&[
            "coordinator",
            "-i",
            "s3://lock/data/",
            "-o",
            "s3://lock/out",
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let store = moto.store("lock");
    let started = std::time::Instant::now();
    loop {
        let locks: Vec<_> = store
            .list(Some(&StorePath::from("out/_lock")))
            .try_collect()
            .await
            .unwrap();
        if !locks.is_empty() {
            break;
        }
        assert!(started.elapsed().as_secs() < 30, "no lock object appeared");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let second = moto
        .command(&["rank", "-i", "s3://lock/data/", "-o", "s3://lock/out"])
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(3));
    let message = String::from_utf8_lossy(&second.stderr);
    assert!(
        message.contains("s3://lock/out is in use by another apscore job")
            && message.contains(&format!("pid {}", first.id())),
        "{message}"
    );
    first.kill().unwrap();
    first.wait().unwrap();
    // Gone from this host: taken over at once; the lock goes with the job.
    moto.apscore(&["rank", "-i", "s3://lock/data/", "-o", "s3://lock/out"]);
    let left: Vec<_> = store
        .list(Some(&StorePath::from("out/_lock")))
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}
