//! `apscore select`: rank and select again from a finished job's scores.

use anyhow::Context;
use apscore_coordinator::reselect::{SelectJobSpec, run_select_job};
use clap::Args;

use super::outcome::print_summary;
use crate::args::ranking::{RankingArgs, SelectedArgs};

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Output folder of a finished job (local or object-store URL).
    #[arg(long)]
    pub from: String,

    /// Output folder for the new ranking and selection; not the --from folder.
    #[arg(long, short)]
    pub output: String,

    /// Replace the outputs of a finished job at --output.
    #[arg(long)]
    pub overwrite: bool,

    #[command(flatten)]
    pub ranking: RankingArgs,

    #[command(flatten)]
    pub sort: SelectedArgs,
}

/// `apscore select`.
pub async fn run(args: SelectArgs) -> anyhow::Result<()> {
    let spec = SelectJobSpec {
        from: args.from,
        output: args.output,
        ranking: args.ranking.params(),
        selected: args.sort.writing(),
        overwrite: args.overwrite,
    };
    let summary = run_select_job(spec).await.context("the selection failed")?;
    print_summary(&summary);
    Ok(())
}
