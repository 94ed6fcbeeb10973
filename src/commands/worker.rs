//! `apscore worker`: score shards for a coordinator until its job ends.

use anyhow::Context;
use apscore_worker::retry::Backoff;
use apscore_worker::runner::{WorkerOptions, run_worker};
use clap::Args;

use crate::args::monitoring::MonitoringArgs;
use crate::args::parse::parse_duration;
use crate::args::placement::PlacementArgs;
use crate::args::security::ClientSecurityArgs;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator's URL, e.g. http://10.0.0.5:50051 (https:// for TLS).
    #[arg(long, env = "APSCORE_COORDINATOR", help_heading = "Worker")]
    pub coordinator: String,

    #[command(flatten)]
    pub placement: PlacementArgs,

    /// Padded tokens per forward batch on this worker; overrides the job's --batch-tokens.
    #[arg(long, help_heading = "Worker", value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_tokens: Option<u64>,

    /// Shards scored at once, sharing the loaded model (each registers as a worker).
    #[arg(long, default_value_t = 2, help_heading = "Worker", value_parser = clap::value_parser!(u64).range(1..))]
    pub slots: u64,

    /// How this worker appears in `apscore status`. Default: HOST:PID.
    #[arg(long, help_heading = "Worker")]
    pub name: Option<String>,

    /// Exit when the coordinator has not answered for this long (e.g. 30s, 5m).
    #[arg(long, default_value = "2m", help_heading = "Worker", value_parser = parse_duration)]
    pub give_up_after: std::time::Duration,

    #[command(flatten)]
    pub monitoring: MonitoringArgs,

    #[command(flatten)]
    pub security: ClientSecurityArgs,

    /// The protocol version announced (for testing refusals).
    #[arg(long, hide = true, default_value_t = apscore_proto::PROTOCOL_VERSION)]
    pub protocol_version: u32,
}

/// `apscore worker`.
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    args.monitoring.serve()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop_on_signals(stop).await;
    });
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let options = WorkerOptions {
        coordinator: args.coordinator.clone(),
        name: args
            .name
            .unwrap_or_else(|| format!("{host}:{}", std::process::id())),
        slots: args.slots as usize,
        placement: args.placement.placement(args.batch_tokens),
        protocol_version: args.protocol_version,
        backoff: Backoff {
            give_up_after: args.give_up_after,
            ..Backoff::default()
        },
        log_shards: true,
        security: args.security.security()?,
    };
    let report = run_worker(options, None, stopped)
        .await
        .context("the worker stopped")?;
    println!("worker done: {} shards scored", report.shards_scored);
    Ok(())
}

/// The first SIGTERM or Ctrl-C asks the worker to finish the shard it holds and exit; a
/// second exits at once.
async fn stop_on_signals(stop: tokio::sync::watch::Sender<bool>) {
    #[cfg(unix)]
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    for round in 0..2 {
        #[cfg(unix)]
        let term = async {
            match terminate.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        if round == 0 {
            tracing::warn!(
                "stopping: finishing the shard in hand, then exiting (signal again to exit now)"
            );
            let _ = stop.send(true);
        } else {
            tracing::warn!("exiting now; the shard's lease will expire and go to another worker");
            std::process::exit(i32::from(crate::exit_code::INTERRUPTED));
        }
    }
}
