//! A worker's figures for Prometheus: shards, rows and tokens scored, batch padding, failures,
//! and this process's memory (device memory is not known to burn's backends). Served by the
//! exporter the binary installs (`apscore worker --metrics-listen`), no-ops without one.

use metrics::{counter, describe_counter, describe_gauge, gauge};

use apscore_core::shard::ShardResult;

/// Registers the help texts and starts every counter at zero, so a scrape before the first
/// shard already shows them.
pub fn describe() {
    describe_counter!(
        "apscore_worker_shards_scored_total",
        "Shards this worker scored and reported"
    );
    describe_counter!(
        "apscore_worker_shard_failures_total",
        "Shards this worker could not score"
    );
    describe_counter!(
        "apscore_worker_rows_total",
        "Rows of the shards this worker scored (scored and rejected)"
    );
    describe_counter!(
        "apscore_worker_tokens_total",
        "Tokens through the model, without padding"
    );
    describe_counter!(
        "apscore_worker_padded_tokens_total",
        "Tokens through the model, with batch padding"
    );
    describe_gauge!(
        "apscore_worker_resident_memory_bytes",
        "Resident memory of the worker process"
    );
    for name in [
        "apscore_worker_shards_scored_total",
        "apscore_worker_shard_failures_total",
        "apscore_worker_rows_total",
        "apscore_worker_tokens_total",
        "apscore_worker_padded_tokens_total",
    ] {
        counter!(name).absolute(0);
    }
    record_memory();
}

/// A shard scored and reported.
pub fn shard_scored(result: &ShardResult) {
    counter!("apscore_worker_shards_scored_total").increment(1);
    counter!("apscore_worker_rows_total").increment(result.scored + result.rejected);
    counter!("apscore_worker_tokens_total").increment(result.tokens);
    counter!("apscore_worker_padded_tokens_total").increment(result.padded_tokens);
    record_memory();
}

/// A shard that could not be scored.
pub fn shard_failed() {
    counter!("apscore_worker_shard_failures_total").increment(1);
}

fn record_memory() {
    if let Some(bytes) = apscore_core::memory::rss_bytes() {
        gauge!("apscore_worker_resident_memory_bytes").set(bytes as f64);
    }
}
