//! The distributed job with real processes: one `apscore coordinator`, `apscore worker`
//! processes, gRPC over 127.0.0.1, data in a real S3-compatible server (moto) or on disk.
//!
//! Every scenario compares its outputs, row for row and value for value, with a
//! single-process run (`apscore run --workers 1`) of the same job: killing a worker or the
//! coordinator mid-job must change nothing but the time taken.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use common::*;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The tiny Llama checkpoint of the fidelity tests: real weights, fast on a CPU.
fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/llama-gqa")
}

/// A child process with its stderr in a file; killed on drop.
struct Proc {
    child: Child,
    log: PathBuf,
    what: String,
}

impl Proc {
    fn spawn(mut cmd: Command, log: PathBuf, what: &str) -> Proc {
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child,
            log,
            what: what.into(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for the process to exit; returns whether it succeeded.
    fn wait(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish in {timeout:?}; its log:\n{}",
                self.what,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn expect_success(&mut self, timeout: Duration) {
        let ok = self.wait(timeout);
        assert!(ok, "{} failed; its log:\n{}", self.what, self.log());
    }

    /// `kill -9`: no chance to clean up.
    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The job flags shared by every run of a scenario.
fn job_args(input: &str, output: &str, model: bool) -> Vec<String> {
    let mut args = vec![
        "--input".to_string(),
        input.into(),
        "--output".into(),
        output.into(),
        "--shard-rows".into(),
        "10".into(),
    ];
    if model {
        args.extend(
            [
                "--model",
                path_str(&model_dir()),
                "--max-length",
                "128",
                "--max-prompt-length",
                "96",
            ]
            .map(String::from),
        );
    }
    args
}

/// Sample data: `rows` pairs in `files` files of row groups of 5 rows.
fn sample_data(dir: &Path, rows: u32, files: u32, with_logps: bool) -> PathBuf {
    let (rows, files) = (rows.to_string(), files.to_string());
    let mut args = vec!["--rows", &rows, "--files", &files, "--row-group-rows", "5"];
    if with_logps {
        args.push("--with-logps");
    }
    sample(&dir.join("data"), &args)
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

fn coordinator(
    env: &dyn Fn() -> Command,
    dir: &Path,
    port: u16,
    job: &[String],
    extra: &[&str],
    log: &str,
) -> Proc {
    let mut cmd = env();
    cmd.arg("coordinator")
        .args(job)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("RUST_LOG", "info");
    let proc = Proc::spawn(cmd, dir.join(log), log);
    wait_for_port(port, "the coordinator");
    proc
}

fn worker(env: &dyn Fn() -> Command, dir: &Path, port: u16, name: &str, extra: &[&str]) -> Proc {
    let mut cmd = env();
    cmd.args([
        "worker",
        "--coordinator",
        &url(port),
        "--slots",
        "1",
        "--name",
        name,
    ])
    .args(extra)
    .env("RUST_LOG", "info");
    Proc::spawn(cmd, dir.join(format!("{name}.log")), name)
}

fn local() -> Command {
    apscore()
}

/// `apscore status` of the coordinator on `port`.
fn status(port: u16) -> String {
    let out = apscore()
        .args(["status", "--coordinator", &url(port)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `check` every 50 ms until it holds; panics after `timeout`, naming `what`.
fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that two jobs' outputs hold the same rows with the same values.
fn assert_same_outputs(expected: &Path, got: &Path) {
    for output in ["scores", "ranking.parquet", "selected"] {
        let (a, b) = (
            read_parquet(&expected.join(output)),
            read_parquet(&got.join(output)),
        );
        assert_same_batches(output, &a, &b);
    }
    let rejected = |out: &Path| {
        let file = std::fs::File::open(out.join("rejected_rows.parquet")).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        reader.map(|b| b.unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(
        rejected(expected),
        rejected(got),
        "rejected_rows.parquet differs"
    );
    let (a, b) = (summary(expected), summary(got));
    assert_eq!(a["counts"], b["counts"]);
    assert_eq!(a["statistics"], b["statistics"]);
    assert_eq!(a["model"], b["model"]);
}

fn assert_same_batches(what: &str, a: &RecordBatch, b: &RecordBatch) {
    assert_eq!(a.num_rows(), b.num_rows(), "{what}: row counts differ");
    let names = |x: &RecordBatch| -> Vec<String> {
        x.schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    };
    assert_eq!(names(a), names(b), "{what}: columns differ");
    for (i, name) in names(a).iter().enumerate() {
        assert_eq!(
            a.column(i).to_data(),
            b.column(i).to_data(),
            "{what}: column {name} differs"
        );
    }
}

/// The shard indices recorded done in a job's manifest.
fn done_shards(out: &Path) -> BTreeSet<u32> {
    let Ok(entries) = std::fs::read_dir(out.join("_work/done")) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("shard-")?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect()
}

/// How many times each shard was scored to the end, from the workers' logs.
fn scored_counts(logs: &[String]) -> BTreeMap<u32, u32> {
    let mut counts = BTreeMap::new();
    for line in logs.iter().flat_map(|l| l.lines()) {
        if !line.contains("shard scored") {
            continue;
        }
        let shard = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("shard="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no shard= in {line}"));
        *counts.entry(shard).or_insert(0) += 1;
    }
    counts
}

/// The single-process run every scenario is compared with.
fn baseline(env: &dyn Fn() -> Command, job: &[String]) {
    let mut cmd = env();
    cmd.args(["run", "--workers", "1"]).args(job);
    let out = cmd.output().unwrap();
    assert_success(&out, &["run", "--workers", "1"]);
}

#[test]
#[ignore = "needs moto_server (pip install \"moto[server]\"): bash .ci/run installs it"]
fn three_worker_processes_over_s3_give_what_one_process_gives() {
    let moto = Moto::start();
    moto.create_bucket("dist");
    let env = || moto.command(&[]);
    let dir = tempfile::tempdir().unwrap();
    // The job reads its inputs from the bucket and writes its outputs there.
    moto.apscore(&[
        "sample",
        "--output",
        "s3://dist/data",
        "--rows",
        "400",
        "--files",
        "2",
        "--row-group-rows",
        "5",
    ]);
    let single = job_args("s3://dist/data/", "s3://dist/single", true);
    baseline(&env, &single);

    let port = free_port();
    let job = job_args("s3://dist/data/", "s3://dist/cluster", true);
    let mut coordinator = coordinator(&env, dir.path(), port, &job, &[], "coordinator.log");
    let mut workers: Vec<Proc> = (0..3)
        .map(|i| worker(&env, dir.path(), port, &format!("w{i}"), &[]))
        .collect();
    coordinator.expect_success(Duration::from_secs(180));
    for w in &mut workers {
        w.expect_success(Duration::from_secs(30));
        assert!(
            w.log().contains("shard scored"),
            "{} scored nothing",
            w.what
        );
    }
    let single_out = moto.download("dist", "single", &dir.path().join("single"));
    let cluster_out = moto.download("dist", "cluster", &dir.path().join("cluster"));
    assert_same_outputs(&single_out, &cluster_out);
    let s = summary(&cluster_out);
    assert!(s["counts"]["shards"].as_u64().unwrap() >= 40, "{s}");
    assert_eq!(s["shards"]["workers"], 3);
    assert_eq!(s["shards"]["retries"], 0);
}

#[test]
fn a_worker_killed_mid_shard_loses_nothing_and_its_shard_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_data(dir.path(), 400, 2, false);
    let single = job_args(path_str(&data), path_str(&dir.path().join("single")), true);
    baseline(&local, &single);

    let port = free_port();
    let out = dir.path().join("cluster");
    let job = job_args(path_str(&data), path_str(&out), true);
    let mut coordinator = coordinator(
        &local,
        dir.path(),
        port,
        &job,
        &["--lease-timeout", "2s"],
        "coordinator.log",
    );
    let mut victim = worker(&local, dir.path(), port, "victim", &[]);
    let mut survivor = worker(&local, dir.path(), port, "survivor", &[]);
    // Kill the victim while it holds a lease, after a few shards are done.
    wait_until("a few shards are done", Duration::from_secs(60), || {
        done_shards(&out).len() >= 3
    });
    let held = pause_while_holding(&victim, port, "victim/0");
    victim.kill9();
    coordinator.expect_success(Duration::from_secs(180));
    survivor.expect_success(Duration::from_secs(30));
    assert_same_outputs(&dir.path().join("single"), &out);
    let s = summary(&out);
    assert!(s["shards"]["lease_expiries"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["shards"]["retries"].as_u64().unwrap() >= 1, "{s}");
    // The shard the victim held was scored to the end by the survivor.
    let by_survivor = scored_counts(&[survivor.log()]);
    let by_victim = scored_counts(&[victim.log()]);
    assert!(
        by_survivor.contains_key(&held) || by_victim.contains_key(&held),
        "shard {held} was never scored"
    );
    assert!(
        coordinator.log().contains("lease expired"),
        "{}",
        coordinator.log()
    );
}

/// Every file under `out` with its size and modification time: what a late write would change.
fn snapshot(out: &Path) -> BTreeMap<PathBuf, (u64, std::time::SystemTime, Vec<u8>)> {
    let mut files = BTreeMap::new();
    let mut folders = vec![out.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let meta = std::fs::metadata(&path).unwrap();
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path, (meta.len(), meta.modified().unwrap(), bytes));
            }
        }
    }
    files
}

/// `kill -SIG` on a process.
fn signal(proc: &Proc, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &proc.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig}");
}

#[test]
fn a_worker_presumed_dead_that_wakes_up_after_the_job_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Shards of 400 pairs through the model: long enough to be caught holding one.
    let data = dir.path().join("data");
    sample(
        &data,
        &["--rows", "1200", "--files", "1", "--row-group-rows", "50"],
    );
    let port = free_port();
    let out = dir.path().join("cluster");
    let mut job = job_args(path_str(&data), path_str(&out), true);
    let shard_rows = job.iter().position(|a| a == "--shard-rows").unwrap() + 1;
    job[shard_rows] = "400".into();
    let mut coordinator = coordinator(
        &local,
        dir.path(),
        port,
        &job,
        &["--lease-timeout", "2s"],
        "coordinator.log",
    );
    let mut sleeper = worker(&local, dir.path(), port, "sleeper", &[]);
    // Paused while it holds a lease: its heartbeats stop, the lease expires and the shard
    // goes to another worker.
    pause_while_holding(&sleeper, port, "sleeper/0");
    let mut other = worker(&local, dir.path(), port, "other", &[]);
    coordinator.expect_success(Duration::from_secs(180));
    other.expect_success(Duration::from_secs(30));
    let s = summary(&out);
    assert!(s["shards"]["lease_expiries"].as_u64().unwrap() >= 1, "{s}");
    let finished = snapshot(&out);

    // It wakes up and carries on with its shard: it writes only in its own attempt's
    // folder, finds the job over, removes what it wrote and exits.
    signal(&sleeper, "-CONT");
    sleeper.wait(Duration::from_secs(60));
    let after = snapshot(&out);
    assert_eq!(
        finished.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "files appeared or went after the job finished"
    );
    for (path, (size, modified, bytes)) in &finished {
        let (size_after, modified_after, bytes_after) = &after[path];
        assert!(
            size == size_after && modified == modified_after && bytes == bytes_after,
            "{} changed after the job finished",
            path.display()
        );
    }
    assert!(!out.join("_work").exists(), "the work folder came back");
}

#[test]
fn a_worker_stopped_with_sigterm_finishes_its_shard_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_data(dir.path(), 400, 2, false);
    let port = free_port();
    let out = dir.path().join("cluster");
    let job = job_args(path_str(&data), path_str(&out), true);
    // A long lease: a shard abandoned by the leaving worker would stall the job.
    let mut coordinator = coordinator(
        &local,
        dir.path(),
        port,
        &job,
        &["--lease-timeout", "10m"],
        "coordinator.log",
    );
    let mut leaving = worker(&local, dir.path(), port, "leaving", &[]);
    let mut held = None;
    wait_until(
        "the leaving worker holds a shard",
        Duration::from_secs(60),
        || {
            held = holding(&status(port), "leaving/0");
            held.is_some() && done_shards(&out).len() >= 2
        },
    );
    let term = Command::new("kill")
        .args(["-TERM", &leaving.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    leaving.expect_success(Duration::from_secs(30));
    assert!(leaving.log().contains("stopping"), "{}", leaving.log());
    let held = held.unwrap();
    assert!(
        done_shards(&out).contains(&held),
        "the leaving worker did not finish shard {held}"
    );
    let mut staying = worker(&local, dir.path(), port, "staying", &[]);
    coordinator.expect_success(Duration::from_secs(120));
    staying.expect_success(Duration::from_secs(30));
    let s = summary(&out);
    assert_eq!(s["shards"]["lease_expiries"], 0, "{s}");
    assert_eq!(s["shards"]["retries"], 0, "{s}");
}

/// The shard `worker` holds according to `apscore status`, if any.
fn holding(status: &str, worker: &str) -> Option<u32> {
    status
        .lines()
        .find(|l| l.contains(worker) && l.contains(" shard "))?
        .split(" shard ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Pauses `proc` (SIGSTOP) at a moment the coordinator records its slot `slot` holding a
/// lease, and returns that shard. Reading `status` first and signalling after would race:
/// the worker may finish the shard in between, and then no lease is left to expire.
/// Paused, it can neither finish nor take another; a completion already on its way gets a
/// moment to land before `status` is asked.
fn pause_while_holding(proc: &Proc, port: u16, slot: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        signal(proc, "-STOP");
        std::thread::sleep(Duration::from_millis(200));
        if let Some(shard) = holding(&status(port), slot) {
            return shard;
        }
        signal(proc, "-CONT");
        assert!(
            Instant::now() < deadline,
            "{slot} was never caught holding a shard; its log:\n{}",
            proc.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_coordinator_killed_mid_job_resumes_without_scoring_a_finished_shard_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_data(dir.path(), 400, 2, false);
    let single = job_args(path_str(&data), path_str(&dir.path().join("single")), true);
    baseline(&local, &single);

    let port = free_port();
    let out = dir.path().join("cluster");
    let job = job_args(path_str(&data), path_str(&out), true);
    let mut first = coordinator(&local, dir.path(), port, &job, &[], "coordinator-1.log");
    let patient = ["--give-up-after", "60s"];
    let mut workers: Vec<Proc> = (0..2)
        .map(|i| worker(&local, dir.path(), port, &format!("w{i}"), &patient))
        .collect();
    wait_until("10 shards are done", Duration::from_secs(120), || {
        done_shards(&out).len() >= 10
    });
    first.kill9();
    let finished_before = done_shards(&out);
    assert!(
        finished_before.len() < 40,
        "the job finished before the kill"
    );

    let mut second = coordinator(&local, dir.path(), port, &job, &[], "coordinator-2.log");
    second.expect_success(Duration::from_secs(180));
    for w in &mut workers {
        w.expect_success(Duration::from_secs(30));
    }
    assert_same_outputs(&dir.path().join("single"), &out);
    let s = summary(&out);
    assert_eq!(
        s["shards"]["resumed"].as_u64().unwrap(),
        finished_before.len() as u64,
        "{s}"
    );
    // Count it: every shard finished before the kill was scored exactly once.
    let counts = scored_counts(&workers.iter().map(Proc::log).collect::<Vec<_>>());
    for shard in &finished_before {
        assert_eq!(counts.get(shard), Some(&1), "shard {shard}: {counts:?}");
    }
    assert!(
        second.log().contains("resuming the job"),
        "{}",
        second.log()
    );
}

#[test]
fn a_worker_of_another_protocol_version_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_data(dir.path(), 60, 1, true);
    let port = free_port();
    let job = job_args(path_str(&data), path_str(&dir.path().join("out")), false);
    let mut coordinator = coordinator(&local, dir.path(), port, &job, &[], "coordinator.log");
    let mut stranger = worker(
        &local,
        dir.path(),
        port,
        "stranger",
        &["--protocol-version", "999"],
    );
    assert!(
        !stranger.wait(Duration::from_secs(30)),
        "the stranger was accepted"
    );
    let log = stranger.log();
    assert!(
        log.contains("refused this worker")
            && log.contains(&format!(
                "protocol version {}",
                apscore_proto::PROTOCOL_VERSION
            ))
            && log.contains("version 999"),
        "{log}"
    );
    // A worker of the right version does the job.
    let mut fellow = worker(&local, dir.path(), port, "fellow", &[]);
    coordinator.expect_success(Duration::from_secs(60));
    fellow.expect_success(Duration::from_secs(30));
    assert_eq!(summary(&dir.path().join("out"))["shards"]["workers"], 1);
}

#[test]
fn a_poisoned_file_fails_the_job_after_max_attempts_and_keeps_every_other_shard() {
    let dir = tempfile::tempdir().unwrap();
    // 3 files of 100 rows in row groups of 5; shards of 10 rows: 10 shards per file.
    let data = sample_data(dir.path(), 300, 3, true);
    let files = parquet_files(&data);
    let poisoned = &files[1];
    poison(poisoned);
    let port = free_port();
    let out = dir.path().join("out");
    let job = job_args(path_str(&data), path_str(&out), false);
    let mut coordinator = coordinator(
        &local,
        dir.path(),
        port,
        &job,
        &["--max-attempts", "3"],
        "coordinator.log",
    );
    let mut workers: Vec<Proc> = (0..2)
        .map(|i| worker(&local, dir.path(), port, &format!("w{i}"), &[]))
        .collect();
    assert!(
        !coordinator.wait(Duration::from_secs(120)),
        "the job succeeded"
    );
    for w in &mut workers {
        assert!(!w.wait(Duration::from_secs(30)));
        assert!(w.log().contains("the job failed"), "{}", w.log());
    }
    let log = coordinator.log();
    assert!(log.contains("10 of 30 shards could not be scored"), "{log}");
    let name = poisoned.file_name().unwrap().to_str().unwrap();
    for shard in 10..20 {
        let line = format!("shard {shard} (");
        let at = log
            .find(&line)
            .unwrap_or_else(|| panic!("{line} missing:\n{log}"));
        assert!(log[at..].lines().next().unwrap().contains(name), "{log}");
    }
    assert!(
        log.contains("attempt 1: ") && log.contains("attempt 3: "),
        "{log}"
    );
    assert!(!log.contains("attempt 4: "), "{log}");
    // Every other shard is done, recorded and readable; nothing was finished.
    let done = done_shards(&out);
    assert_eq!(done, (0..10).chain(20..30).collect::<BTreeSet<u32>>());
    for shard in done {
        let part = out.join(format!("scores/part-{shard:05}.parquet"));
        assert_eq!(read_parquet(&part).num_rows(), 10);
    }
    assert!(!out.join("summary.json").exists());
}

/// Overwrites a Parquet file's pages (everything between the magic and the footer) with
/// garbage: its footer still plans, its rows cannot be read.
fn poison(file: &Path) {
    let mut bytes = std::fs::read(file).unwrap();
    let n = bytes.len();
    let footer = u32::from_le_bytes(bytes[n - 8..n - 4].try_into().unwrap()) as usize;
    for b in &mut bytes[4..n - 8 - footer] {
        *b = 0xA7;
    }
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn an_interrupted_coordinator_exits_5_and_the_same_command_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_data(dir.path(), 60, 1, true);
    let out = dir.path().join("out");
    let job = job_args(path_str(&data), path_str(&out), false);
    let port = free_port();
    // No worker comes: the coordinator waits until told to stop.
    let mut first = coordinator(&local, dir.path(), port, &job, &[], "coordinator-1.log");
    let term = Command::new("kill")
        .args(["-TERM", &first.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    assert!(!first.wait(Duration::from_secs(30)));
    assert_eq!(first.child.wait().unwrap().code(), Some(5));
    assert!(first.log().contains("interrupted"), "{}", first.log());
    assert!(out.join("_work/manifest.json").exists());

    let mut second = coordinator(&local, dir.path(), port, &job, &[], "coordinator-2.log");
    let mut w = worker(&local, dir.path(), port, "w", &[]);
    second.expect_success(Duration::from_secs(60));
    w.expect_success(Duration::from_secs(30));
    assert!(
        second.log().contains("resuming the job"),
        "{}",
        second.log()
    );
    // Run once more: already complete, nothing changed.
    let before = std::fs::read(out.join("summary.json")).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["coordinator", "--listen", &listen];
    args.extend(job.iter().map(String::as_str));
    let third = run_ok(&args);
    assert!(third.contains("already complete"), "{third}");
    assert_eq!(std::fs::read(out.join("summary.json")).unwrap(), before);
}

/// The body of `GET /metrics` on 127.0.0.1:`port` (empty when nothing answers).
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

#[test]
fn prometheus_scrapes_the_coordinator_and_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_data(dir.path(), 60, 1, true);
    let job = job_args(path_str(&data), path_str(&dir.path().join("out")), false);
    let (port, coordinator_metrics, worker_metrics) = (free_port(), free_port(), free_port());
    // The worker first: it waits for its coordinator and serves its metrics meanwhile.
    let worker_listen = format!("127.0.0.1:{worker_metrics}");
    let mut w = worker(
        &local,
        dir.path(),
        port,
        "w",
        &["--metrics-listen", &worker_listen],
    );
    wait_until("the worker serves metrics", Duration::from_secs(30), || {
        scrape(worker_metrics).contains("apscore_worker_shards_scored_total 0")
    });
    let text = scrape(worker_metrics);
    assert!(
        text.contains("# TYPE apscore_worker_tokens_total counter"),
        "{text}"
    );
    assert!(
        text.contains("apscore_worker_resident_memory_bytes"),
        "{text}"
    );

    let coordinator_listen = format!("127.0.0.1:{coordinator_metrics}");
    let mut c = coordinator(
        &local,
        dir.path(),
        port,
        &job,
        &["--metrics-listen", &coordinator_listen],
        "coordinator.log",
    );
    let mut text = String::new();
    wait_until(
        "the coordinator serves the job's metrics",
        Duration::from_secs(30),
        || {
            text = scrape(coordinator_metrics);
            text.contains("apscore_rows_total 60") || c.child.try_wait().unwrap().is_some()
        },
    );
    assert!(text.contains("apscore_rows_total 60"), "{text}");
    for state in ["pending", "leased", "done", "failed"] {
        assert!(
            text.contains(&format!("apscore_shards{{state=\"{state}\"}}")),
            "{text}"
        );
    }
    assert!(
        text.contains("# TYPE apscore_lease_expiries_total counter"),
        "{text}"
    );
    c.expect_success(Duration::from_secs(60));
    w.expect_success(Duration::from_secs(30));
}

#[test]
fn worker_processes_load_the_reward_model_from_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let data = sample_data(dir.path(), 60, 2, false);
    let reward = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/rm-qwen3");
    let with_reward = |out: &Path| {
        let mut job = job_args(path_str(&data), path_str(out), true);
        job.extend(["--reward-model".to_string(), path_str(&reward).to_string()]);
        job
    };
    let single = dir.path().join("single");
    baseline(&local, &with_reward(&single));

    let port = free_port();
    let cluster = dir.path().join("cluster");
    let job = with_reward(&cluster);
    let mut coordinator = coordinator(&local, dir.path(), port, &job, &[], "coordinator.log");
    let mut workers: Vec<Proc> = (0..2)
        .map(|i| worker(&local, dir.path(), port, &format!("w{i}"), &[]))
        .collect();
    coordinator.expect_success(Duration::from_secs(180));
    for w in &mut workers {
        w.expect_success(Duration::from_secs(30));
        assert!(
            w.log()
                .contains("loading the reward model beside the policy"),
            "{}",
            w.log()
        );
    }
    assert_same_outputs(&single, &cluster);
    let s = summary(&cluster);
    assert_eq!(s["explicit_margin"]["source"], "reward_model");
    assert!(
        s["explicit_margin"]["reward_model"]
            .as_str()
            .unwrap()
            .contains("rm-qwen3 (sha256:"),
        "{s}"
    );
    assert_eq!(s["shards"]["workers"], 2);
    let scores = read_parquet(&cluster.join("scores"));
    assert!(scores.column_by_name("rm_chosen").is_some());
}
