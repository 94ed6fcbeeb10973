//! A whole job at the coordinator, from input files to every output (`docs/outputs.md`).
//!
//! ```text
//!   resolve inputs ─▶ plan shards ─▶ resume or start the manifest ─▶ serve workers over gRPC
//!        until every shard is done ─▶ rejected_rows.parquet ─▶ merge shard statistics
//!        ─▶ finish (rank, ranking.parquet, selected/, report, summary.json, then _work/ goes)
//! ```
//!
//! Workers — other processes, or tasks of this one for `apscore run` — lease shards, score
//! them and report their statistics through [`crate::service`]. The job's state is the
//! manifest at the output location ([`crate::manifest`]): a coordinator restarted with the
//! same job resumes it without scoring a finished shard again. See `docs/architecture.md`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apscore_core::job_definition::{JobDefinition, JobFile, ModelJob};
use apscore_core::layout::LayoutOptions;
use apscore_core::memory::log_memory;
use apscore_core::outputs::{
    NEXT_DIR, PLOTS_DIR, RANKING_FILE, REJECTED_FILE, REPORT_FILE, SELECTED_DIR, SUMMARY_FILE,
};
use apscore_core::stats::MarginStats;
use apscore_core::storage::{Location, output_conflict, resolve_inputs};
use apscore_proto::security::ServerSecurity;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tracing::{Instrument, error, info, info_span, warn};

use crate::attempts;
use crate::earlier_run::{clear_earlier_run, replace_with_next};
use crate::error::JobError;
use crate::finish::{FinishParams, finish};
use crate::manifest::{self, Manifest};
use crate::output_lock::OutputLock;
use crate::plan::{Plan, plan_job};
use crate::ranking::RankingParams;
use crate::rejected_rows::write_rejected;
use crate::reuse::{
    self, ReuseFrom, ReusePlan, Reused, SCORES_COLUMNS_VERSION, ScoringSetup, plan_reuse,
};
use crate::scored::{Scored, ScoredPart};
use crate::selected::SelectedWriting;
use crate::service::{Phase, Shared, worker_connections};
use crate::shard_table::ShardTable;
use crate::summary::{Counts, KeyFacts, ScoringFigures, ShardFigures, Summary, Timings};

/// How long the gRPC server may take to close its connections once the job has ended.
const SERVER_STOP_GRACE: Duration = Duration::from_secs(5);

/// Shards copied from an earlier job at once.
const REUSE_CONCURRENCY: usize = 4;

/// Finished shards checked at once when a job resumes.
const SETTLE_CONCURRENCY: usize = 32;

/// Everything that defines a ranking job.
#[derive(Debug, Clone)]
pub struct RankJobSpec {
    /// Input files, directories/prefixes or globs.
    pub inputs: Vec<String>,
    /// Output location (local path or object-store URL).
    pub output: String,
    pub layout: LayoutOptions,
    pub ranking: RankingParams,
    /// Target rows per shard.
    pub shard_rows: u64,
    /// Replace the outputs of a finished job, or of another unfinished job, at `output`.
    pub overwrite: bool,
    /// How `selected/` is written.
    pub selected: SelectedWriting,
    /// The model that computes log-probs; `None` when the input carries them (`rank`).
    pub model: Option<ModelJob>,
    /// The model's identity when this process loaded it already (`apscore run`); else the
    /// first worker to register reports it.
    pub model_identity: Option<String>,
    pub leases: LeaseSettings,
    /// Reuse the scores of an earlier finished job for the input files that did not change.
    pub reuse: Option<ReuseFrom>,
    /// `scores/` carries the input's columns too (else the row keys and computed columns).
    pub scores_with_input: bool,
}

/// How shards are leased to workers.
#[derive(Debug, Clone, Copy)]
pub struct LeaseSettings {
    /// A lease without a heartbeat for this long expires; the shard goes to another worker.
    pub timeout: Duration,
    /// Tries per shard before the job fails.
    pub max_attempts: u32,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings {
            timeout: Duration::from_secs(60),
            max_attempts: 4,
        }
    }
}

impl LeaseSettings {
    /// How often a worker holding a lease sends a heartbeat: a quarter of the timeout, at
    /// most every 2 s (progress shows as it moves), at least every 50 ms.
    pub fn heartbeat_interval(&self) -> Duration {
        (self.timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(2))
    }
}

