//! The coordinator's gRPC service: what it answers workers and `apscore status`.
//!
//! Handlers are short: they read or change the [`State`] under one lock (never held across
//! an await) and persist what must survive a restart before they answer. Shard states live
//! in the [`ShardTable`]; this module adds the workers, the job's phase and the protocol.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use apscore_core::job_definition::JobDefinition;
use apscore_core::shard::{Shard, ShardResult};
use apscore_core::storage::Location;
use apscore_proto::pb::coordinator_server::{Coordinator, CoordinatorServer};
use apscore_proto::security::RequireToken;
use apscore_proto::{PROTOCOL_VERSION, pb};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use crate::attempts;
use crate::manifest::{self, Manifest};
use crate::shard_table::{FailOutcome, ShardTable};
use crate::summary::KeyFacts;

/// How long an idle worker waits before asking for a shard again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The workers' connections accepted on `listener`, with `TCP_NODELAY` set: without it, the
/// last small frame of every answer (a lease, an acknowledged completion) waits for the
/// worker's delayed ACK, about 40 ms, and a worker sits idle between shards.
pub fn worker_connections(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Where the job is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Shards are being scored.
    Scoring,
    /// Every shard is done; ranking and writing the outputs.
    Finishing,
    Complete,
    /// The job failed: the report.
    Failed(String),
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Scoring => "scoring",
            Phase::Finishing => "finishing",
            Phase::Complete => "complete",
            Phase::Failed(_) => "failed",
        }
    }
}

/// A registered worker.
#[derive(Debug, Clone)]
pub struct WorkerEntry {
    pub name: String,
    pub device: String,
    pub last_seen: Instant,
    pub shards_done: u32,
    /// It was told the job ended.
    pub told_end: bool,
}

/// Everything the handlers share.
pub struct State {
    pub job: JobDefinition,
    pub table: ShardTable,
    pub workers: BTreeMap<String, WorkerEntry>,
    /// The facts stamped into result files; `facts.model` is the model identity.
    pub facts: KeyFacts,
    /// The model identity every worker must report; `None` until the first worker registers.
    pub model_identity: Option<String>,
    pub manifest: Manifest,
    pub phase: Phase,
    pub heartbeat_interval: Duration,
    next_worker: u64,
    /// Distinguishes this coordinator run's worker ids from an earlier run's.
    run_nonce: String,
    started: Instant,
    /// Rows done when this coordinator started (resumed from the manifest).
    rows_at_start: u64,
    /// Shards done when this coordinator started.
    pub resumed: u64,
    /// Shards whose completion is being taken (files moved, record written): a second
    /// completion of the same shard meanwhile is a duplicate.
    pub completing: std::collections::BTreeSet<u32>,
    rows_total: u64,
}

/// The service's state and the signal that it changed.
pub struct Shared {
    state: Mutex<State>,
    /// Woken when a shard settles or the phase changes.
    pub changed: Notify,
    pub output: Location,
    pub shards: Arc<Vec<Shard>>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job: JobDefinition,
        table: ShardTable,
        facts: KeyFacts,
        manifest: Manifest,
        heartbeat_interval: Duration,
        output: Location,
        shards: Arc<Vec<Shard>>,
        rows_total: u64,
    ) -> Arc<Self> {
        let rows_at_start = table.progress().0;
        let resumed = u64::from(table.counts().done);
        let model_identity = manifest.model_identity.clone();
        Arc::new(Shared {
            state: Mutex::new(State {
                job,
                table,
                workers: BTreeMap::new(),
                facts,
                model_identity,
                manifest,
                phase: Phase::Scoring,
                heartbeat_interval,
                next_worker: 1,
                run_nonce: format!("{:06x}", run_nonce() & 0xff_ffff),
                started: Instant::now(),
                rows_at_start,
                resumed,
                completing: Default::default(),
                rows_total,
            }),
            changed: Notify::new(),
            output,
            shards,
        })
    }

    /// The state, locked. Handlers never hold it across an await.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_phase(&self, phase: Phase) {
        self.lock().phase = phase;
        self.changed.notify_waiters();
    }

    /// The gRPC service over this state, every request checked by `auth` first.
    pub fn service(
        self: &Arc<Self>,
        auth: RequireToken,
    ) -> InterceptedService<CoordinatorServer<Service>, RequireToken> {
        CoordinatorServer::with_interceptor(
            Service {
                shared: Arc::clone(self),
            },
            auth,
        )
    }
}

/// A number unlikely to repeat across coordinator runs (clock and process id).
pub fn run_nonce() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 20)
}

