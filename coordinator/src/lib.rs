//! # apscore-coordinator: plans a job, ranks its pairs and writes its outputs
//!
//! # Layout
//! - [`plan`]: input files → shards (runs of whole row groups), from Parquet footers only.
//! - [`ranking`]: z-scores, alignment potential, the baselines, deterministic selection.
//! - [`outputs`]: `ranking.parquet`, `rejected_rows.parquet`, reading margins back.
//! - [`picking`]: reading scored rows by position out of `scores/`.
//! - [`selected`]: `selected/` in rank order, by an external sort in bounded memory.
//! - [`reselect`]: `select` and `report` from a finished job's outputs, without scoring.
//! - [`report`]: `report.html` and its plots, for analysts.
//! - [`finish`]: rank, write what depends on the ranking, then the summary (`rank` and `select`).
//! - [`summary`]: `summary.json` and the key facts stamped into every output file.
//! - [`job`]: one whole job, in order.

pub mod finish;
pub mod job;
pub mod outputs;
pub mod picking;
pub mod plan;
pub mod ranking;
pub mod report;
pub mod reselect;
pub mod selected;
pub mod summary;

pub use job::{JobError, JobModel, RankJobSpec, run_rank_job};
