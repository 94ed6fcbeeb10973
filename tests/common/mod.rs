//! Helpers shared by the end-to-end tests: run the `apscore` binary, read Parquet back.
#![allow(dead_code)]

mod moto;
mod smollm2;

#[allow(unused_imports)]
pub use moto::Moto;
#[allow(unused_imports)]
pub use smollm2::{apscore_cache, smollm2_gguf};

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{Float64Type, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The `apscore` binary built for these tests.
pub fn apscore() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apscore"));
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Runs `apscore args…`, asserting success; returns stdout.
pub fn run_ok(args: &[&str]) -> String {
    let out = apscore().args(args).output().expect("apscore runs");
    assert_success(&out, args);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "apscore {} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a generated preference dataset to `output` (a file or folder) with
/// `apscore sample --output OUTPUT args…` (rows, files, layout, log-probs, broken rows: see
/// `apscore sample --help`); returns `output`.
pub fn sample(output: &Path, args: &[&str]) -> PathBuf {
    let mut all = vec!["sample", "--output", path_str(output)];
    all.extend_from_slice(args);
    run_ok(&all);
    output.to_path_buf()
}

/// Runs `apscore args…`, asserting failure; returns stderr.
pub fn run_err(args: &[&str]) -> String {
    let out = apscore().args(args).output().expect("apscore runs");
    assert!(
        !out.status.success(),
        "apscore {} should have failed; stdout:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The Parquet files of `path`: the file itself, or every `*.parquet` beneath it, sorted.
pub fn parquet_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    files_under(path)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect()
}

/// Every file beneath the folder `path`, at any depth, sorted.
pub fn files_under(path: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

/// All rows of a Parquet file or folder of files, as one batch.
pub fn read_parquet(path: &Path) -> RecordBatch {
    let mut batches = Vec::new();
    for file in parquet_files(path) {
        let f = std::fs::File::open(&file).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            batches.push(b.unwrap());
        }
    }
    assert!(!batches.is_empty(), "no rows under {}", path.display());
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

/// Key-value metadata of one Parquet file.
pub fn key_value(path: &Path, key: &str) -> Option<String> {
    let f = std::fs::File::open(path).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    builder
        .metadata()
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone())
}

pub fn f64s(batch: &RecordBatch, name: &str) -> Vec<f64> {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Float64).unwrap();
    col.as_primitive::<Float64Type>()
        .iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect()
}

pub fn i64s(batch: &RecordBatch, name: &str) -> Vec<i64> {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    col.as_primitive::<Int64Type>().values().to_vec()
}

pub fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Utf8).unwrap();
    col.as_string::<i32>()
        .iter()
        .map(|v| v.unwrap_or("<null>").to_string())
        .collect()
}

pub fn bools(batch: &RecordBatch, name: &str) -> Vec<bool> {
    let col = batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"));
    let col = col.as_boolean();
    (0..col.len()).map(|i| col.value(i)).collect()
}

pub fn summary(out: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(out.join("summary.json")).expect("summary.json");
    serde_json::from_str(&text).unwrap()
}

/// A TCP port that is free on 127.0.0.1 now (for a test server started right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until a server listens on 127.0.0.1:`port`; panics after 30 s, naming `what`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not start on port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
