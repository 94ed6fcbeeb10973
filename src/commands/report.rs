//! `apscore report`: draw a finished job's report again.

use anyhow::Context;
use apscore_coordinator::reselect::run_report_job;
use clap::Args;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Output folder of a finished job (local or object-store URL).
    #[arg(long)]
    pub from: String,
}

/// `apscore report`.
pub async fn run(args: ReportArgs) -> anyhow::Result<()> {
    let written = run_report_job(&args.from)
        .await
        .context("drawing the report failed")?;
    println!("report: {written}");
    Ok(())
}
