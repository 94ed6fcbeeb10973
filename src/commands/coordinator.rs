//! `apscore coordinator`: a job's coordinator, serving shards to workers over gRPC.

use anyhow::Context;
use apscore_coordinator::run_rank_job;
use clap::Args;

use super::outcome::print_outcome;
use crate::args::job::JobArgs;
use crate::args::model::ModelArgs;
use crate::args::monitoring::MonitoringArgs;
use crate::args::ranking::ImplicitArg;
use crate::args::security::ServerSecurityArgs;

#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    #[command(flatten)]
    pub job: JobArgs,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Address to serve workers on. 0.0.0.0:PORT accepts workers from other hosts (with TLS,
    /// or --insecure).
    #[arg(long, default_value = "127.0.0.1:50051", help_heading = "Coordinator")]
    pub listen: std::net::SocketAddr,

    #[command(flatten)]
    pub security: ServerSecurityArgs,

    #[command(flatten)]
    pub monitoring: MonitoringArgs,
}

/// `apscore coordinator`.
pub async fn run(args: CoordinatorArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.job.ranking.implicit == ImplicitArg::Simpo || args.model.reference_model.is_some(),
        "--implicit dpo needs a reference model: add --reference-model DIR"
    );
    let security = args.security.security()?;
    anyhow::ensure!(
        args.listen.ip().is_loopback() || security.uses_tls() || args.security.insecure,
        "refusing to serve plaintext gRPC on {}, which other hosts can reach: anyone there could \
         join or read the job. Give --tls-cert and --tls-key (and --token-file), or --insecure \
         on a network you trust",
        args.listen
    );
    args.monitoring.serve()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    anyhow::ensure!(
        args.model.chat_template.is_none() || args.model.model.is_some(),
        "--chat-template replaces the template of a model: add --model"
    );
    anyhow::ensure!(
        args.model.reward_model.is_none() || args.model.model.is_some(),
        "--reward-model scores beside the policy model: add --model"
    );
    let model = args.model.job()?;
    let spec = args.job.spec(model);
    let finished = run_rank_job(spec, listener, security)
        .await
        .context("the job failed")?;
    print_outcome(&finished);
    Ok(())
}
