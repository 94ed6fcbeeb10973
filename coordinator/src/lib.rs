//! # apscore-coordinator: plans a job, ranks its pairs and writes its outputs
//!
//! # Layout
//! - [`plan`]: input files → shards (runs of whole row groups), from Parquet footers only.
//! - [`ranking`]: z-scores, alignment potential, the baselines, deterministic selection.
//! - [`outputs`]: `ranking.parquet`, `rejected_rows.parquet`, reading margins back.
//! - [`selected`]: `selected/` in rank order, by an external sort in bounded memory.
//! - [`summary`]: `summary.json` and the key facts stamped into every output file.
//! - [`job`]: one whole job, in order.

pub mod job;
pub mod outputs;
pub mod plan;
pub mod ranking;
pub mod selected;
pub mod summary;

pub use job::{JobError, RankJobSpec, run_rank_job};
