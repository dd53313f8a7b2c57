//! Where ad hoc queries run (beside the data flow, inside `adhoc`): a small tokio
//! runtime of their own, apart from the API's and the streams', with a bound on how
//! many run and wait at once.
//!
//! DataFusion runs a query's operators as tasks of the runtime that executes it. On
//! the API's runtime, two 4-way cross joins kept both cores' workers busy past their
//! timeout, and `/healthz` went unanswered for minutes. Here they have
//! [`Limits::threads`] threads (one by default: a core stays for streams and the API),
//! at most [`Limits::concurrency`] run at once and [`Limits::queue`] more wait their
//! turn; past that a request is refused at once as [`AdhocError::Busy`] (503 with
//! `Retry-After`). The threads' stacks fit the statement limits (`limits.rs`), so
//! planning and evaluating a deep expression cannot overflow them.
//!
//! A query stops by itself at its deadline (every operator's guard checks it, see
//! `guard.rs`); when the request goes away, or the query has not stopped shortly after
//! its deadline, it is cancelled and its task aborted, which drops its plan and
//! streams. Its slot is freed only when the task has ended, so a query still
//! stopping is still counted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::guard::Stop;
use super::{Limits, QueryOutput, Sources};
use crate::error::Error;
use crate::limits::{STACK_BYTES, panic_message};

/// How long past its deadline a query may take to say it stopped, before it is
/// cancelled from outside.
const GRACE: Duration = Duration::from_secs(1);

/// Why an ad hoc query gave no result.
#[derive(Debug)]
pub enum AdhocError {
    /// Every slot is taken and the queue is full (or stayed full for the whole
    /// timeout): try again after `retry_after`.
    Busy {
        message: String,
        retry_after: Duration,
    },
    /// The query failed: bad SQL, over a limit, a store that failed.
    Query(Error),
}

impl From<Error> for AdhocError {
    fn from(e: Error) -> Self {
        AdhocError::Query(e)
    }
}

impl From<AdhocError> for Error {
    fn from(e: AdhocError) -> Self {
        match e {
            AdhocError::Busy { message, .. } => Error::external(message),
            AdhocError::Query(e) => e,
        }
    }
}

/// Runs ad hoc queries on threads of their own, a bounded number at a time.
pub struct Executor {
    limits: Limits,
    /// Built on first use: a server that never answers ad hoc SQL starts no threads.
    runtime: OnceLock<std::result::Result<tokio::runtime::Runtime, String>>,
    /// Queries running or waiting (`concurrency + queue` permits).
    admitted: Arc<Semaphore>,
    /// Queries running (`concurrency` permits).
    running: Arc<Semaphore>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Executor {
    pub fn new(limits: Limits) -> Self {
        let concurrency = limits.concurrency.max(1);
        Executor {
            admitted: Arc::new(Semaphore::new(concurrency + limits.queue)),
            running: Arc::new(Semaphore::new(concurrency)),
            runtime: OnceLock::new(),
            limits,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, Error> {
        let threads = self.limits.threads.max(1);
        self.runtime
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads)
                    // Local object stores read files on blocking threads.
                    .max_blocking_threads(4)
                    .thread_stack_size(STACK_BYTES)
                    .thread_name("sluice-adhoc")
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::internal(format!("cannot start the ad hoc executor: {e}")))
    }

    /// Runs one read-only statement (see [`super::run`]) when a slot is free.
    pub async fn run(
        &self,
        sql: &str,
        limit: Option<usize>,
        sources: Sources,
    ) -> Result<QueryOutput, AdhocError> {
        let busy = |message: String| AdhocError::Busy {
            message,
            retry_after: Duration::from_secs(self.limits.timeout.as_secs().clamp(1, 5)),
        };
        let concurrency = self.limits.concurrency.max(1);
        let Ok(admitted) = Arc::clone(&self.admitted).try_acquire_owned() else {
            return Err(busy(format!(
                "{concurrency} ad hoc queries are running and {} more are waiting, the most \
                 this server takes: try again shortly",
                self.limits.queue
            )));
        };
        let running = match tokio::time::timeout(
            self.limits.timeout,
            Arc::clone(&self.running).acquire_owned(),
        )
        .await
        {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(busy(format!(
                    "the {concurrency} ad hoc query slots stayed busy for {} s: try again shortly",
                    self.limits.timeout.as_secs()
                )));
            }
        };
        let runtime = self.runtime()?;
        let stop = Stop {
            deadline: Instant::now() + self.limits.timeout,
            cancelled: Arc::new(AtomicBool::new(false)),
        };
        let (sql, limits, task_stop) = (sql.to_string(), self.limits.clone(), stop.clone());
        let task = runtime.spawn(async move {
            // The slot is the task's: freed when the work has really ended.
            let _slot = (admitted, running);
            super::run_until(&sql, limit, &sources, &limits, task_stop).await
        });
        // Dropped when this future ends or is dropped (the client went away): the
        // query is cancelled and its task aborted.
        let _cancel = CancelOnDrop {
            cancelled: Arc::clone(&stop.cancelled),
            task: task.abort_handle(),
        };
        let deadline = tokio::time::Instant::from_std(stop.deadline + GRACE);
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(result)) => result.map_err(AdhocError::Query),
            Ok(Err(e)) if e.is_panic() => Err(AdhocError::Query(Error::internal(format!(
                "the ad hoc query panicked: {}",
                panic_message(e.into_panic().as_ref())
            )))),
            Ok(Err(e)) => Err(AdhocError::Query(Error::internal(format!(
                "the ad hoc query's task ended: {e}"
            )))),
            Err(_) => Err(AdhocError::Query(super::timeout_error(&self.limits))),
        }
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which an async context forbids;
        // whatever still runs is cancelled at its next batch anyway.
        if let Some(Ok(runtime)) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct CancelOnDrop {
    cancelled: Arc<AtomicBool>,
    task: tokio::task::AbortHandle,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}