/// The gRPC service.
pub struct Service {
    shared: Arc<Shared>,
}

/// `answer()`'s first answer: asked now, then again each time `changed` is woken, until
/// `deadline` (then `None`). A wake that comes between a question and the wait is not lost.
async fn held_until<T>(
    changed: &Notify,
    deadline: Instant,
    mut answer: impl FnMut() -> Result<Option<T>, Status>,
) -> Result<Option<T>, Status> {
    loop {
        let woken = changed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(answer) = answer()? {
            return Ok(Some(answer));
        }
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            return Ok(None);
        }
    }
}

impl Service {
    /// What a lease request from `id` gets now: a shard, the job's end, or `None` (nothing
    /// to lease yet).
    fn lease_now(&self, id: &str) -> Result<Option<pb::lease_response::Outcome>, Status> {
        use pb::lease_response::Outcome;
        let mut state = self.shared.lock();
        let phase = state.phase.clone();
        let worker = state.heard_from(id)?;
        Ok(match phase {
            Phase::Complete => {
                worker.told_end = true;
                Some(Outcome::End(pb::JobEnd {
                    failed: false,
                    message: "the job is complete".into(),
                }))
            }
            Phase::Failed(report) => {
                worker.told_end = true;
                Some(Outcome::End(pb::JobEnd {
                    failed: true,
                    message: report,
                }))
            }
            Phase::Finishing => None,
            Phase::Scoring => state.table.lease(id, Instant::now()).map(|granted| {
                Outcome::Shard(pb::ShardLease {
                    lease_id: granted.lease,
                    shard: Some((&self.shared.shards[granted.shard as usize]).into()),
                    attempt: granted.attempt,
                })
            }),
        })
    }
}

fn check_version(version: u32) -> Result<(), Status> {
    if version == PROTOCOL_VERSION {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "this coordinator speaks protocol version {PROTOCOL_VERSION} (apscore {}), the worker \
         version {version}: run the same apscore release on the coordinator and its workers",
        apscore_core::VERSION
    )))
}

fn unknown_worker(id: &str) -> Status {
    Status::not_found(format!(
        "unknown worker `{id}` (the coordinator restarted?): register again"
    ))
}

impl State {
    /// The worker `id`, marked as heard from now.
    fn heard_from(&mut self, id: &str) -> Result<&mut WorkerEntry, Status> {
        let entry = self.workers.get_mut(id).ok_or_else(|| unknown_worker(id))?;
        entry.last_seen = Instant::now();
        Ok(entry)
    }

    /// Input rows of the job.
    pub fn rows_total(&self) -> u64 {
        self.rows_total
    }

    /// What `apscore status` shows.
    fn status(&self) -> pb::StatusResponse {
        let counts = self.table.counts();
        let (rows_done, _) = self.table.progress();
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let rate = rows_done.saturating_sub(self.rows_at_start) as f64 / elapsed;
        let remaining = self.rows_total.saturating_sub(rows_done) as f64;
        let now = Instant::now();
        pb::StatusResponse {
            job_id: self.job.job_id.clone(),
            output: self.job.output.clone(),
            phase: self.phase.name().into(),
            shards_total: self.table.len() as u32,
            shards_pending: counts.pending,
            shards_leased: counts.leased,
            shards_done: counts.done,
            shards_failed: counts.failed,
            rows_total: self.rows_total,
            rows_done,
            rows_per_second: rate,
            eta_seconds: if rate > 0.0 { remaining / rate } else { -1.0 },
            workers: self
                .workers
                .iter()
                .map(|(id, w)| pb::WorkerStatus {
                    worker_id: id.clone(),
                    name: w.name.clone(),
                    device: w.device.clone(),
                    shard: self.table.held_by(id),
                    shards_done: w.shards_done,
                    seconds_since_heard: (now - w.last_seen).as_secs_f64(),
                })
                .collect(),
            lease_expiries: self.table.expiries,
            retries: self.table.retries,
        }
    }
}

impl Service {
    /// Takes the completion of the attempt that held `lease`: its files moved to the shard's
    /// final places, then the shard recorded done in the manifest (before it is acknowledged:
    /// a finished shard survives a coordinator crash). `false` when the attempt's files are
    /// not there: the shard stays leased, and goes to another worker when the lease expires.
    async fn accept(
        &self,
        worker: &str,
        lease: u64,
        mut result: ShardResult,
    ) -> Result<bool, Status> {
        let output = &self.shared.output;
        let shard = &self.shared.shards[result.index as usize];
        let moved = attempts::accept(output, shard, lease)
            .await
            .map_err(|e| Status::unavailable(format!("cannot take the shard's files: {e}")))?;
        if !moved {
            warn!(shard = result.index, %worker, "a completion without its files: not taken");
            return Ok(false);
        }
        result.attempt = Some(lease);
        manifest::record_done(output, &result)
            .await
            .map_err(|e| Status::unavailable(format!("cannot record the shard: {e}")))?;
        let mut state = self.shared.lock();
        let recorded = state.table.complete(result);
        if recorded && let Some(worker) = state.workers.get_mut(worker) {
            worker.shards_done += 1;
        }
        Ok(recorded)
    }
}

