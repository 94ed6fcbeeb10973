//! How rows are ranked and selected, and the memory for putting the selected rows in order.

use apscore_coordinator::ranking::{ImplicitMargin, Metric, RankingParams, Selection};
use apscore_coordinator::selected::{
    DEFAULT_FILE_ROWS, DEFAULT_MEMORY_BUDGET_BYTES, SelectedWriting,
};
use clap::{Args, ValueEnum};

use super::parse::{parse_finite, parse_ratio};

/// How rows are ranked and how many are selected.
#[derive(Debug, Args)]
#[command(next_help_heading = "Ranking")]
pub struct RankingArgs {
    /// Ranking metric: `ap` (alignment potential), or the paper's baselines `explicit`
    /// (reward margin only), `implicit` (smallest |log-prob margin| first), `random` (seeded).
    #[arg(long, value_enum, default_value_t = MetricArg::Ap)]
    pub metric: MetricArg,

    /// Weight w of the implicit margin in M_AP = z(rm_margin) − w · z(|logp_margin_norm|).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true, value_parser = parse_finite)]
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

/// How `selected/` is written.
#[derive(Debug, Args)]
pub struct SelectedArgs {
    /// Memory (MiB) for putting the selected rows in rank order; less memory means more
    /// sorted runs to merge, not a failure.
    #[arg(long, default_value_t = DEFAULT_MEMORY_BUDGET_BYTES >> 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub sort_memory_mib: u64,
    /// Rows per file of `selected/` at most: the selection is cut into as few files of equal
    /// size, written side by side (one per core).
    #[arg(long, default_value_t = DEFAULT_FILE_ROWS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub selected_file_rows: u64,
}

impl SelectedArgs {
    pub fn writing(&self) -> SelectedWriting {
        SelectedWriting {
            memory_bytes: self.sort_memory_mib << 20,
            file_rows: self.selected_file_rows as usize,
        }
    }
}
