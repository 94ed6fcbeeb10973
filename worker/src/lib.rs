//! # apscore-worker: scores shards
//!
//! A worker takes a shard (a run of row groups of one input file), reads exactly those rows,
//! scores every preference pair — today from precomputed log-prob columns; a model forward
//! pass comes next — and writes the shard result under the job's output location.
//!
//! # Layout
//! - [`shard_scoring`]: one shard from input rows to result files and partial statistics.

pub mod shard_scoring;

pub use shard_scoring::{ShardContext, ShardError, score_shard};
