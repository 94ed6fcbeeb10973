//! A worker's life: ask the coordinator for the job, load its model, register, then lease,
//! score and report shards until the job ends.
//!
//! A worker process runs `slots` of these loops at once, each registered as a worker of its
//! own and all sharing one loaded model (one scorer thread): while one slot's shard is on the
//! model, another reads and tokenizes. Scoring runs in its own task so the heartbeats that
//! keep the lease alive never wait behind it. A coordinator that stops answering is retried
//! with exponential backoff for `give_up_after`, then the worker exits with a clear message;
//! a coordinator that restarted (it no longer knows the worker id) is registered with again.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apscore_core::job_definition::JobDefinition;
use apscore_core::outputs::SUMMARY_FILE;
use apscore_core::shard::Shard;
use apscore_core::storage::{InputFile, Location};
use apscore_proto::pb::coordinator_client::CoordinatorClient;
use apscore_proto::security::{ClientSecurity, SendToken, tls_failure};
use apscore_proto::{pb, result_to_pb};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::job_model::{LoadError, LoadedModel, Placement, load_job_model};
use crate::retry::{
    Backoff, CallError, closed_without_client_certificate, plaintext_to_tls, with_causes,
};
use crate::shard_scoring::{ShardContext, ShardError, ShardProgress, score_shard};

/// How this worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The coordinator's URL, e.g. `http://10.0.0.5:50051`.
    pub coordinator: String,
    /// How people see this worker: `host:pid`.
    pub name: String,
    /// Shards scored at once, each under a registration of its own.
    pub slots: usize,
    pub placement: Placement,
    /// The protocol version announced (this build's, except to test refusal).
    pub protocol_version: u32,
    pub backoff: Backoff,
    /// TLS and the token presented to the coordinator.
    pub security: ClientSecurity,
    /// Log each shard at info level (a standalone worker); at debug level otherwise (the
    /// workers of `apscore run`, whose coordinator shows the progress).
    pub log_shards: bool,
}

/// The worker stopped without finishing its part of the job.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the coordinator at {url} refused this worker: {reason}")]
    Refused { url: String, reason: String },
    #[error(
        "lost the coordinator at {url}: no answer for {seconds:.0} s while trying to {action} \
         (last error: {last_error})"
    )]
    LostCoordinator {
        url: String,
        action: &'static str,
        seconds: f64,
        last_error: String,
    },
    #[error("the job failed at the coordinator:\n{0}")]
    JobFailed(String),
    /// Not a failure: the coordinator is gone because the job is complete.
    #[error("the job is complete")]
    JobOver,
    #[error("the coordinator sent a job this worker cannot read: {0}")]
    BadJob(String),
    #[error(transparent)]
    Model(#[from] LoadError),
    #[error("`{url}` is not a coordinator URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot set up TLS to {url}: {reason}")]
    TlsSetup { url: String, reason: String },
    #[error("a worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What a worker did.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerReport {
    pub shards_scored: u64,
}

/// Shared by a worker's slots.
struct Worker {
    options: WorkerOptions,
    channel: Channel,
    job: JobDefinition,
    model: Option<LoadedModel>,
    /// Input files opened so far, by index in the job.
    files: Mutex<HashMap<u32, InputFile>>,
    /// The job's output location: where attempts write, and where a lost coordinator's job
    /// may turn out to be complete.
    output: Location,
}

