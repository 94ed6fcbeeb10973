//! One job per output location at a time: a lock object under `OUT/_lock/`, taken with a
//! conditional create, kept alive by a heartbeat, and taken over only from a holder that is
//! gone.
//!
//! ```text
//!   OUT/_lock/00000001.json   {"host": "node-a", "pid": 4242, "command": "rank", …}
//! ```
//!
//! The holder is the one with the highest generation number. To take the output:
//! - no lock object: create generation 1 (create-if-absent: of two jobs starting at once,
//!   exactly one succeeds, the other sees the winner and is refused);
//! - the highest generation is alive (its heartbeat is younger than [`STALE_AFTER`], and on
//!   the same host its process still runs): refused, naming the holder;
//! - it is gone (its heartbeat is older, or it ran on this host and its process has exited):
//!   create the next generation, again create-if-absent, so one taker wins.
//!
//! The holder rewrites its object every [`HEARTBEAT`] and checks that no higher generation
//! appeared; if one did (its heartbeats stopped long enough for another job to take over, say
//! a paused process), the lock is lost and the job stops before writing another output.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apscore_core::outputs::LOCK_DIR;
use apscore_core::storage::{Location, StorageError};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{debug, error, info, warn};

/// How often the holder shows it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// A lock whose heartbeat is older than this belongs to a job that is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// The output is held by another job, or the lock could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{output} is in use by another apscore job: {holder}, last heartbeat {age:.0} s ago. \
         Wait for it to finish, or choose another --output; a job that is gone is taken over \
         once its heartbeat is {stale} s old (at once on its own host)",
        stale = STALE_AFTER.as_secs()
    )]
    Held {
        output: String,
        holder: String,
        age: f64,
    },
    #[error(
        "{output}: another job took over this output (lock {by}) while this one did not send its \
         heartbeat; this job stops without writing more"
    )]
    Lost { output: String, by: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Who holds the lock, as its object says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Holder {
    host: String,
    pid: u32,
    command: String,
    /// Seconds since the Unix epoch when the job took the lock.
    started: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "an `apscore {}` job on host {} (pid {}), started {} s ago",
            self.command,
            self.host,
            self.pid,
            unix_now().saturating_sub(self.started)
        )
    }
}

/// The lock of one output location, held until [`OutputLock::release`].
pub struct OutputLock {
    output: Location,
    /// `_lock/NNNNNNNN.json`, relative to `output`.
    object: String,
    lost_to: Arc<std::sync::Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl OutputLock {
    /// Takes the output for this job (`command` names it in messages to others), or says who
    /// holds it.
    pub async fn acquire(output: &Location, command: &str) -> Result<OutputLock, LockError> {
        let me = Holder {
            host: host_name(),
            pid: std::process::id(),
            command: command.to_string(),
            started: unix_now(),
        };
        let body = serde_json::to_vec_pretty(&me).expect("a lock holder serialises");
        loop {
            let generation = match highest(output).await? {
                None => 1,
                Some((generation, object)) => {
                    if let Some((holder, age)) = alive(output, &object, &me).await? {
                        return Err(LockError::Held {
                            output: output.display().into(),
                            holder,
                            age,
                        });
                    }
                    info!(lock = %object, "taking over the output from a job that is gone");
                    generation + 1
                }
            };
            let object = object_name(generation);
            match create(output, &object, body.clone()).await? {
                true => {
                    remove_older(output, generation).await;
                    debug!(lock = %object, "output locked");
                    let lost_to = Arc::new(std::sync::Mutex::new(None));
                    let stop = Arc::new(AtomicBool::new(false));
                    let heartbeat = tokio::spawn(heartbeat(
                        output.clone(),
                        generation,
                        body,
                        Arc::clone(&lost_to),
                        Arc::clone(&stop),
                    ));
                    return Ok(OutputLock {
                        output: output.clone(),
                        object,
                        lost_to,
                        stop,
                        heartbeat,
                    });
                }
                // Another job created that generation first: look again.
                false => continue,
            }
        }
    }

    /// Fails when another job took the output over (this one must not write more).
    pub fn check(&self) -> Result<(), LockError> {
        match self.lost_to.lock().expect("lock state").as_ref() {
            None => Ok(()),
            Some(by) => Err(LockError::Lost {
                output: self.output.display().into(),
                by: by.clone(),
            }),
        }
    }

    /// Stops the heartbeat and removes the lock object (unless the lock was lost).
    pub async fn release(self) {
        self.stop.store(true, Ordering::Relaxed);
        let lost = self.check().is_err();
        self.heartbeat.abort();
        // A renewal in flight must not bring the object back after it is removed.
        let _ = self.heartbeat.await;
        if lost {
            return;
        }
        let path = self.output.path_of(&self.object);
        if let Err(e) = self.output.store().delete(&path).await {
            warn!(lock = %self.object, "could not remove the output's lock: {e}");
        }
        if self.output.is_local() {
            // An empty `_lock/` folder: removed with its last lock (fails when not empty).
            let _ = std::fs::remove_dir(format!("{}/{LOCK_DIR}", self.output.display()));
        }
    }
}

fn object_name(generation: u64) -> String {
    format!("{LOCK_DIR}/{generation:08}.json")
}

/// The highest lock generation under `output`, with its object's name.
async fn highest(output: &Location) -> Result<Option<(u64, String)>, LockError> {
    let mut best: Option<(u64, String)> = None;
    for meta in output.join(LOCK_DIR).list_all().await? {
        let Some(name) = meta.location.filename() else {
            continue;
        };
        let Some(generation) = name
            .strip_suffix(".json")
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(g, _)| generation > *g) {
            best = Some((generation, object_name(generation)));
        }
    }
    Ok(best)
}

