//! `apscore rank`: rank a dataset that already carries log-probs.

use anyhow::Context;
use apscore_worker::job_model::Placement;
use apscore_worker::model::DeviceSpec;
use clap::Args;

use super::outcome::print_outcome;
use crate::args::job::JobArgs;
use crate::args::monitoring::MonitoringArgs;
use crate::args::placement::{cache_dir, kernel_cache_dir};
use crate::args::ranking::ImplicitArg;
use crate::embedded;

#[derive(Debug, Args)]
pub struct RankCommandArgs {
    #[command(flatten)]
    pub job: JobArgs,

    /// Workers in this process. Default: twice the number of CPU cores (a worker waits on
    /// its reads and writes between shards; with one per core, the cores would wait too).
    #[arg(long, visible_alias = "concurrency", help_heading = "Execution", value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: Option<u64>,

    #[command(flatten)]
    pub monitoring: MonitoringArgs,
}

/// `apscore rank`.
pub async fn run(args: RankCommandArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.job.ranking.implicit == ImplicitArg::Simpo,
        "--implicit dpo needs log-probs under a reference model: use `apscore run \
         --reference-model DIR`"
    );
    args.monitoring.serve()?;
    let workers = args.workers.map_or_else(
        || 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n as usize,
    );
    let placement = Placement {
        device: DeviceSpec::Cpu,
        batch_tokens: None,
        packing: None,
        cache_dir: cache_dir(None),
        kernel_cache: kernel_cache_dir(&cache_dir(None)),
    };
    let spec = args.job.spec(None);
    let finished = embedded::run_embedded(spec, workers, None, placement)
        .await
        .context("the ranking job failed")?;
    print_outcome(&finished);
    Ok(())
}
