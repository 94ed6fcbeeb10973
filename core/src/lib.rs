//! # apscore-core: the vocabulary shared by the coordinator and the workers
//!
//! # Layout
//! - [`storage`]: local paths and object-store URLs, input resolution (files, prefixes, globs).
//! - [`parquet_io`]: reading footers and row groups, writing files that appear only when whole.
//! - [`upload`]: one object uploaded from whole buffers, in parts, without copying them.
//! - [`layout`]: which columns of a preference dataset hold what, detected from the schema.
//! - [`pairs`]: reading margins, log-probs and conversations of rows out of record batches.
//! - [`shard`]: the unit of work and what a worker reports for it.
//! - [`job_definition`]: what a worker needs to know about a job, from the coordinator.
//! - [`model_settings`]: the typed settings of a job's model (dtype, tokenization profile).
//! - [`outputs`]: what lives where under a job's output location, and the files' schemas.
//! - [`stats`]: count/mean/M2 statistics and their merge across shards.
//! - [`columns`]: the names of the output columns.
//! - [`rng`]: seeded, platform-independent randomness.
//! - [`memory`]: this process's memory use, for logs and the summary.

pub mod columns;
pub mod job_definition;
pub mod layout;
pub mod memory;
pub mod model_settings;
pub mod outputs;
pub mod pairs;
pub mod parquet_io;
pub mod rng;
pub mod shard;
pub mod stats;
pub mod storage;
pub mod upload;

/// Version of apscore, recorded in every output.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
