//! `summary.json`: what a job did, with which parameters, on what data, and how fast.
//!
//! The key facts (parameters, counts, statistics) also go into the key-value metadata of every
//! Parquet file the job writes, under `apscore.*` keys, so a file that travels alone still
//! says where it came from.

use std::collections::BTreeMap;

use apscore_core::layout::DatasetLayout;
use apscore_core::model_settings::Profile;
use apscore_core::stats::{MarginStats, RunningStats};
use serde::{Deserialize, Serialize};

use crate::explicit_margin::ExplicitMarginFacts;
use crate::plan::SourceFile;
use crate::ranking::RankingParams;
use crate::reuse::{Reused, ScoringSetup};

/// The facts every output file carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFacts {
    pub apscore_version: String,
    pub command: String,
    /// Names the inputs and everything that changes a score (not the ranking parameters);
    /// empty for outputs of `select`, which score nothing.
    #[serde(default)]
    pub job_id: String,
    /// The input files in row order, with their row counts.
    pub inputs: Vec<SourceFile>,
    /// The input's column names (which `selected/` carries).
    pub input_columns: Vec<String>,
    pub output: String,
    pub ranking: RankingParams,
    /// Which implicit margin is standardised: `logp_margin_norm` (SimPO, reference-free).
    pub implicit_margin: String,
    /// Where the log-probs come from: a model (path + content hash) or the input's columns.
    pub model: String,
    /// The tokenization profile, when a model ran.
    pub tokenization_profile: Option<Profile>,
    pub layout: DatasetLayout,
    pub counts: Counts,
    pub statistics: BTreeMap<String, ColumnStats>,
    /// How the pairs were scored (model settings, shard size), for a later incremental run to
    /// tell whether these scores still hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring_setup: Option<ScoringSetup>,
}

impl KeyFacts {
    /// Key-value pairs for Parquet footers.
    pub fn key_values(&self) -> Vec<(String, String)> {
        vec![
            ("apscore.version".into(), self.apscore_version.clone()),
            (
                "apscore.facts".into(),
                serde_json::to_string(self).expect("facts serialise"),
            ),
        ]
    }
}

/// Row counts. Always `input_rows = scored_rows + rejected_rows`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counts {
    pub input_files: u64,
    pub shards: u64,
    pub input_rows: u64,
    pub scored_rows: u64,
    pub rejected_rows: u64,
    pub selected_rows: u64,
}

/// Count, mean and population std of one margin over the scored rows.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ColumnStats {
    pub count: u64,
    pub mean: f64,
    pub std: f64,
}

impl From<&RunningStats> for ColumnStats {
    fn from(s: &RunningStats) -> Self {
        ColumnStats {
            count: s.count,
            mean: s.mean,
            std: s.std(),
        }
    }
}

/// The statistics of each margin, by name.
pub fn statistics(stats: &MarginStats) -> BTreeMap<String, ColumnStats> {
    stats
        .named()
        .into_iter()
        .map(|(name, s)| (name.to_string(), ColumnStats::from(s)))
        .collect()
}

/// The whole summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    #[serde(flatten)]
    pub facts: KeyFacts,
    /// Score of the last selected row under the ranking metric.
    pub selection_cutoff: Option<f64>,
    /// The most frequent rejection reasons with their counts.
    pub rejection_reasons: BTreeMap<String, u64>,
    /// Seconds spent per phase.
    pub timings_s: Timings,
    /// Input rows per second over the whole job.
    pub rows_per_second: f64,
    /// Peak resident memory of the process that ran the job, where the OS tells it.
    pub peak_memory_bytes: Option<u64>,
    /// Where each output is, relative to `output`.
    pub outputs: BTreeMap<String, String>,
    /// The model's work, for jobs that ran one (`run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring: Option<ScoringFigures>,
    /// How the shards went, for jobs that scored them (`run`, `rank`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<ShardFigures>,
    /// What an incremental run took from an earlier job instead of scoring it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reused: Option<Reused>,
    /// Where the explicit margin came from, and how a reward model's agrees with the data's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub explicit_margin: Option<ExplicitMarginFacts>,
}

/// What happened to a job's shards on their way to done.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ShardFigures {
    /// Shards found done in the manifest of an earlier, interrupted run and kept.
    pub resumed: u64,
    /// Leases that expired (a worker stopped sending heartbeats).
    pub lease_expiries: u64,
    /// Shards handed out again after a failure or an expired lease.
    pub retries: u64,
    /// Workers that registered with this coordinator.
    pub workers: u64,
    /// CPU seconds this process used while the shards were scored: the coordinator's own
    /// work when its workers are other processes (`apscore coordinator`).
    #[serde(default)]
    pub scoring_cpu_s: Option<f64>,
}

/// What the forward pass did in a `run` job.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct ScoringFigures {
    /// Tokens through the policy model (a pair's prompt once, both responses); a reference
    /// model reads the same tokens again.
    pub tokens: u64,
    /// The same counted with the padding of their batches.
    pub padded_tokens: u64,
    /// Tokens through the reward model, when the job has one (a pair's shared start once,
    /// both conversations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward_tokens: Option<u64>,
    /// `1 − tokens / padded_tokens`.
    pub padding_waste: f64,
    /// `tokens` over the scoring phase's seconds.
    pub tokens_per_second: f64,
    /// Scored pairs over the scoring phase's seconds.
    pub pairs_per_second: f64,
}

/// Seconds per job phase.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    pub plan: f64,
    pub score: f64,
    pub rank: f64,
    pub write: f64,
    pub total: f64,
}
