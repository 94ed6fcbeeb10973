//! `--metrics-listen`: Prometheus metrics of a long-running command.

use anyhow::Context;
use clap::Args;

/// Where this process serves its metrics, if anywhere.
#[derive(Debug, Args)]
#[command(next_help_heading = "Monitoring")]
pub struct MonitoringArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 0.0.0.0:9090).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl MonitoringArgs {
    /// Serves this process's Prometheus metrics at http://ADDR/metrics, when asked to.
    pub fn serve(&self) -> anyhow::Result<()> {
        let Some(address) = self.metrics_listen else {
            return Ok(());
        };
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(address)
            .install()
            .with_context(|| format!("cannot serve metrics on {address}"))?;
        tracing::info!(%address, "Prometheus metrics at http://{address}/metrics");
        Ok(())
    }
}