/// The holder of `object` and the age of its heartbeat in seconds, when it is alive; `None`
/// when it is gone (or vanished meanwhile).
async fn alive(
    output: &Location,
    object: &str,
    me: &Holder,
) -> Result<Option<(String, f64)>, LockError> {
    let path = output.path_of(object);
    let meta = match output.store().head(&path).await {
        Ok(meta) => meta,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(StorageError::store("reading", output.display_of(&path), e).into()),
    };
    let beat_ms = meta.last_modified.timestamp_millis();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let age = (now_ms - beat_ms).max(0) as f64 / 1000.0;
    let holder: Option<Holder> = output
        .get_if_exists(object)
        .await?
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    if let Some(holder) = &holder
        && holder.host == me.host
        && (holder.pid == me.pid || !process_runs(holder.pid))
    {
        // Its process on this host has exited (or is this very process, restarted in place).
        return Ok(None);
    }
    if age > STALE_AFTER.as_secs_f64() {
        return Ok(None);
    }
    let holder = holder.map_or_else(|| format!("lock {object}"), |h| h.to_string());
    Ok(Some((holder, age)))
}

/// Creates `object` if it does not exist; `false` when another job created it first.
async fn create(output: &Location, object: &str, body: Vec<u8>) -> Result<bool, LockError> {
    let path = output.path_of(object);
    let options = PutOptions::from(PutMode::Create);
    match output
        .store()
        .put_opts(&path, PutPayload::from(body), options)
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(StorageError::store("locking", output.display_of(&path), e).into()),
    }
}

/// Removes the lock objects of the generations before `generation` (best effort: they are
/// only history).
async fn remove_older(output: &Location, generation: u64) {
    let Ok(objects) = output.join(LOCK_DIR).list_all().await else {
        return;
    };
    for meta in objects {
        let older = meta
            .location
            .filename()
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|g| g < generation);
        if older && let Err(e) = output.store().delete(&meta.location).await {
            debug!("could not remove an old lock object: {e}");
        }
    }
}

/// Rewrites this job's lock object every [`HEARTBEAT`] and watches for a higher generation.
async fn heartbeat(
    output: Location,
    generation: u64,
    body: Vec<u8>,
    lost_to: Arc<std::sync::Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
) {
    let object = object_name(generation);
    let mut ticker = tokio::time::interval(HEARTBEAT);
    ticker.tick().await;
    while !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        match highest(&output).await {
            Ok(Some((g, newer))) if g > generation => {
                error!(lock = %newer, "another job took over this output");
                *lost_to.lock().expect("lock state") = Some(newer);
                return;
            }
            Ok(_) => {}
            Err(e) => warn!("cannot check the output's lock: {e}"),
        }
        if let Err(e) = output.put(&object, body.clone()).await {
            warn!("cannot renew the output's lock: {e}");
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This machine's name, as other jobs see it in the lock.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether process `pid` runs on this machine (Linux: it has a `/proc` entry and is not a
/// zombie waiting to be reaped; elsewhere it is assumed to, and only the heartbeat's age
/// tells).
fn process_runs(pid: u32) -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which ends at the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}
