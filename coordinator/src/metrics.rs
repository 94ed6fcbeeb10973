//! The job's figures for Prometheus, at the coordinator: shards by state, workers, rows and
//! their rate, lease expiries and retries. Refreshed whenever a shard settles and every second;
//! served by the exporter the binary installs (`--metrics-listen`), no-ops without one.

use metrics::{counter, describe_counter, describe_gauge, gauge};

use crate::service::State;

/// Registers the metrics' help texts (once, at start).
pub fn describe() {
    describe_gauge!(
        "apscore_shards",
        "Shards of the job by state (pending, leased, done, failed)"
    );
    describe_gauge!("apscore_workers", "Workers registered with the coordinator");
    describe_gauge!("apscore_rows_total", "Input rows of the job");
    describe_gauge!(
        "apscore_rows_done",
        "Rows scored or rejected so far, in-flight shards included"
    );
    describe_gauge!(
        "apscore_rows_per_second",
        "Rows per second since this coordinator started"
    );
    describe_gauge!(
        "apscore_tokens_per_second",
        "Model tokens per second since this coordinator started"
    );
    describe_counter!(
        "apscore_lease_expiries_total",
        "Leases that expired (a worker stopped sending heartbeats)"
    );
    describe_counter!(
        "apscore_shard_retries_total",
        "Shards handed out again after a failure or an expired lease"
    );
    describe_gauge!(
        "apscore_padding_waste",
        "Share of padding in the model's batches, over finished shards"
    );
}

/// Sets every figure from the coordinator's state.
pub fn record(state: &State, elapsed_s: f64, rows_at_start: u64, tokens_at_start: u64) {
    let counts = state.table.counts();
    for (name, value) in [
        ("pending", counts.pending),
        ("leased", counts.leased),
        ("done", counts.done),
        ("failed", counts.failed),
    ] {
        gauge!("apscore_shards", "state" => name).set(f64::from(value));
    }
    gauge!("apscore_workers").set(state.workers.len() as f64);
    let (rows, tokens) = state.table.progress();
    gauge!("apscore_rows_total").set(state.rows_total() as f64);
    gauge!("apscore_rows_done").set(rows as f64);
    let elapsed = elapsed_s.max(1e-9);
    gauge!("apscore_rows_per_second").set(rows.saturating_sub(rows_at_start) as f64 / elapsed);
    gauge!("apscore_tokens_per_second")
        .set(tokens.saturating_sub(tokens_at_start) as f64 / elapsed);
    counter!("apscore_lease_expiries_total").absolute(state.table.expiries);
    counter!("apscore_shard_retries_total").absolute(state.table.retries);
    let (real, padded) = state.table.results().fold((0u64, 0u64), |(t, p), r| {
        (t + r.tokens, p + r.padded_tokens)
    });
    if padded > 0 {
        gauge!("apscore_padding_waste").set(1.0 - real as f64 / padded as f64);
    }
}