/// How a job ended well.
#[derive(Debug)]
pub struct Finished {
    pub summary: Summary,
    /// The output held this very job, finished: nothing was done or changed.
    pub already_complete: bool,
}

/// Runs a ranking job as its coordinator: plans it, serves its shards to workers on
/// `listener` until every shard is scored, then ranks and writes the outputs; returns the
/// summary. Workers connect on their own (`apscore worker`, or `apscore run`'s tasks).
///
/// A job whose output already holds it, finished, is complete: nothing is done or changed
/// (scheduled runs rerun freely). A finished job with other parameters is refused unless
/// `overwrite`; an unfinished one of the same job resumes.
pub async fn run_rank_job(
    spec: RankJobSpec,
    listener: TcpListener,
    security: ServerSecurity,
) -> Result<Finished, JobError> {
    let started = Instant::now();
    let output = Location::parse(&spec.output)?;
    let span = info_span!("job", output = %output.display());
    async move {
        output.check_folder()?;
        for input in &spec.inputs {
            if let Some(reason) = output_conflict(input, &output)? {
                return Err(JobError::OutputConflict { reason });
            }
        }
        let files = resolve_inputs(&spec.inputs).await?;
        let mut layout_options = spec.layout.clone();
        layout_options.require_logps = spec.model.is_none();
        layout_options.require_text = spec.model.is_some();
        layout_options.reward_model = spec
            .model
            .as_ref()
            .is_some_and(|m| m.reward_model.is_some());
        let plan = plan_job(files, &layout_options, spec.shard_rows).await?;
        info!(
            files = plan.files.len(),
            rows = plan.input_rows,
            shards = plan.shards.len(),
            "planned: {}",
            plan.layout.describe()
        );
        warn_replaced_columns(&plan);
        log_memory("planned");
        let definition = JobDefinition {
            job_id: String::new(),
            output: output.display().into(),
            files: plan
                .files
                .iter()
                .map(|f| JobFile {
                    url: f.file.display.clone(),
                    size: f.file.size,
                })
                .collect(),
            layout: plan.layout.clone(),
            model: spec.model.clone(),
            scores_with_input: spec.scores_with_input,
        };
        let definition = JobDefinition {
            job_id: job_id(&definition, &plan, spec.shard_rows),
            ..definition
        };
        let incremental = spec.reuse == Some(ReuseFrom::Output) && !spec.overwrite;
        let next = output.join(NEXT_DIR);
        if let Some(summary) = finished_job(&output, &definition.job_id, &spec, incremental).await?
        {
            info!(job = %definition.job_id, "already complete: {} holds this job, finished; nothing to do", output.display());
            return Ok(Finished {
                summary,
                already_complete: true,
            });
        }
        // One job per output at a time: taken before anything there is touched.
        let command = if spec.model.is_some() { "run" } else { "rank" };
        let lock = OutputLock::acquire(&output, command).await?;
        let result = async {
            // An incremental run builds the next job beside the finished one (which it reads
            // its reused scores from) and puts it in its place only once complete.
            let beside = incremental && output.exists(SUMMARY_FILE).await?;
            let place = Place {
                output: output.clone(),
                job: if beside { next.clone() } else { output.clone() },
            };
            if beside && let Some(summary) = finished_job(&next, &definition.job_id, &spec, false).await? {
                info!("the next job was complete but not yet in place: putting it there");
                replace_with_next(&output).await?;
                return Ok(Finished { summary, already_complete: false });
            }
            let reuse = match &spec.reuse {
                _ if spec.overwrite => None,
                Some(ReuseFrom::Output) if beside => Some(output.clone()),
                Some(ReuseFrom::Location(from)) => Some(Location::parse(from)?),
                _ => None,
            };
            let reuse = match reuse {
                Some(from) => plan_reuse(&from, &plan, &scoring_setup(&spec)).await?,
                None => None,
            };
            let definition = JobDefinition {
                output: place.job.display().into(),
                ..definition
            };
            let finished = serve_and_finish(
                &spec,
                &place,
                &plan,
                definition,
                (listener, security),
                started,
                &lock,
                reuse,
            )
            .await?;
            if beside {
                replace_with_next(&output).await?;
            }
            Ok(finished)
        }
        .await;
        lock.release().await;
        result
    }
    .instrument(span)
    .await
}

