//! `apscore run`: score a dataset with a model, then rank and select, on this machine.

use anyhow::Context;
use apscore_worker::job_model::load_job_model;
use clap::Args;

use super::outcome::print_outcome;
use crate::args::job::JobArgs;
use crate::args::model::ModelArgs;
use crate::args::monitoring::MonitoringArgs;
use crate::args::placement::PlacementArgs;
use crate::args::ranking::ImplicitArg;
use crate::embedded;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub placement: PlacementArgs,

    /// Workers in this process (they share the loaded model: while one shard is on the
    /// model, the next is read and tokenized).
    #[arg(long, visible_alias = "concurrency", default_value_t = 2, help_heading = "Execution", value_parser = clap::value_parser!(u64).range(1..))]
    pub workers: u64,

    #[command(flatten)]
    pub monitoring: MonitoringArgs,
}

/// `apscore run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.job.ranking.implicit == ImplicitArg::Simpo || args.model.reference_model.is_some(),
        "--implicit dpo needs a reference model: add --reference-model DIR"
    );
    let Some(model_job) = args.model.job()? else {
        anyhow::bail!(
            "`run` needs --model (a checkpoint directory or GGUF file); to rank log-probs the \
             input already carries, use `apscore rank`"
        );
    };
    args.monitoring.serve()?;
    let placement = args.placement.placement(args.model.batch_tokens);
    // Loaded before the job starts: a model that cannot load fails at once, not per shard.
    let model = load_job_model(&model_job, &placement)
        .await
        .with_context(|| format!("cannot use the model {}", model_job.source))?;
    let mut spec = args.job.spec(Some(model_job));
    spec.model_identity = Some(model.identity.clone());
    let finished = embedded::run_embedded(spec, args.workers as usize, Some(model), placement)
        .await
        .context("the scoring job failed")?;
    print_outcome(&finished);
    Ok(())
}