/// Runs a worker until the job ends (`Ok`), the coordinator refuses it or is lost, or
/// `stop` turns true (then each slot finishes the shard it holds first). `preloaded` is a
/// model this process loaded already (`apscore run`); otherwise the job's is loaded here.
pub async fn run_worker(
    options: WorkerOptions,
    preloaded: Option<LoadedModel>,
    stop: watch::Receiver<bool>,
) -> Result<WorkerReport, WorkerError> {
    crate::metrics::describe();
    let url = options.coordinator.clone();
    let bad_url = |reason: String| WorkerError::BadUrl {
        url: url.clone(),
        reason,
    };
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| bad_url(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        // A coordinator host that vanishes must not hang a call for the OS's TCP timeout.
        .timeout(Duration::from_secs(60))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let tls = options.security.tls().map_err(|e| WorkerError::TlsSetup {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| WorkerError::TlsSetup {
                url: url.clone(),
                // The transport error's text alone is "transport error"; its debug form
                // names the problem (e.g. a certificate of an unsupported version).
                reason: format!("{e:?}"),
            })?;
    }
    let channel = endpoint.connect_lazy();
    let client =
        CoordinatorClient::with_interceptor(channel.clone(), options.security.interceptor());
    let version = options.protocol_version;
    let answer = options
        .backoff
        .call(
            || {
                let mut client = client.clone();
                async move {
                    client
                        .get_job(pb::GetJobRequest {
                            protocol_version: version,
                            apscore_version: apscore_core::VERSION.into(),
                        })
                        .await
                }
            },
            // The job is unknown yet: nothing to look at.
            || async { false },
        )
        .await;
    let job = match answer {
        Ok(answer) => answer,
        Err(e) => return Err(first_call_error(&url, &options.security, e)),
    }
    .into_inner()
    .job
    .ok_or_else(|| WorkerError::BadJob("the answer holds no job".into()))?;
    let job = JobDefinition::try_from(job).map_err(|e| WorkerError::BadJob(e.to_string()))?;
    info!(job = %job.job_id, output = %job.output, files = job.files.len(), "joined the job");
    let model = match (&job.model, preloaded) {
        (None, _) => None,
        (Some(wanted), Some(loaded)) if loaded.job == *wanted => Some(loaded),
        (Some(wanted), _) => Some(load_job_model(wanted, &options.placement).await?),
    };
    let output = Location::parse(&job.output).map_err(|e| WorkerError::BadJob(e.to_string()))?;
    let worker = Arc::new(Worker {
        channel,
        job,
        model,
        files: Mutex::new(HashMap::new()),
        output,
        options,
    });
    let mut slots = Vec::new();
    for slot in 0..worker.options.slots.max(1) {
        let worker = Arc::clone(&worker);
        let stop = stop.clone();
        let span = info_span!("slot", slot);
        slots.push(tokio::spawn(
            async move { worker.run_slot(slot, stop).await }.instrument(span),
        ));
    }
    let mut report = WorkerReport::default();
    let mut first_error = None;
    for slot in slots {
        match slot.await? {
            Ok(scored) => report.shards_scored += scored,
            Err(WorkerError::JobOver) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// The first call's failure, as [`call_error`] tells it, except that a worker without a client
/// certificate whose every TLS connection was closed under it is refused with advice.
fn first_call_error(url: &str, security: &ClientSecurity, error: CallError) -> WorkerError {
    if let CallError::GaveUp { last, .. } = &error
        && let Some(reason) = closed_without_client_certificate(
            last,
            url.starts_with("https://"),
            security.cert.is_some(),
        )
    {
        return WorkerError::Refused {
            url: url.to_string(),
            reason,
        };
    }
    call_error(url, "fetch the job", error)
}

fn call_error(url: &str, action: &'static str, error: CallError) -> WorkerError {
    match error {
        CallError::JobOver => WorkerError::JobOver,
        CallError::Refused(status) => WorkerError::Refused {
            url: url.to_string(),
            reason: tls_failure(&status)
                .or_else(|| plaintext_to_tls(&status))
                .unwrap_or_else(|| status.message().to_string()),
        },
        CallError::GaveUp { seconds, last } => WorkerError::LostCoordinator {
            url: url.to_string(),
            action,
            seconds,
            last_error: with_causes(&last),
        },
    }
}

/// Sends a heartbeat for `lease` every `interval` until aborted; says on `lost` when the
/// coordinator answers that the lease is no longer this worker's. A missed heartbeat is not
/// fatal: the lease outlives several, and a coordinator that is back takes the finished shard
/// whatever its lease.
async fn heartbeats(
    mut client: CoordinatorClient<InterceptedService<Channel, SendToken>>,
    worker_id: String,
    lease_id: u64,
    interval: Duration,
    progress: Arc<ShardProgress>,
    lost: watch::Sender<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let request = pb::HeartbeatRequest {
            worker_id: worker_id.clone(),
            lease_id,
            rows_done: progress.rows.load(Ordering::Relaxed),
            tokens_done: progress.tokens.load(Ordering::Relaxed),
        };
        match client.heartbeat(request).await {
            Ok(answer) if !answer.get_ref().keep_lease => {
                let _ = lost.send(true);
                return;
            }
            Ok(_) => {}
            Err(status) => warn!("heartbeat not delivered: {}", status.message()),
        }
    }
}

/// How a leased shard ended.
enum ShardOutcome {
    Scored(apscore_core::shard::ShardResult),
    Failed(ShardError),
    /// The lease went to another worker (this one was presumed dead).
    LeaseLost,
}

impl Worker {
    fn client(&self) -> CoordinatorClient<InterceptedService<Channel, SendToken>> {
        CoordinatorClient::with_interceptor(
            self.channel.clone(),
            self.options.security.interceptor(),
        )
    }

    /// Calls the coordinator with backoff; while it does not answer, a summary at the job's
    /// output means the job completed without this worker (the coordinator finished and left).
    async fn call<T, F, Fut>(&self, op: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let output = &self.output;
        self.options
            .backoff
            .call(op, || async move {
                matches!(output.get_if_exists(SUMMARY_FILE).await, Ok(Some(_)))
            })
            .await
    }

    fn url(&self) -> &str {
        &self.options.coordinator
    }

    /// Registers this slot; returns its worker id and the facts for result files.
    async fn register(&self, slot: usize) -> Result<(String, Duration, ShardContext), WorkerError> {
        let request = pb::RegisterRequest {
            protocol_version: self.options.protocol_version,
            job_id: self.job.job_id.clone(),
            name: format!("{}/{slot}", self.options.name),
            device: self.options.placement.device.to_string(),
            dtype: self
                .model
                .as_ref()
                .map(|m| m.dtype.name().to_string())
                .unwrap_or_default(),
            model_identity: self
                .model
                .as_ref()
                .map(|m| m.identity.clone())
                .unwrap_or_default(),
        };
        let answer = self
            .call(|| {
                let mut client = self.client();
                let request = request.clone();
                async move { client.register(request).await }
            })
            .await
            .map_err(|e| call_error(self.url(), "register", e))?
            .into_inner();
        let context = ShardContext {
            layout: self.job.layout.clone(),
            output: self.output.clone(),
            key_values: answer
                .key_values
                .into_iter()
                .map(|kv| (kv.key, kv.value))
                .collect(),
            model: self.model.as_ref().map(|m| m.scoring.clone()),
            scores_with_input: self.job.scores_with_input,
        };
        debug!(worker = %answer.worker_id, "registered");
        Ok((
            answer.worker_id,
            Duration::from_millis(answer.heartbeat_interval_ms.max(10)),
            context,
        ))
    }

    /// One slot: lease, score, report, until the job ends or `stop`.
    async fn run_slot(
        self: Arc<Self>,
        slot: usize,
        mut stop: watch::Receiver<bool>,
    ) -> Result<u64, WorkerError> {
        use pb::lease_response::Outcome;
        let (mut id, mut heartbeat, mut context) = self.register(slot).await?;
        let mut context_shared = Arc::new(context.clone());
        let mut scored = 0u64;
        loop {
            if *stop.borrow() {
                debug!("stopping as asked; no shard held");
                return Ok(scored);
            }
            let request = pb::LeaseRequest {
                worker_id: id.clone(),
            };
            let answer = self
                .call(|| {
                    let mut client = self.client();
                    let request = request.clone();
                    async move { client.lease(request).await }
                })
                .await;
            let outcome = match answer {
                Ok(answer) => answer.into_inner().outcome,
                Err(CallError::Refused(status)) if status.code() == Code::NotFound => {
                    info!(
                        "the coordinator does not know this worker (it restarted): registering again"
                    );
                    (id, heartbeat, context) = self.register(slot).await?;
                    context_shared = Arc::new(context.clone());
                    continue;
                }
                Err(e) => return Err(call_error(self.url(), "lease a shard", e)),
            };
            match outcome {
                Some(Outcome::Shard(lease)) => {
                    let Some(shard) = lease.shard.as_ref().map(Shard::from) else {
                        return Err(WorkerError::BadJob("a lease without a shard".into()));
                    };
                    // Heartbeats run for the whole lease, reporting included: a completion
                    // slow to be acknowledged must not let the lease expire.
                    let progress = Arc::new(ShardProgress::default());
                    let (lost_tx, lost) = watch::channel(false);
                    let beats = tokio::spawn(heartbeats(
                        self.client(),
                        id.clone(),
                        lease.lease_id,
                        heartbeat,
                        Arc::clone(&progress),
                        lost_tx,
                    ));
                    let outcome = self
                        .score_leased(&lease, &shard, &context_shared, &progress, lost)
                        .instrument(info_span!(
                            "shard",
                            index = shard.index,
                            attempt = lease.attempt
                        ))
                        .await;
                    let reported = match outcome {
                        Ok(ShardOutcome::Scored(result)) => {
                            scored += 1;
                            self.report_done(&id, lease.lease_id, &shard, result).await
                        }
                        Ok(ShardOutcome::Failed(error)) => {
                            self.report_failure(&id, lease.lease_id, &shard, error)
                                .await
                        }
                        Ok(ShardOutcome::LeaseLost) => {
                            warn!(
                                shard = shard.index,
                                "lease lost (the coordinator gave the shard to another worker): \
                                 dropped it"
                            );
                            Ok(())
                        }
                        Err(e) => Err(e),
                    };
                    beats.abort();
                    // The coordinator moved the files of an accepted attempt away; whatever is
                    // left (a refused, failed or abandoned attempt) goes.
                    self.remove_attempt(&shard, lease.lease_id).await;
                    reported?;
                }
                Some(Outcome::WaitMs(ms)) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(ms)) => {}
                        _ = stop.changed() => {}
                    }
                }
                Some(Outcome::End(end)) if end.failed => {
                    return Err(WorkerError::JobFailed(end.message));
                }
                Some(Outcome::End(_)) => {
                    debug!(shards = scored, "the job is complete");
                    return Ok(scored);
                }
                None => return Err(WorkerError::BadJob("an empty lease answer".into())),
            }
        }
    }

    /// Removes what the attempt of `lease` left in its folder (best effort: the coordinator
    /// removes the whole work folder when the job completes).
    async fn remove_attempt(&self, shard: &Shard, lease: u64) {
        if let Err(e) = self.output.delete_all(&shard.attempt_dir(lease)).await {
            debug!(
                shard = shard.index,
                "could not remove the attempt's files: {e}"
            );
        }
    }

    fn input_file(&self, index: u32) -> Result<InputFile, ShardError> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = files.get(&index) {
            return Ok(file.clone());
        }
        let spec =
            self.job.files.get(index as usize).ok_or_else(|| {
                ShardError::BadShard(format!("the job has no input file {index}"))
            })?;
        let file = spec
            .open()
            .map_err(|e| ShardError::BadShard(e.to_string()))?;
        files.insert(index, file.clone());
        Ok(file)
    }

    /// Scores a leased shard in its own task, until it is done or `lost` says the lease went
    /// to another worker.
    async fn score_leased(
        &self,
        lease: &pb::ShardLease,
        shard: &Shard,
        context: &Arc<ShardContext>,
        progress: &Arc<ShardProgress>,
        mut lost: watch::Receiver<bool>,
    ) -> Result<ShardOutcome, WorkerError> {
        if self.options.log_shards {
            info!(
                shard = shard.index,
                rows = shard.rows,
                attempt = lease.attempt,
                "scoring shard"
            );
        } else {
            debug!(
                shard = shard.index,
                rows = shard.rows,
                attempt = lease.attempt,
                "scoring shard"
            );
        }
        let file = match self.input_file(shard.file_index) {
            Ok(file) => file,
            Err(e) => return Ok(ShardOutcome::Failed(e)),
        };
        let mut scoring = {
            let (context, shard, progress) =
                (Arc::clone(context), shard.clone(), Arc::clone(progress));
            let lease = lease.lease_id;
            tokio::spawn(
                async move { score_shard(&context, &file, &shard, lease, &progress).await },
            )
        };
        tokio::select! {
            joined = &mut scoring => Ok(match joined? {
                Ok(result) => ShardOutcome::Scored(result),
                Err(e) => ShardOutcome::Failed(e),
            }),
            _ = lost.wait_for(|lost| *lost) => {
                scoring.abort();
                Ok(ShardOutcome::LeaseLost)
            }
        }
    }

    async fn report_done(
        &self,
        id: &str,
        lease: u64,
        shard: &Shard,
        result: apscore_core::shard::ShardResult,
    ) -> Result<(), WorkerError> {
        let request = pb::CompleteRequest {
            worker_id: id.to_string(),
            lease_id: lease,
            job_id: self.job.job_id.clone(),
            result: Some(result_to_pb(&result, shard.attempt_scores_part(lease))),
        };
        let answer = self
            .call(|| {
                let mut client = self.client();
                let request = request.clone();
                async move { client.complete(request).await }
            })
            .await
            .map_err(|e| call_error(self.url(), "report a finished shard", e))?;
        let recorded = answer.get_ref().recorded;
        crate::metrics::shard_scored(&result);
        if self.options.log_shards {
            info!(
                shard = shard.index,
                scored = result.scored,
                rejected = result.rejected,
                recorded,
                "shard scored"
            );
        } else {
            debug!(
                shard = shard.index,
                scored = result.scored,
                rejected = result.rejected,
                recorded,
                "shard scored"
            );
        }
        Ok(())
    }

    async fn report_failure(
        &self,
        id: &str,
        lease: u64,
        shard: &Shard,
        error: ShardError,
    ) -> Result<(), WorkerError> {
        let retryable = error.is_retryable();
        crate::metrics::shard_failed();
        error!(shard = shard.index, retryable, "shard failed: {error}");
        let request = pb::FailRequest {
            worker_id: id.to_string(),
            lease_id: lease,
            retryable,
            reason: error.to_string(),
        };
        self.call(|| {
            let mut client = self.client();
            let request = request.clone();
            async move { client.fail(request).await }
        })
        .await
        .map_err(|e| call_error(self.url(), "report a failed shard", e))?;
        Ok(())
    }
}
