//! `apscore run` and `apscore rank` on one machine: a coordinator and its workers in this
//! process, talking gRPC over loopback — the same protocol and code path as a cluster.

use anyhow::Context;
use apscore_coordinator::{Finished, RankJobSpec, run_rank_job};
use apscore_proto::security::{ClientSecurity, ServerSecurity};
use apscore_worker::job_model::{LoadedModel, Placement};
use apscore_worker::retry::Backoff;
use apscore_worker::runner::{WorkerError, WorkerOptions, run_worker};

/// Runs the job's coordinator on a loopback port and `workers` workers against it (sharing
/// `model` when given); returns the coordinator's summary.
pub async fn run_embedded(
    spec: RankJobSpec,
    workers: usize,
    model: Option<LoadedModel>,
    placement: Placement,
) -> anyhow::Result<Finished> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot open a loopback port for the coordinator")?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut job = tokio::spawn(run_rank_job(spec, listener, ServerSecurity::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let options = WorkerOptions {
        coordinator: url,
        name: format!("local:{}", std::process::id()),
        slots: workers.max(1),
        placement,
        protocol_version: apscore_proto::PROTOCOL_VERSION,
        backoff: Backoff::default(),
        log_shards: false,
        // Loopback inside one process: nobody else can join.
        security: ClientSecurity::default(),
    };
    let mut worker = tokio::spawn(run_worker(options, model, stopped));
    tokio::select! {
        finished = &mut job => {
            let finished = finished?;
            let nothing_served = finished.as_ref().map_or(true, |f| f.already_complete);
            if nothing_served {
                // The coordinator failed (bad input, a shard out of attempts: its error says
                // why), or found the job already complete and served nothing: the workers have
                // nothing to do.
                worker.abort();
            } else {
                // The coordinator returns once every worker heard that the job ended (an idle
                // worker's held lease request is answered at once), or after a few seconds
                // without hearing from one: told to stop, such a slot leaves too (one still
                // scoring a shard finishes it and clears its attempt first). A slot that had
                // not registered yet has nothing to do either.
                let _ = stop.send(true);
                match tokio::time::timeout(std::time::Duration::from_secs(5), &mut worker).await {
                    Ok(stopped) => {
                        stopped??;
                    }
                    Err(_) => worker.abort(),
                }
            }
            Ok(finished?)
        }
        stopped = &mut worker => {
            match stopped? {
                // Told the job ended: the coordinator is writing its last words.
                Ok(_) => Ok(job.await??),
                // The job failed: the coordinator's own error has the report.
                Err(WorkerError::JobFailed(_)) => Ok(job.await??),
                Err(e) => {
                    job.abort();
                    Err(e.into())
                }
            }
        }
    }
}
