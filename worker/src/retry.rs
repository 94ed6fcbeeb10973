//! The retry policy for calls to a coordinator: which failures mean "not reachable now" (retry
//! with exponential backoff, for a while) and which are refusals (never retried), and how a
//! failure is told to a person.

use std::time::Duration;

use apscore_proto::security::tls_failure;
use tonic::{Code, Status};
use tracing::{debug, warn};

/// Retrying calls to a coordinator that does not answer: waits of `initial`, doubling up to
/// `max`, until `give_up_after` has passed since the first failure.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub give_up_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(2),
            give_up_after: Duration::from_secs(120),
        }
    }
}

/// A call that failed for good.
#[derive(Debug)]
pub enum CallError {
    /// The coordinator answered with a refusal (not worth retrying).
    Refused(Status),
    /// It did not answer within the backoff's patience.
    GaveUp { seconds: f64, last: Status },
    /// While it did not answer, the job turned out to be over (its summary is written).
    JobOver,
}

/// Whether a status means "the coordinator is not reachable now" rather than a refusal (a
/// TLS failure is a refusal: trying again does not make a certificate trusted).
fn is_transient(status: &Status) -> bool {
    tls_failure(status).is_none()
        && plaintext_to_tls(status).is_none()
        && matches!(
            status.code(),
            Code::Unavailable
                | Code::Unknown
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Cancelled
                | Code::Internal
        )
}

impl Backoff {
    /// Calls `op` until it succeeds, fails with a refusal, or the coordinator has not
    /// answered for `give_up_after`; after each failure `job_over` is asked whether there is
    /// any point in trying again.
    pub async fn call<T, F, Fut, E, EndFut>(
        &self,
        mut op: F,
        mut job_over: E,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
        E: FnMut() -> EndFut,
        EndFut: std::future::Future<Output = bool>,
    {
        let first_failure = tokio::time::Instant::now();
        let mut wait = self.initial;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(status) if !is_transient(&status) => return Err(CallError::Refused(status)),
                Err(status) => {
                    if job_over().await {
                        return Err(CallError::JobOver);
                    }
                    let waited = first_failure.elapsed();
                    if waited >= self.give_up_after {
                        return Err(CallError::GaveUp {
                            seconds: waited.as_secs_f64(),
                            last: status,
                        });
                    }
                    // A coordinator still planning its job does not answer yet either: only a
                    // silence of seconds is worth a warning.
                    if waited >= Duration::from_secs(2) {
                        warn!(
                            retry_in_ms = wait.as_millis() as u64,
                            "the coordinator did not answer: {}",
                            status.message()
                        );
                    } else {
                        debug!("the coordinator did not answer yet: {}", status.message());
                    }
                    tokio::time::sleep(wait.min(self.give_up_after - waited)).await;
                    wait = (wait * 2).min(self.max);
                }
            }
        }
    }
}

/// What a plaintext call answered by a TLS server looks like (the server's TLS alert read as
/// an HTTP/2 frame): a refusal with advice, not a coordinator that is down.
pub fn plaintext_to_tls(status: &Status) -> Option<String> {
    let text = with_causes(status);
    text.contains("frame with invalid size").then(|| {
        format!(
            "the coordinator did not answer plaintext gRPC ({text}); it probably serves TLS: use \
             an https:// URL and --tls-ca"
        )
    })
}

/// What a first call that never got an answer means when the worker reached the coordinator
/// over TLS without a client certificate and every connection was closed under it: under TLS
/// 1.3 a server that requires client certificates (`--tls-client-ca`) refuses one only after
/// the client's side of the handshake is done, and its alert is not always read before the
/// closed connection is (then the failure names no certificate). A refusal with advice, not a
/// coordinator that is down.
pub fn closed_without_client_certificate(
    status: &Status,
    over_tls: bool,
    presents_certificate: bool,
) -> Option<String> {
    let text = with_causes(status);
    let lower = text.to_lowercase();
    // The connection is gone under the call: read as closed, or written to after it was.
    let closed = ["connection closed", "broken pipe", "connection reset"]
        .iter()
        .any(|w| lower.contains(w));
    (over_tls && !presents_certificate && closed).then(|| {
        format!(
            "the coordinator closed every connection after the TLS handshake ({text}); it \
             probably requires a client certificate (--tls-client-ca): give this worker \
             --tls-cert and --tls-key"
        )
    })
}

/// A status with its causes (a transport error's message alone says little).
pub fn with_causes(status: &Status) -> String {
    let mut text = status.message().to_string();
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        text.push_str(&format!(": {e}"));
        cause = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    #[test]
    fn connections_closed_under_a_worker_without_a_certificate_are_a_refusal_over_tls_only() {
        let closed = Status::from_error(Box::new(std::io::Error::other(
            "canceled: connection closed",
        )));
        let advice = closed_without_client_certificate(&closed, true, false).unwrap();
        assert!(advice.contains("--tls-cert"), "{advice}");
        assert!(closed_without_client_certificate(&closed, true, true).is_none());
        assert!(closed_without_client_certificate(&closed, false, false).is_none());
        let broken = Status::from_error(Box::new(std::io::Error::other(
            "connection error: stream closed because of a broken pipe",
        )));
        assert!(closed_without_client_certificate(&broken, true, false).is_some());
        let refused = Status::from_error(Box::new(std::io::Error::other("connection refused")));
        assert!(closed_without_client_certificate(&refused, true, false).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_up_to_its_cap_and_gives_up_after_its_patience() {
        let backoff = Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(2),
            give_up_after: Duration::from_secs(10),
        };
        let start = Instant::now();
        let calls = std::cell::RefCell::new(Vec::new());
        let result: Result<(), CallError> = backoff
            .call(
                || {
                    calls.borrow_mut().push(start.elapsed());
                    async { Err(Status::unavailable("connection refused")) }
                },
                || async { false },
            )
            .await;
        let gaps: Vec<u128> = calls
            .borrow()
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect();
        assert_eq!(gaps, [250, 500, 1000, 2000, 2000, 2000, 2000, 250]);
        match result {
            Err(CallError::GaveUp { seconds, last }) => {
                assert_eq!(seconds, 10.0);
                assert_eq!(last.message(), "connection refused");
            }
            other => panic!("expected to give up, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_returns_as_soon_as_the_coordinator_answers_and_never_retries_a_refusal() {
        let backoff = Backoff::default();
        let mut failures = 3;
        let answer = backoff
            .call(
                || {
                    let fail = failures > 0;
                    failures -= 1;
                    async move {
                        if fail {
                            Err(Status::unavailable("restarting"))
                        } else {
                            Ok(7)
                        }
                    }
                },
                || async { false },
            )
            .await;
        assert!(matches!(answer, Ok(7)));

        let mut calls = 0;
        let refused: Result<(), CallError> = backoff
            .call(
                || {
                    calls += 1;
                    async { Err(Status::failed_precondition("protocol version 9")) }
                },
                || async { false },
            )
            .await;
        assert!(matches!(refused, Err(CallError::Refused(_))));
        assert_eq!(calls, 1);

        // A coordinator gone because the job completed: no point waiting for it.
        let mut checks = 0;
        let over: Result<(), CallError> = backoff
            .call(
                || async { Err(Status::unavailable("connection refused")) },
                || {
                    checks += 1;
                    let over = checks == 3;
                    async move { over }
                },
            )
            .await;
        assert!(matches!(over, Err(CallError::JobOver)));
    }
}
