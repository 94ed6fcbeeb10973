//! # apscore-coordinator: plans a job, ranks its pairs and writes its outputs
//!
//! # Layout
//! Modules depend downward only: data and helpers first, orchestration last.
//!
//! Data and helpers:
//! - [`error`]: the errors of a job and of its output files.
//! - [`plan`]: input files → shards (runs of whole row groups), from Parquet footers only.
//! - [`ranking`]: z-scores, alignment potential, the baselines, deterministic selection.
//! - [`summary`]: `summary.json` and the key facts stamped into every output file.
//! - [`scored`]: a job's `scores/` parts, the margins read back from them, their statistics.
//! - [`explicit_margin`]: where the explicit margin came from (the data or a reward model) and
//!   how a reward model's agrees with the data's own.
//! - [`shard_table`]: the shard state machine (pending → leased → done | failed), leases.
//! - [`manifest`]: the job's state at its output location, for resuming after a restart.
//! - [`attempts`]: each attempt of a shard writes its own files; the accepted one is moved.
//! - [`earlier_run`]: what an earlier run left at the output: refused, cleared or replaced.
//! - [`reuse`]: incremental runs: an earlier job's scores for the files that did not change.
//! - [`output_lock`]: one job per output location at a time.
//!
//! Outputs:
//! - [`picking`]: reading scored rows by position out of `scores/`.
//! - [`ranking_file`]: writes `ranking.parquet`.
//! - [`rejected_rows`]: writes `rejected_rows.parquet`, merged from the shards' own.
//! - [`selected`]: `selected/` in rank order, by an external sort in bounded memory.
//! - [`run_files`]: that sort's scratch runs, Arrow IPC streams in the output location.
//! - [`report`]: `report.html` and its plots, for analysts.
//!
//! Orchestration:
//! - [`finish`]: rank, write what depends on the ranking, then the summary (`rank` and `select`).
//! - [`service`]: the gRPC service workers and `apscore status` talk to.
//! - [`metrics`]: the job's figures for Prometheus.
//! - [`job`]: one whole job at the coordinator, in order.
//! - [`reselect`]: `select` and `report` from a finished job's outputs, without scoring.

pub mod attempts;
pub mod earlier_run;
pub mod error;
pub mod explicit_margin;
pub mod finish;
pub mod job;
pub mod manifest;
pub mod metrics;
pub mod output_lock;
pub mod picking;
pub mod plan;
pub mod ranking;
pub mod ranking_file;
pub mod rejected_rows;
pub mod report;
pub mod reselect;
pub mod reuse;
pub mod run_files;
pub mod scored;
pub mod selected;
pub mod service;
pub mod shard_table;
pub mod summary;

pub use error::JobError;
pub use job::{Finished, LeaseSettings, RankJobSpec, run_rank_job};
