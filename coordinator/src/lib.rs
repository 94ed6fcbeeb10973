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
//! - [`shard_table`]: the shard state machine (pending → leased → done | failed), leases.
//! - [`manifest`]: the job's state at its output location, for resuming after a restart.
//! - [`service`]: the gRPC service workers and `apscore status` talk to.
//! - [`metrics`]: the job's figures for Prometheus.
//! - [`job`]: one whole job at the coordinator, in order.

pub mod finish;
pub mod job;
pub mod manifest;
pub mod metrics;
pub mod outputs;
pub mod picking;
pub mod plan;
pub mod ranking;
pub mod report;
pub mod reselect;
pub mod selected;
pub mod service;
pub mod shard_table;
pub mod summary;

pub use job::{Finished, JobError, LeaseSettings, RankJobSpec, run_rank_job};
