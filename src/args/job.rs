//! The flags that define a job (inputs, output, ranking, layout, execution), shared by `run`,
//! `rank` and `coordinator`.

use apscore_coordinator::reuse::ReuseFrom;
use apscore_coordinator::{LeaseSettings, RankJobSpec};
use apscore_core::job_definition::ModelJob;
use clap::Args;

use super::layout::LayoutArgs;
use super::parse::parse_duration;
use super::ranking::{RankingArgs, SelectedArgs};

#[derive(Debug, Args)]
pub struct JobArgs {
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

    /// When --output holds a finished job (of other inputs: a night with new files), reuse
    /// its scores for every input file that did not change (same path, size and version) and
    /// score only the rest; the ranking and selection are computed again over all rows. The
    /// finished job stays in place until the new one is complete. Reuse needs the same model,
    /// tokenization and --shard-rows; otherwise every file is scored.
    #[arg(long, conflicts_with = "reuse_from")]
    pub incremental: bool,

    /// Like --incremental, with the finished job's scores taken from another output folder.
    #[arg(long, value_name = "OUT")]
    pub reuse_from: Option<String>,

    /// Keep a full copy of every input column in scores/ (as earlier versions did). By
    /// default scores/ holds the row keys (row_id, source_file, source_row) and the computed
    /// columns only, joinable to the input; selected/ always has whole rows.
    #[arg(long)]
    pub scores_with_input: bool,

    #[command(flatten)]
    pub ranking: RankingArgs,

    #[command(flatten)]
    pub layout: LayoutArgs,

    #[command(flatten)]
    pub execution: ExecutionArgs,
}

/// How the work is cut up and run.
#[derive(Debug, Args)]
#[command(next_help_heading = "Execution")]
pub struct ExecutionArgs {
    /// Target rows per shard; shards are whole row groups of one file, never split.
    #[arg(long, default_value_t = 65_536, value_parser = clap::value_parser!(u64).range(1..))]
    pub shard_rows: u64,

    /// A shard's lease expires when its worker sends no heartbeat for this long (e.g. 10s);
    /// the shard then goes to another worker.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub lease_timeout: std::time::Duration,

    /// Tries per shard (failures and expired leases) before the job fails with a report.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_attempts: u32,

    #[command(flatten)]
    pub sort: SelectedArgs,
}

impl JobArgs {
    /// The job a coordinator runs, with `model` when it scores one.
    pub fn spec(self, model: Option<ModelJob>) -> RankJobSpec {
        RankJobSpec {
            inputs: self.input,
            output: self.output,
            layout: self.layout.options(),
            ranking: self.ranking.params(),
            shard_rows: self.execution.shard_rows,
            overwrite: self.overwrite,
            selected: self.execution.sort.writing(),
            model,
            model_identity: None,
            reuse: match (self.incremental, self.reuse_from) {
                (true, _) => Some(ReuseFrom::Output),
                (false, Some(from)) => Some(ReuseFrom::Location(from)),
                (false, None) => None,
            },
            scores_with_input: self.scores_with_input,
            leases: LeaseSettings {
                timeout: self.execution.lease_timeout,
                max_attempts: self.execution.max_attempts,
            },
        }
    }
}
