//! `apscore status`: a running job's shards, workers, throughput and ETA.

use anyhow::Context;
use apscore_proto::pb::coordinator_client::CoordinatorClient;
use clap::Args;

use crate::args::security::ClientSecurityArgs;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The coordinator's URL, e.g. http://10.0.0.5:50051 (https:// for TLS).
    #[arg(long, env = "APSCORE_COORDINATOR")]
    pub coordinator: String,

    #[command(flatten)]
    pub security: ClientSecurityArgs,
}

/// `apscore status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let security = args.security.security()?;
    let mut endpoint = tonic::transport::Endpoint::from_shared(args.coordinator.clone())
        .with_context(|| format!("`{}` is not a coordinator URL", args.coordinator))?;
    if args.coordinator.starts_with("https://") {
        endpoint = endpoint.tls_config(security.tls()?)?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {}", args.coordinator))?;
    let mut client = CoordinatorClient::with_interceptor(channel, security.interceptor());
    let s = client
        .status(apscore_proto::pb::StatusRequest {})
        .await
        .with_context(|| format!("the coordinator at {} did not answer", args.coordinator))?
        .into_inner();
    println!("job {} ({}) -> {}", s.job_id, s.phase, s.output);
    println!(
        "shards: {} total, {} pending, {} leased, {} done, {} failed",
        s.shards_total, s.shards_pending, s.shards_leased, s.shards_done, s.shards_failed
    );
    let eta = if s.eta_seconds >= 0.0 {
        format!("ETA {:.0} s", s.eta_seconds)
    } else {
        "ETA unknown".into()
    };
    println!(
        "rows:   {}/{} ({:.1} pairs/s, {eta})",
        s.rows_done, s.rows_total, s.rows_per_second
    );
    println!(
        "leases: {} expired, {} shards retried",
        s.lease_expiries, s.retries
    );
    println!("workers: {}", s.workers.len());
    for w in &s.workers {
        let shard = w
            .shard
            .map_or_else(|| "idle".to_string(), |i| format!("shard {i}"));
        println!(
            "  {:<6} {:<28} {:<8} {:<10} {:>5} done  heard {:.1} s ago",
            w.worker_id, w.name, w.device, shard, w.shards_done, w.seconds_since_heard
        );
    }
    Ok(())
}