/// The shard a lease id names (its low 32 bits).
fn shard_of(lease: u64) -> u32 {
    (lease & u64::from(u32::MAX)) as u32
}

#[tonic::async_trait]
impl Coordinator for Service {
    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::GetJobResponse>, Status> {
        check_version(request.get_ref().protocol_version)?;
        let state = self.shared.lock();
        Ok(Response::new(pb::GetJobResponse {
            job: Some((&state.job).into()),
        }))
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        check_version(r.protocol_version)?;
        let (response, manifest_to_write) = {
            let mut state = self.shared.lock();
            if r.job_id != state.job.job_id {
                return Err(Status::failed_precondition(format!(
                    "the worker prepared job {} but this coordinator runs job {}: fetch the \
                     job again",
                    r.job_id, state.job.job_id
                )));
            }
            let mut manifest_to_write = None;
            if let Some(model) = &state.job.model {
                if r.dtype != model.dtype.name() {
                    return Err(Status::failed_precondition(format!(
                        "worker {} computes in {} but this job computes in {}",
                        r.name, r.dtype, model.dtype
                    )));
                }
                match &state.model_identity {
                    Some(expected) if *expected != r.model_identity => {
                        return Err(Status::failed_precondition(format!(
                            "worker {} loaded the model {} but this job's workers score with {}: \
                             every worker must use the same weights",
                            r.name, r.model_identity, expected
                        )));
                    }
                    Some(_) => {}
                    None => {
                        info!(model = %r.model_identity, "model identity fixed by the first worker");
                        state.model_identity = Some(r.model_identity.clone());
                        state.facts.model = r.model_identity.clone();
                        state.manifest.model_identity = Some(r.model_identity.clone());
                        manifest_to_write = Some(state.manifest.clone());
                    }
                }
            } else if !r.model_identity.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "worker {} loaded a model, but this job ranks precomputed log-probs",
                    r.name
                )));
            }
            // Ids carry this coordinator run's nonce: a worker still holding an id from before a
            // restart is unknown here (NOT_FOUND) and registers again, instead of passing for
            // another worker.
            let id = format!("{}-w{}", state.run_nonce, state.next_worker);
            state.next_worker += 1;
            info!(worker = %id, name = %r.name, device = %r.device, "worker registered");
            state.workers.insert(
                id.clone(),
                WorkerEntry {
                    name: r.name,
                    device: r.device,
                    last_seen: Instant::now(),
                    shards_done: 0,
                    told_end: false,
                },
            );
            let response = pb::RegisterResponse {
                worker_id: id,
                heartbeat_interval_ms: state.heartbeat_interval.as_millis() as u64,
                key_values: state
                    .facts
                    .key_values()
                    .into_iter()
                    .map(|(key, value)| pb::KeyValue { key, value })
                    .collect(),
            };
            (response, manifest_to_write)
        };
        if let Some(m) = manifest_to_write
            && let Err(e) = manifest::write(&self.shared.output, &m).await
        {
            // Not kept: the identity counts only once it is in the manifest, so that a
            // restarted coordinator holds every worker to the same weights.
            let mut state = self.shared.lock();
            state.model_identity = None;
            state.manifest.model_identity = None;
            state.workers.remove(&response.worker_id);
            return Err(Status::unavailable(format!(
                "cannot update the manifest: {e}"
            )));
        }
        Ok(Response::new(response))
    }

    /// An idle worker's request is held until there is something to answer (a shard freed by a
    /// failure or an expired lease, the job's end) or a poll interval has passed; the worker
    /// learns of either at once instead of at its next poll. A finished job's in-process
    /// workers, and the process with them, thus stop as soon as the outputs are written.
    async fn lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        use pb::lease_response::Outcome;
        let id = request.into_inner().worker_id;
        let deadline = Instant::now() + POLL_INTERVAL;
        let outcome = held_until(&self.shared.changed, deadline, || self.lease_now(&id))
            .await?
            // Already waited a poll interval here: the worker may ask again at once.
            .unwrap_or(Outcome::WaitMs(0));
        Ok(Response::new(pb::LeaseResponse {
            outcome: Some(outcome),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.shared.lock();
        state.heard_from(&r.worker_id)?;
        let keep_lease =
            state
                .table
                .heartbeat(r.lease_id, Instant::now(), r.rows_done, r.tokens_done);
        Ok(Response::new(pb::HeartbeatResponse { keep_lease }))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let r = request.into_inner();
        let result = ShardResult::try_from(
            r.result
                .ok_or_else(|| Status::invalid_argument("a completion without a result"))?,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        {
            let mut state = self.shared.lock();
            if r.job_id != state.job.job_id {
                return Err(Status::failed_precondition(format!(
                    "a result of job {} sent to job {}",
                    r.job_id, state.job.job_id
                )));
            }
            // A worker that registered with an earlier coordinator brings a finished shard:
            // the work is good; take it and let the worker register again afterwards.
            if let Some(worker) = state.workers.get_mut(&r.worker_id) {
                worker.last_seen = Instant::now();
            }
            if result.index as usize >= state.table.len() {
                return Err(Status::invalid_argument(format!(
                    "shard {} is not in this job",
                    result.index
                )));
            }
            // Done already, or another attempt's completion is being taken: the first wins.
            if state.table.is_done(result.index) || !state.completing.insert(result.index) {
                info!(shard = result.index, worker = %r.worker_id, "duplicate completion ignored");
                return Ok(Response::new(pb::CompleteResponse { recorded: false }));
            }
        }
        let accepted = self.accept(&r.worker_id, r.lease_id, result).await;
        self.shared.lock().completing.remove(&shard_of(r.lease_id));
        let recorded = accepted?;
        self.shared.changed.notify_waiters();
        Ok(Response::new(pb::CompleteResponse { recorded }))
    }

    async fn fail(
        &self,
        request: Request<pb::FailRequest>,
    ) -> Result<Response<pb::FailResponse>, Status> {
        let r = request.into_inner();
        let outcome = {
            let mut state = self.shared.lock();
            if let Some(worker) = state.workers.get_mut(&r.worker_id) {
                worker.last_seen = Instant::now();
            }
            state.table.fail(r.lease_id, r.retryable, r.reason.clone())
        };
        let shard = r.lease_id & u64::from(u32::MAX);
        match outcome {
            FailOutcome::Retried => {
                warn!(shard, worker = %r.worker_id, reason = %r.reason, "shard failed; it will be retried")
            }
            FailOutcome::Failed => {
                error!(shard, worker = %r.worker_id, reason = %r.reason, "shard failed for good")
            }
            FailOutcome::Stale => {}
        }
        self.shared.changed.notify_waiters();
        Ok(Response::new(pb::FailResponse {}))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        Ok(Response::new(self.shared.lock().status()))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_held_question_is_answered_when_the_state_changes() {
        let changed = Arc::new(Notify::new());
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let started = Instant::now();
        let held = tokio::spawn({
            let (changed, ready) = (Arc::clone(&changed), Arc::clone(&ready));
            async move {
                held_until(&changed, started + POLL_INTERVAL, || {
                    Ok(ready
                        .load(std::sync::atomic::Ordering::SeqCst)
                        .then_some("shard"))
                })
                .await
            }
        });
        // The question is asked and found nothing: the request is held.
        tokio::task::yield_now().await;
        assert!(!held.is_finished());
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        changed.notify_waiters();
        assert_eq!(held.await.unwrap().unwrap(), Some("shard"));
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "answered before the deadline"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_question_without_news_ends_at_the_deadline() {
        let changed = Notify::new();
        let started = Instant::now();
        let answer = held_until(&changed, started + POLL_INTERVAL, || Ok(None::<()>)).await;
        assert_eq!(answer.unwrap(), None);
        assert_eq!(started.elapsed(), POLL_INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_between_the_question_and_the_wait_is_not_lost() {
        let changed = Notify::new();
        let started = Instant::now();
        let mut asked = 0;
        let answer = held_until(&changed, started + POLL_INTERVAL, || {
            asked += 1;
            if asked == 1 {
                // The state changes right after it was read, before the wait starts.
                changed.notify_waiters();
                return Ok(None);
            }
            Ok(Some(asked))
        })
        .await;
        assert_eq!(answer.unwrap(), Some(2));
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn worker_connections_send_small_frames_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mut incoming = worker_connections(listener);
        let _worker = tokio::net::TcpStream::connect(address).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap(), "TCP_NODELAY is not set");
    }
}
