//! # apscore-coordinator: plans a job, ranks its pairs and writes its outputs
//!
//! # Layout
//! - [`plan`]: input files → shards (runs of whole row groups), from Parquet footers only.
//! - [`ranking`]: z-scores, alignment potential, the baselines, deterministic selection.
//! - [`outputs`]: `ranking.parquet`, `selected/`, `rejected_rows.parquet`.
//! - [`summary`]: `summary.json` and the key facts stamped into every output file.
//! - [`job`]: one whole job, in order.

pub mod job;
pub mod outputs;
pub mod plan;
pub mod ranking;
pub mod summary;

pub use job::{JobError, RankJobSpec, run_rank_job};