/// Where a job's outputs go.
struct Place {
    /// The output location the user named: what the outputs say they are.
    output: Location,
    /// Where this job writes them now: `output`, or `output/_next` for an incremental run
    /// beside a finished job.
    job: Location,
}

/// The job once its output is locked: resume or start it, fill what an earlier job's scores
/// can fill, serve the other shards until each is done or failed, then finish it.
#[allow(clippy::too_many_arguments)]
async fn serve_and_finish(
    spec: &RankJobSpec,
    place: &Place,
    plan: &Plan,
    definition: JobDefinition,
    (listener, security): (TcpListener, ServerSecurity),
    started: Instant,
    lock: &OutputLock,
    reuse: Option<ReusePlan>,
) -> Result<Finished, JobError> {
    let output = &place.job;
    // Only now that the inputs are known to be good is the output touched. A stale next job
    // of other inputs (an incremental run cut short before they changed again) is dropped.
    let discard_other = place.job.display() != place.output.display();
    let (mut table, manifest) =
        resume_or_start(output, &definition, plan, spec, discard_other).await?;
    let reused_shards: BTreeSet<u32> = reuse
        .iter()
        .flat_map(|r| r.shards.keys().copied())
        .filter(|&shard| !table.is_done(shard))
        .collect();
    table.withhold(&reused_shards);
    let plan_time = started.elapsed();

    let facts = KeyFacts {
        apscore_version: apscore_core::VERSION.into(),
        command: if spec.model.is_some() { "run" } else { "rank" }.into(),
        job_id: definition.job_id.clone(),
        inputs: plan.sources(),
        input_columns: plan.input_columns.clone(),
        output: place.output.display().into(),
        ranking: spec.ranking,
        implicit_margin: spec.ranking.implicit.column().into(),
        model: match (&spec.model, &manifest.model_identity) {
            (Some(_), Some(identity)) => identity.clone(),
            (Some(m), None) => m.source.clone(),
            (None, _) => PRECOMPUTED.into(),
        },
        tokenization_profile: spec.model.as_ref().map(|m| m.profile),
        layout: plan.layout.clone(),
        counts: Counts {
            input_files: plan.files.len() as u64,
            shards: plan.shards.len() as u64,
            input_rows: plan.input_rows,
            ..Counts::default()
        },
        statistics: BTreeMap::new(),
        scoring_setup: Some(scoring_setup(spec)),
    };
    let key_values = facts.key_values();

    // Serve the shards until each is done or failed.
    let score_started = Instant::now();
    let cpu_at_start = apscore_core::memory::cpu_seconds();
    let shared = Shared::new(
        definition,
        table,
        facts,
        manifest,
        spec.leases.heartbeat_interval(),
        output.clone(),
        Arc::new(plan.shards.clone()),
        plan.input_rows,
    );
    let address = listener.local_addr().ok();
    let (stop_serving, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = security.tls()? {
        builder = builder.tls_config(tls)?;
    }
    let server = tokio::spawn(
        builder
            .add_service(shared.service(security.interceptor()))
            .serve_with_incoming_shutdown(worker_connections(listener), async {
                let _ = stopped.await;
            }),
    );
    if let Some(address) = address {
        info!(%address, job = %shared.lock().job.job_id, "serving shards to workers");
    }
    // The earlier job's scores fill their shards once this job's model is known to be the
    // same: now for `run` and `rank`, else when the first worker reports it.
    let known_identity = match &spec.model {
        None => Some(PRECOMPUTED.to_string()),
        Some(_) => spec.model_identity.clone(),
    };
    let reused_from = reuse.as_ref().map(|r| r.reused.from_job.clone());
    let reuse_task = reuse.map(|reuse| {
        tokio::spawn(fill_reused(
            Arc::clone(&shared),
            reuse,
            reused_shards,
            known_identity,
            key_values,
        ))
    });
    let outcome = score_all(&shared, plan, spec.leases, lock).await;
    // Every shard is done (or the job failed): whatever the copying task has left, it is not
    // needed. What it copied is told by the shards' results, not by the task, which may not
    // have returned yet.
    if let Some(task) = reuse_task {
        task.abort();
    }
    let score_time = score_started.elapsed();
    let scoring_cpu = cpu_at_start
        .zip(apscore_core::memory::cpu_seconds())
        .map(|(start, end)| end - start);
    let result = match outcome {
        Err(report) => {
            shared.set_phase(Phase::Failed(report.to_string()));
            Err(report)
        }
        Ok(()) => {
            shared.set_phase(Phase::Finishing);
            let times = PhaseTimes {
                started,
                plan: plan_time,
                score: score_time,
                scoring_cpu,
            };
            let finished = match lock.check() {
                Ok(()) => finish_job(&shared, output, plan, spec, times, reused_from).await,
                Err(lost) => Err(lost.into()),
            };
            match &finished {
                Ok(_) => shared.set_phase(Phase::Complete),
                Err(e) => shared.set_phase(Phase::Failed(e.to_string())),
            }
            finished
        }
    };
    tell_workers_the_end(&shared, spec.leases).await;
    let _ = stop_serving.send(());
    // A graceful stop waits for open connections to close; a worker that is paused or hung
    // keeps its own open forever. The job is over: after a moment, stop regardless.
    let mut server = server;
    match tokio::time::timeout(SERVER_STOP_GRACE, &mut server).await {
        Ok(served) => served??,
        Err(_) => {
            warn!("a worker's connection stayed open after the job ended: closed");
            server.abort();
        }
    }
    result.map(|summary| Finished {
        summary,
        already_complete: false,
    })
}

/// Everything that changes a score: the inputs (paths, sizes and versions: a file rewritten in
/// place makes another job), the layout, the shard size, the model and how pairs are prepared
/// for it. The ranking parameters are not in it: they only change what is done with the
/// scores.
fn job_id(definition: &JobDefinition, plan: &Plan, shard_rows: u64) -> String {
    let versions: Vec<Option<&str>> = plan
        .files
        .iter()
        .map(|f| f.file.version.as_deref())
        .collect();
    let json = serde_json::to_vec(&(
        &definition.files,
        versions,
        &definition.layout,
        &definition.model,
        shard_rows,
        definition.scores_with_input,
        SCORES_COLUMNS_VERSION,
    ))
    .expect("a job definition serialises");
    let digest = Sha256::digest(&json);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn warn_replaced_columns(plan: &Plan) {
    let logp_inputs = plan.layout.needed_columns();
    let replaced: Vec<_> = plan
        .replaced_columns
        .iter()
        .filter(|c| !logp_inputs.contains(c))
        .collect();
    if !replaced.is_empty() {
        warn!(
            columns = ?replaced,
            "input columns named like score columns are replaced by apscore's values in scores/"
        );
    }
}

/// The shard table of this job: resumed from the manifest an earlier coordinator left for
/// the same job, or fresh (clearing what an earlier run left at the output: a finished job or,
/// with `overwrite`, anything).
async fn resume_or_start(
    output: &Location,
    definition: &JobDefinition,
    plan: &Plan,
    spec: &RankJobSpec,
    discard_other: bool,
) -> Result<(ShardTable, Manifest), JobError> {
    let mut table = ShardTable::new(
        plan.shards.len() as u32,
        spec.leases.timeout,
        spec.leases.max_attempts,
    );
    table.start_leases_at(crate::service::run_nonce() >> 16);
    let found = match spec.overwrite {
        // Starting over: whatever is there goes.
        true => None,
        false => manifest::read(output).await?,
    };
    if let Some(found) = found {
        if found.job_id == definition.job_id {
            let done = manifest::read_done(output).await?;
            info!(
                job = %found.job_id,
                done = done.len(),
                shards = plan.shards.len(),
                "resuming the job from its manifest; finished shards are kept"
            );
            let settled = futures::stream::iter(done.into_iter().map(|result| async move {
                let shard = &plan.shards[result.index as usize];
                let in_place = attempts::settle(output, shard, &result).await?;
                Ok::<_, JobError>((result, in_place))
            }))
            .buffer_unordered(SETTLE_CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
            for (result, in_place) in settled {
                if in_place {
                    table.restore_done(result);
                } else {
                    warn!(
                        shard = result.index,
                        "a finished shard's files are missing: it is scored again"
                    );
                }
            }
            return Ok((table, found));
        }
        if discard_other {
            info!(job = %found.job_id, "dropping an unfinished next job of other inputs");
        } else {
            return Err(JobError::OtherJob {
                output: output.display().into(),
                found: found.job_id,
                expected: definition.job_id.clone(),
            });
        }
    }
    clear_earlier_run(output).await?;
    let manifest = Manifest {
        job_id: definition.job_id.clone(),
        apscore_version: apscore_core::VERSION.into(),
        shards: plan.shards.len() as u32,
        model_identity: None,
    };
    manifest::write(output, &manifest).await?;
    Ok((table, manifest))
}

/// Waits until every shard is done, expiring the leases of silent workers and showing
/// progress; fails with the report when a shard ran out of attempts.
async fn score_all(
    shared: &Shared,
    plan: &Plan,
    leases: LeaseSettings,
    lock: &OutputLock,
) -> Result<(), JobError> {
    let mut progress = Progress::new(plan.input_rows, shared.lock().job.model.is_some());
    let mut expiry = tokio::time::interval((leases.timeout / 4).max(Duration::from_millis(20)));
    let mut display = tokio::time::interval(Duration::from_secs(1));
    crate::metrics::describe();
    let started = Instant::now();
    let (rows_at_start, tokens_at_start) = shared.lock().table.progress();
    let mut recorded: Option<Instant> = None;
    loop {
        let changed = shared.changed.notified();
        {
            let state = shared.lock();
            let (rows, tokens) = state.table.progress();
            let counts = state.table.counts();
            progress.update(rows, tokens, counts.done, plan.shards.len());
            // At most twice a second: a scrape comes every few seconds at best.
            if recorded.is_none_or(|at| at.elapsed() >= Duration::from_millis(500)) {
                let elapsed = started.elapsed().as_secs_f64();
                crate::metrics::record(&state, elapsed, rows_at_start, tokens_at_start);
                recorded = Some(Instant::now());
            }
            if state.table.is_settled() {
                break;
            }
        }
        lock.check()?;
        tokio::select! {
            _ = changed => {}
            _ = display.tick() => {}
            _ = expiry.tick() => {
                let expired = shared.lock().table.expire(tokio::time::Instant::now());
                if !expired.is_empty() {
                    // Back in the queue: a held lease request takes it now.
                    shared.changed.notify_waiters();
                }
                for e in expired {
                    warn!(shard = e.shard, worker = %e.worker, outcome = ?e.outcome,
                        "lease expired: no heartbeat from the worker");
                }
            }
        }
    }
    progress.finish();
    let failures = shared.lock().table.failures();
    if failures.is_empty() {
        return Ok(());
    }
    let report: Vec<String> = failures
        .iter()
        .map(|f| {
            let shard = &plan.shards[f.shard as usize];
            let file = &plan.files[shard.file_index as usize].file.display;
            let rows = shard.first_source_row..shard.first_source_row + shard.rows;
            format!(
                "  shard {} ({file}, row groups {:?}, rows {rows:?}):\n{}",
                f.shard,
                shard.row_groups,
                f.errors
                    .iter()
                    .map(|e| format!("    {e}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
        .collect();
    let error = JobError::ShardsFailed {
        failed: failures.len(),
        shards: plan.shards.len(),
        report: report.join("\n"),
    };
    error!("{error}");
    Err(error)
}

/// Merges the shards' results, writes `rejected_rows.parquet` and finishes the job.
/// When the job started and what its phases took.
struct PhaseTimes {
    started: Instant,
    plan: Duration,
    score: Duration,
    /// CPU seconds of this process while shards were scored.
    scoring_cpu: Option<f64>,
}

async fn finish_job(
    shared: &Shared,
    output: &Location,
    plan: &Plan,
    spec: &RankJobSpec,
    times: PhaseTimes,
    reused_from: Option<String>,
) -> Result<Summary, JobError> {
    let score_time = times.score;
    let (results, facts, shard_figures) = {
        let state = shared.lock();
        let results: Vec<_> = state.table.results().cloned().collect();
        let figures = ShardFigures {
            resumed: state.resumed,
            lease_expiries: state.table.expiries,
            retries: state.table.retries,
            workers: state.workers.len() as u64,
            scoring_cpu_s: times.scoring_cpu,
        };
        (results, state.facts.clone(), figures)
    };
    // A resumed job may have been stopped while finishing, possibly with other ranking flags:
    // what depends on the ranking is written anew, nothing of the earlier attempt is kept.
    for name in [
        SELECTED_DIR,
        RANKING_FILE,
        REJECTED_FILE,
        REPORT_FILE,
        PLOTS_DIR,
    ] {
        output.delete_all(name).await?;
    }
    write_rejected(output, &plan.shards, &facts.key_values()).await?;
    log_memory("shards scored");
    // Merged in shard order, whatever order the shards finished in: the statistics are
    // the same as a single process computes, bit for bit.
    let mut stats = MarginStats::default();
    for r in &results {
        stats.merge(&r.stats);
    }
    let scored = Scored {
        sources: plan.sources(),
        parts: plan
            .shards
            .iter()
            .zip(&results)
            .map(|(shard, r)| ScoredPart {
                path: shard.scores_part(),
                rows: r.scored,
            })
            .collect(),
        input_columns: plan.input_columns.clone(),
        reference: spec.model.as_ref().is_some_and(|m| m.reference.is_some()),
        inputs_in_scores: spec.scores_with_input,
        logps_in_input: spec.model.is_none(),
        stats: Some(stats),
        bytes_per_row: plan
            .files
            .iter()
            .map(|f| f.bytes_per_row)
            .fold(0.0, f64::max),
    };
    let scoring = spec.model.as_ref().map(|model| {
        let tokens: u64 = results.iter().map(|r| r.tokens).sum();
        let padded_tokens: u64 = results.iter().map(|r| r.padded_tokens).sum();
        let pairs: u64 = results
            .iter()
            .filter(|r| !r.reused)
            .map(|r| r.scored + r.rejected)
            .sum();
        let seconds = score_time.as_secs_f64().max(1e-9);
        ScoringFigures {
            tokens,
            padded_tokens,
            reward_tokens: model
                .reward_model
                .as_ref()
                .map(|_| results.iter().map(|r| r.reward_tokens).sum()),
            padding_waste: 1.0 - tokens as f64 / padded_tokens.max(1) as f64,
            tokens_per_second: tokens as f64 / seconds,
            pairs_per_second: pairs as f64 / seconds,
        }
    });
    let reused = reused_from
        .filter(|_| results.iter().any(|r| r.reused))
        .map(|from_job| {
            let reused: Vec<_> = results.iter().filter(|r| r.reused).collect();
            let files: BTreeSet<u32> = reused
                .iter()
                .map(|r| plan.shards[r.index as usize].file_index)
                .collect();
            Reused {
                files: files.len() as u64,
                rows: reused.iter().map(|r| r.scored + r.rejected).sum(),
                from_job,
            }
        });
    let params = FinishParams {
        ranking: spec.ranking,
        selected: spec.selected,
        scoring,
        shards: Some(shard_figures),
        reused,
    };
    let timings = Timings {
        plan: times.plan.as_secs_f64(),
        score: score_time.as_secs_f64(),
        ..Timings::default()
    };
    finish(output, scored, facts, params, timings, times.started).await
}

/// Keeps answering until every worker heard from lately has been told the job ended (so it
/// exits instead of retrying a coordinator that is gone), for a few poll intervals at most.
async fn tell_workers_the_end(shared: &Shared, leases: LeaseSettings) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let waiting = {
            let state = shared.lock();
            state.workers.values().any(|w| {
                !w.told_end && w.last_seen.elapsed() < leases.timeout.max(Duration::from_secs(1))
            })
        };
        if !waiting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the outputs say log-probs came from when the input carried them.
const PRECOMPUTED: &str = "none: log-probs precomputed in the input columns";

/// How `spec` scores its pairs, as a later incremental run compares it.
fn scoring_setup(spec: &RankJobSpec) -> ScoringSetup {
    ScoringSetup {
        model: spec.model.clone(),
        shard_rows: spec.shard_rows,
        scores_with_input: spec.scores_with_input,
        scores_columns: SCORES_COLUMNS_VERSION,
    }
}

/// Fills the withheld `shards` from the earlier job's scores once this job's model identity is
/// known (`known`, else the first worker's) and is the earlier job's; otherwise gives them to
/// the workers. A shard that cannot be copied goes to the workers too.
async fn fill_reused(
    shared: Arc<Shared>,
    reuse: ReusePlan,
    shards: BTreeSet<u32>,
    known: Option<String>,
    key_values: Vec<(String, String)>,
) {
    let identity = match known {
        Some(identity) => identity,
        None => loop {
            if let Some(identity) = shared.lock().model_identity.clone() {
                break identity;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        },
    };
    if identity != reuse.model_identity {
        info!(
            earlier = %reuse.model_identity,
            now = %identity,
            "the earlier job scored with another model: every file is scored"
        );
        shared.lock().table.release(&shards);
        shared.changed.notify_waiters();
        return;
    }
    let reuse = Arc::new(reuse);
    let key_values = Arc::new(key_values);
    let mut copying = tokio::task::JoinSet::new();
    for index in shards {
        while copying.len() >= REUSE_CONCURRENCY {
            copying.join_next().await;
        }
        let (shared, reuse, key_values) = (
            Arc::clone(&shared),
            Arc::clone(&reuse),
            Arc::clone(&key_values),
        );
        copying.spawn(async move {
            let shard = &shared.shards[index as usize];
            let copied = match reuse::copy_shard(&reuse, &shared.output, shard, &key_values).await {
                Ok(result) => manifest::record_done(&shared.output, &result)
                    .await
                    .map(|()| result)
                    .map_err(JobError::from),
                Err(e) => Err(JobError::from(e)),
            };
            match copied {
                Ok(result) => {
                    shared.lock().table.complete(result);
                }
                Err(e) => {
                    warn!(
                        shard = index,
                        "cannot reuse the earlier scores, scoring instead: {e}"
                    );
                    shared.lock().table.release(&BTreeSet::from([index]));
                }
            }
            shared.changed.notify_waiters();
        });
    }
    while copying.join_next().await.is_some() {}
}

/// The summary of this very job when `output` holds it finished (same job id, same ranking
/// parameters); an error when it holds another finished job and `overwrite` is not given.
/// An incremental run (`incremental`) takes another finished job there as the one to reuse
/// and replace.
async fn finished_job(
    output: &Location,
    job_id: &str,
    spec: &RankJobSpec,
    incremental: bool,
) -> Result<Option<Summary>, JobError> {
    let Some(bytes) = output.get_if_exists(SUMMARY_FILE).await? else {
        return Ok(None);
    };
    if spec.overwrite {
        return Ok(None);
    }
    match serde_json::from_slice::<Summary>(&bytes) {
        Ok(summary) if summary.facts.job_id == job_id && summary.facts.ranking == spec.ranking => {
            Ok(Some(summary))
        }
        _ if incremental => Ok(None),
        _ => Err(JobError::AlreadyComplete {
            output: output.display().into(),
        }),
    }
}

/// Progress of the scoring phase: a bar (pairs, tokens/s, ETA) on a terminal, a log line
/// every few seconds otherwise. Rows count finished shards plus what workers report in their
/// heartbeats, so the figure moves within a shard.
struct Progress {
    total_rows: u64,
    with_model: bool,
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_log: Instant,
    first_rows: Option<(u64, u64)>,
    last_done: usize,
}

impl Progress {
    fn new(total_rows: u64, with_model: bool) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(total_rows);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} pairs  {msg}  ETA {eta}",
                )
                .expect("a valid progress template"),
            );
            bar
        });
        Progress {
            total_rows,
            with_model,
            bar,
            started: Instant::now(),
            last_log: Instant::now(),
            first_rows: None,
            last_done: 0,
        }
    }

    fn update(&mut self, rows: u64, tokens: u64, shards_done: u32, shards: usize) {
        // Rates count only what this process saw done (a resumed job starts part-way).
        let (rows0, tokens0) = *self.first_rows.get_or_insert((rows, tokens));
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let rows = rows.min(self.total_rows);
        let rate = rows.saturating_sub(rows0) as f64 / elapsed;
        let tokens_text = if self.with_model {
            format!(
                ", {:.0} tokens/s",
                tokens.saturating_sub(tokens0) as f64 / elapsed
            )
        } else {
            String::new()
        };
        if let Some(bar) = &self.bar {
            bar.set_position(rows);
            bar.set_message(format!("{rate:.1} pairs/s{tokens_text}"));
            return;
        }
        let every = if self.with_model { 10 } else { 2 };
        let shard_finished = shards_done as usize != self.last_done;
        self.last_done = shards_done as usize;
        let due = self.last_log.elapsed() >= Duration::from_secs(every);
        if due && (shard_finished || self.with_model)
            || shards_done as usize == shards && shard_finished
        {
            self.last_log = Instant::now();
            let eta = (self.total_rows - rows) as f64 / rate.max(1e-9);
            info!(
                "scored {shards_done}/{shards} shards, {rows}/{} rows ({rate:.0} rows/s{tokens_text}, ETA {eta:.0}s)",
                self.total_rows
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
