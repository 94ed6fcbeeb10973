//! # apscore-worker: scores shards
//!
//! A worker takes a shard (a run of row groups of one input file), reads exactly those rows,
//! scores every preference pair — with a model's forward pass, or from precomputed log-prob
//! columns — and writes the shard result under the job's output location.
//!
//! # Layout
//! - [`shard_scoring`]: one shard from input rows to result files and partial statistics.
//! - [`tokenization`]: conversations to scored token ids (`docs/models.md#tokenization`),
//!   with [`chat_template`]; [`reward_tokenization`]: conversations as a reward model reads
//!   them.
//! - [`model`]: checkpoints, weights and the burn forward pass.
//! - [`scorer`]: the model (and a reward model) on its own thread, a row per pair (prompt
//!   once), batched by length.
//! - [`job_model`]: loading the model a job names on this worker's device.
//! - [`runner`]: the worker's life: register with a coordinator, lease, score, report.
//! - [`retry`]: which failed calls to the coordinator are retried, and with what backoff.
//! - [`metrics`]: the worker's figures for Prometheus.

pub mod chat_template;
pub mod job_model;
pub mod metrics;
pub mod model;
pub mod retry;
pub mod reward_tokenization;
pub mod runner;
pub mod scorer;
pub mod shard_scoring;
pub mod tokenization;

pub use shard_scoring::{ShardContext, ShardError, ShardProgress, score_shard};
