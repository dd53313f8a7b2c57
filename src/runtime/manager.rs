//! The service runtime: queries started, stopped and dropped while others run (runtime
//! layer, under the API and the CLI).
//!
//! ```text
//!  per stream:  source task ──Input──> stream task: decode, watermark, its attached queries
//!                                          │ results (bounded, awaited: backpressure)
//!  per sink:                               └──────────> sink task
//!  per query:   QueryState (status, counters) + OutputHub (latest results, live broadcast)
//! ```
//!
//! A stream task runs while at least one of its queries runs; queries attach and
//! detach through its control channel, so starting a query never pauses the others.
//! A sink task runs while the sink exists. The catalog (SQL of every stream, sink and
//! query, and which queries run) is persisted after every change, so a restart
//! restores it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use futures::FutureExt;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{Connectors, StreamCore, errors_batch, step_query};
use crate::catalog::{Catalog, Change};
use crate::decode::{Chunk, Decoded};
use crate::engine::watermark::{Clock, SystemClock};
use crate::engine::{Emitted, Query};
use crate::error::{Error, RecordError, Result};
use crate::render::{self, TimestampFormat::Rfc3339};
use crate::sinks;
use crate::sources::{self, IngestReport, Input};
use crate::sql::ObjectKind;

/// How the manager behaves.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    pub connectors: Connectors,
    /// How often streams re-check their watermark (idle advance).
    pub tick: Duration,
    /// Most queries that may exist at once.
    pub max_queries: usize,
    /// Window state one query may hold before it is failed.
    pub query_memory_bytes: usize,
    /// Where the catalog is persisted; `None` keeps it in memory only.
    pub catalog_file: Option<PathBuf>,
    /// Print results of queries without a sink to stdout (`sluice run`).
    pub print_previews: bool,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            connectors: Connectors::default(),
            tick: Duration::from_millis(200),
            max_queries: 100,
            query_memory_bytes: 256 << 20,
            catalog_file: None,
            print_previews: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase", tag = "status", content = "error")]
pub enum QueryStatus {
    Running,
    Stopped,
    /// Its input ended: every window was emitted.
    Finished,
    Failed(String),
}

/// One emitted batch of a query, numbered; JSON rendered once, on first demand.
#[derive(Debug)]
pub struct OutputMessage {
    pub seq: u64,
    pub batch: RecordBatch,
    json: OnceLock<String>,
}

impl OutputMessage {
    /// `{"query", "seq", "window": {"start", "end"}?, "rows": [...]}`.
    pub fn json(&self, query: &str) -> &str {
        self.json.get_or_init(|| {
            let mut buf = Vec::new();
            let rows: serde_json::Value = match render::json_array(&self.batch, Rfc3339, &mut buf) {
                Ok(()) => serde_json::from_slice(&buf).unwrap_or_default(),
                Err(_) => serde_json::Value::Array(Vec::new()),
            };
            let window = rows.get(0).and_then(|r| {
                let (s, e) = (r.get("window_start")?, r.get("window_end"));
                Some(serde_json::json!({ "start": s, "end": e }))
            });
            let mut msg = serde_json::json!({ "query": query, "seq": self.seq, "rows": rows });
            if let Some(w) = window {
                msg["window"] = w;
            }
            msg.to_string()
        })
    }
}

/// Where a query's results go live: the newest few for late joiners, and a broadcast
/// that never waits for its subscribers (a slow WebSocket client lags and is dropped,
/// it does not slow the query).
#[derive(Debug)]
pub struct OutputHub {
    tx: broadcast::Sender<Arc<OutputMessage>>,
    latest: Mutex<VecDeque<Arc<OutputMessage>>>,
    seq: AtomicU64,
}

/// Batches kept for clients that connect later (the latest results).
const LATEST_BATCHES: usize = 16;
/// Messages a subscriber may fall behind before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 256;

impl OutputHub {
    fn new() -> Self {
        OutputHub {
            tx: broadcast::channel(SUBSCRIBER_BUFFER).0,
            latest: Mutex::new(VecDeque::new()),
            seq: AtomicU64::new(0),
        }
    }

    fn publish(&self, batch: RecordBatch) {
        let msg = Arc::new(OutputMessage {
            seq: self.seq.fetch_add(1, Ordering::Relaxed) + 1,
            batch,
            json: OnceLock::new(),
        });
        {
            let mut latest = self.latest.lock().expect("hub lock");
            if latest.len() == LATEST_BATCHES {
                latest.pop_front();
            }
            latest.push_back(Arc::clone(&msg));
        }
        // No subscribers is fine: nobody is watching.
        let _ = self.tx.send(msg);
    }

    /// The latest results, then a receiver of the live ones.
    pub fn subscribe(
        &self,
    ) -> (
        Vec<Arc<OutputMessage>>,
        broadcast::Receiver<Arc<OutputMessage>>,
    ) {
        let latest = self.latest.lock().expect("hub lock");
        // Subscribe under the lock: nothing published between the two is missed.
        let rx = self.tx.subscribe();
        (latest.iter().cloned().collect(), rx)
    }

    /// How many live subscribers (WebSocket clients) there are.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// What the API shows of a query; shared by the query's stream task and readers.
#[derive(Debug)]
pub struct QueryState {
    pub name: String,
    pub stream: String,
    pub sink: Option<String>,
    pub sql: String,
    status: Mutex<QueryStatus>,
    pub rows_in: AtomicU64,
    pub rows_out: AtomicU64,
    pub late: AtomicU64,
    pub errors: AtomicU64,
    /// Current watermark, ms (`i64::MIN`: none yet).
    pub watermark: AtomicI64,
    pub state_bytes: AtomicU64,
    pub output: OutputHub,
    /// The newest records the query sent to its error output, for the API (a few,
    /// bounded: the counters above say how many there were).
    pub recent_errors: RecentErrors,
}

impl QueryState {
    pub fn status(&self) -> QueryStatus {
        self.status.lock().expect("status lock").clone()
    }
    fn set_status(&self, s: QueryStatus) {
        *self.status.lock().expect("status lock") = s;
    }
    pub fn watermark(&self) -> Option<i64> {
        Some(self.watermark.load(Ordering::Relaxed)).filter(|&w| w != i64::MIN)
    }
}

/// Error-output records a query keeps for `GET /queries/{name}/errors`.
pub const RECENT_ERRORS: usize = 50;
/// Longest payload kept with a recent error, bytes: enough to see what was wrong
/// with a sensor reading, not a whole oversized message.
pub const RECENT_PAYLOAD_BYTES: usize = 2048;

/// One record of a query's error output, as kept for the API.
#[derive(Debug, Clone)]
pub struct RecentError {
    pub kind: &'static str,
    pub reason: String,
    /// The payload, cut to [`RECENT_PAYLOAD_BYTES`] at a character boundary.
    pub payload: String,
    /// The payload's whole length, bytes (more than `payload` holds when it was cut).
    pub payload_bytes: usize,
    pub arrival_ms: i64,
}

/// The newest [`RECENT_ERRORS`] error-output records of a query, oldest first.
#[derive(Debug, Default)]
pub struct RecentErrors(Mutex<VecDeque<RecentError>>);

impl RecentErrors {
    fn push(&self, errors: &[crate::error::RecordError]) {
        let mut ring = self.0.lock().expect("recent errors lock");
        // Only the last RECENT_ERRORS of a large batch can stay: skip the others
        // without copying their payloads.
        for e in &errors[errors.len().saturating_sub(RECENT_ERRORS)..] {
            if ring.len() == RECENT_ERRORS {
                ring.pop_front();
            }
            let mut cut = e.payload.len().min(RECENT_PAYLOAD_BYTES);
            while !e.payload.is_char_boundary(cut) {
                cut -= 1;
            }
            ring.push_back(RecentError {
                kind: e.kind.as_str(),
                reason: e.reason.clone(),
                payload: e.payload[..cut].to_string(),
                payload_bytes: e.payload.len(),
                arrival_ms: e.arrival_ms,
            });
        }
    }

    /// The kept records, newest first.
    pub fn newest_first(&self) -> Vec<RecentError> {
        let ring = self.0.lock().expect("recent errors lock");
        ring.iter().rev().cloned().collect()
    }
}

/// What the API shows of a running stream.
#[derive(Debug, Default)]
pub struct StreamState {
    pub records_in: AtomicU64,
    pub decode_errors: AtomicU64,
    pub chunks: AtomicU64,
    pub watermark: AtomicI64,
    pub status: Mutex<String>,
    /// The connection, for network sources.
    pub health: Option<Arc<crate::health::Health>>,
    /// Arrival time (ms) of the newest chunk the stream task has finished with, or
    /// when the stream started, before the first.
    pub processed_arrival_ms: AtomicI64,
    /// The input channel, weakly: to count what waits in it without keeping it open
    /// (a source's input must be able to end).
    input: OnceLock<mpsc::WeakSender<Input>>,
    /// Why the source stopped, when it failed, and whether trying again may help
    /// (a broker or store that failed; not a wrong option).
    source_failure: Mutex<Option<(String, bool)>>,
    /// Times the stream was started again after it failed.
    pub restarts: AtomicU64,
}

impl StreamState {
    /// Chunks the source has handed over that the stream task has not taken yet.
    pub fn queued_chunks(&self) -> usize {
        self.input
            .get()
            .and_then(|w| w.upgrade())
            .map_or(0, |tx| tx.max_capacity() - tx.capacity())
    }

    /// How far behind the stream's processing is, ms: while input waits for the
    /// stream task, the time since the newest chunk it finished with arrived (what
    /// waits arrived after that). `None` when nothing waits: an idle or caught-up
    /// stream is not behind, however old its watermark.
    pub fn lag_ms(&self, now_ms: i64) -> Option<i64> {
        if self.queued_chunks() == 0 {
            return None;
        }
        let processed = self.processed_arrival_ms.load(Ordering::Relaxed);
        Some((now_ms - processed).max(0))
    }
}

#[derive(Debug, Default)]
pub struct SinkState {
    pub batches: AtomicU64,
    pub rows: AtomicU64,
    pub status: Mutex<String>,
    /// The connection, for network sinks.
    pub health: Option<Arc<crate::health::Health>>,
}

struct Attached {
    name: String,
    query: Query,
    state: Arc<QueryState>,
    results: Option<mpsc::Sender<RecordBatch>>,
    errors: Option<mpsc::Sender<RecordBatch>>,
}

enum Control {
    Attach(Box<Attached>),
    Detach(String, oneshot::Sender<()>),
}

struct StreamRun {
    /// Unbounded: attach/detach come one per user action, and must never be lost or
    /// fail because the stream task is busy (waiting on a slow sink).
    control: mpsc::UnboundedSender<Control>,
    /// For `http` streams only: where the API hands bodies. Other streams must not
    /// keep a sender, or their input could never end.
    input: Option<mpsc::Sender<Input>>,
    task: JoinHandle<()>,
    source: JoinHandle<()>,
    state: Arc<StreamState>,
}

struct SinkRun {
    tx: mpsc::Sender<RecordBatch>,
    task: JoinHandle<()>,
    state: Arc<SinkState>,
}

/// Channel capacities: small, so memory stays bounded and backpressure reaches the
/// source quickly (in chunks and batches).
const SOURCE_CHANNEL: usize = 8;
const SINK_CHANNEL: usize = 16;
/// A failed stream starts again after 1 s, then 2 s, 4 s … up to a minute while it
/// keeps failing; a failure after 5 minutes of peace starts from 1 s again.
const RESTART_BACKOFF_FIRST: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(60);
const RESTART_BACKOFF_RESET: Duration = Duration::from_secs(300);
/// How long a dropped sink may take to flush before it is aborted.
const SINK_DROP_GRACE: Duration = Duration::from_secs(5);
/// Chunks a stream task takes per step at most: enough to fill a decode batch from
/// small messages, without delaying big chunks.
const MAX_CHUNKS_PER_STEP: usize = 256;

struct Inner {
    catalog: Catalog,
    queries: BTreeMap<String, Arc<QueryState>>,
    streams: HashMap<String, StreamRun>,
    stream_states: HashMap<String, Arc<StreamState>>,
    sinks: HashMap<String, SinkRun>,
    /// Per application: when it was last applied and what that did.
    app_log: BTreeMap<String, (i64, Vec<Change>)>,
    /// Persisted entries the last restore could not apply.
    skipped: Vec<Skipped>,
    /// Per stream: failed runs in a row, and when the last one failed (the backoff).
    failures: HashMap<String, (u32, std::time::Instant)>,
}

/// The running service: catalog, queries and their tasks.
pub struct Manager {
    options: ManagerOptions,
    inner: Mutex<Inner>,
    shutdown: watch::Sender<bool>,
}

impl Manager {
    pub fn new(options: ManagerOptions) -> Arc<Self> {
        Arc::new(Manager {
            options,
            inner: Mutex::new(Inner {
                catalog: Catalog::new(),
                queries: BTreeMap::new(),
                streams: HashMap::new(),
                stream_states: HashMap::new(),
                sinks: HashMap::new(),
                app_log: BTreeMap::new(),
                skipped: Vec::new(),
                failures: HashMap::new(),
            }),
            shutdown: watch::channel(false).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("manager lock")
    }

    /// Restores the persisted catalog and restarts the queries that were running.
    /// Each object is restored alone: one that no longer applies (a connector option
    /// this version refuses, a stream it reads that was skipped) is logged, kept in the
    /// catalog file and shown by `GET /applications`, and the others still start.
    pub fn restore(self: &Arc<Self>) -> Result<usize> {
        let Some(path) = &self.options.catalog_file else {
            return Ok(0);
        };
        let Some(persisted) = Persisted::read(path)? else {
            return Ok(0);
        };
        let mut inner = self.lock();
        let (catalog, skipped) = persisted.restore(
            &self.options.connectors,
            &self.options.connectors.untrusted(),
        );
        for s in &skipped {
            tracing::warn!(
                kind = %s.kind, name = %s.name, "the persisted catalog's entry no longer applies, \
                 skipped (kept in the catalog file; see GET /applications): {}",
                s.reason
            );
        }
        inner.catalog = catalog;
        inner.skipped = skipped;
        let mut to_start = Vec::new();
        for q in &persisted.queries {
            if !inner.catalog.queries.contains_key(&q.name) {
                continue;
            }
            self.register_query(&mut inner, &q.name);
            if q.running {
                to_start.push(q.name.clone());
            }
        }
        let failed = self.start_many(&mut inner, &to_start);
        for (name, e) in &failed {
            inner.queries[name].set_status(QueryStatus::Failed(e.to_string()));
        }
        Ok(to_start.len() - failed.len())
    }

    /// Applies statements from a trusted place (`sluice run`, tests): all-or-nothing,
    /// then starts their new queries. They belong to no application.
    pub fn apply(self: &Arc<Self>, sql: &str) -> Result<Vec<Change>> {
        self.change(None, Trust::Operator, |c, conn| c.apply(sql, conn))
    }

    /// Applies statements that arrived over HTTP (they may not use local files), as
    /// part of application `app` when named: what they create belongs to it, and
    /// what is identical to what exists is left as it is.
    pub fn apply_untrusted(self: &Arc<Self>, app: Option<&str>, sql: &str) -> Result<Vec<Change>> {
        self.change(app, Trust::Network, |c, conn| c.submit(app, sql, conn))
    }

    /// Makes application `app` what `sql` defines (see
    /// [`crate::catalog::Catalog::replace_application`]): `PUT /applications/{name}`
    /// (untrusted) and the files of `--queries` (trusted), which are the truth at
    /// every start.
    pub fn replace_application(
        self: &Arc<Self>,
        app: &str,
        sql: &str,
        trusted: bool,
    ) -> Result<Vec<Change>> {
        let trust = if trusted {
            Trust::Operator
        } else {
            Trust::Network
        };
        self.change(Some(app), trust, |c, conn| {
            c.replace_application(app, sql, conn)
        })
    }

    /// Drops every object of application `app`.
    pub fn drop_application(self: &Arc<Self>, app: &str) -> Result<Vec<Change>> {
        self.change(Some(app), Trust::Network, |c, _| c.drop_application(app))
    }

    /// What applying to application `app` last did, and when (ms).
    pub fn last_change(&self, app: &str) -> Option<(i64, Vec<Change>)> {
        self.lock().app_log.get(app).cloned()
    }

    /// Catalog entries a restart could not restore.
    pub fn skipped(&self) -> Vec<Skipped> {
        self.lock().skipped.clone()
    }

    /// Computes a change on a copy of the catalog, then makes it so: what a change
    /// drops or replaces stops first, the new catalog takes over, then what it creates
    /// or replaces — and every query a replacement touched — starts again.
    fn change(
        self: &Arc<Self>,
        app: Option<&str>,
        trust: Trust,
        edit: impl FnOnce(&mut Catalog, &Connectors) -> Result<Vec<Change>>,
    ) -> Result<Vec<Change>> {
        let connectors = match trust {
            Trust::Operator => self.options.connectors.clone(),
            Trust::Network => self.options.connectors.untrusted(),
        };
        let mut inner = self.lock();
        let mut next = inner.catalog.clone();
        let changes = edit(&mut next, &connectors)?;
        if next.queries.len() > self.options.max_queries {
            return Err(Error::user(format!(
                "at most {} queries may exist; drop some first",
                self.options.max_queries
            )));
        }
        // Queries that keep their definition but must restart: they read a replaced
        // stream, write a replaced sink, or their stream sends errors to one.
        let replaced = |kind: ObjectKind, name: &str| {
            changes
                .iter()
                .any(|c| matches!(c, Change::Replaced(k, n) if *k == kind && n == name))
        };
        let touched: Vec<String> = next
            .queries
            .values()
            .filter(|q| {
                !replaced(ObjectKind::Query, &q.name)
                    && (replaced(ObjectKind::Stream, &q.plan.stream)
                        || q.sink
                            .as_deref()
                            .is_some_and(|s| replaced(ObjectKind::Sink, s))
                        || next.streams.get(&q.plan.stream).is_some_and(|s| {
                            s.error_sink
                                .as_deref()
                                .is_some_and(|e| replaced(ObjectKind::Sink, e))
                        }))
            })
            .map(|q| q.name.clone())
            .collect();
        let restart: Vec<String> = touched
            .into_iter()
            .filter(|q| {
                inner
                    .queries
                    .get(q)
                    .is_some_and(|s| s.status() == QueryStatus::Running)
            })
            .collect();
        // Stop first: dropped and replaced queries, and those to restart. Each is
        // marked stopped at once, so the last one of a stream stops its task.
        for c in &changes {
            if let Change::Dropped(ObjectKind::Query, name)
            | Change::Replaced(ObjectKind::Query, name) = c
            {
                self.stop_locked(&mut inner, name);
                inner.queries.remove(name);
            }
        }
        for name in &restart {
            self.stop_locked(&mut inner, name);
            inner.queries[name].set_status(QueryStatus::Stopped);
        }
        for c in &changes {
            if let Change::Dropped(ObjectKind::Sink, name)
            | Change::Replaced(ObjectKind::Sink, name) = c
                && let Some(s) = inner.sinks.remove(name)
            {
                retire_sink(s);
            }
        }
        inner.catalog = next;
        // Every statement was valid: the change is made. A query that then cannot
        // start (its sink cannot be built, say) shows as failed, with why.
        let starts = changes
            .iter()
            .filter_map(|c| match c {
                Change::Created(ObjectKind::Query, n) | Change::Replaced(ObjectKind::Query, n) => {
                    Some(n)
                }
                _ => None,
            })
            .cloned()
            .collect::<Vec<_>>();
        for name in &starts {
            self.register_query(&mut inner, name);
        }
        let all: Vec<String> = starts.iter().chain(&restart).cloned().collect();
        for (name, e) in self.start_many(&mut inner, &all) {
            inner.queries[&name].set_status(QueryStatus::Failed(e.to_string()));
        }
        if let Some(app) = app {
            if changes.iter().all(|c| matches!(c, Change::Dropped(..)))
                && !inner.catalog.applications.contains_key(app)
            {
                inner.app_log.remove(app);
            } else {
                inner
                    .app_log
                    .insert(app.to_string(), (SystemClock.now_ms(), changes.clone()));
            }
        }
        for c in changes
            .iter()
            .filter(|c| !matches!(c, Change::Unchanged(..)))
        {
            tracing::info!(
                application = app.unwrap_or(""),
                "{} {} '{}'",
                c.kind(),
                c.verb(),
                c.name()
            );
        }
        self.persist(&inner)?;
        Ok(changes)
    }

    fn register_query(&self, inner: &mut Inner, name: &str) {
        let def = &inner.catalog.queries[name];
        let sql = if def
            .sql
            .trim_start()
            .to_ascii_uppercase()
            .starts_with("CREATE QUERY")
        {
            def.sql.clone()
        } else {
            format!("CREATE QUERY {} AS {}", quote_ident(name), def.sql)
        };
        inner.queries.insert(
            name.to_string(),
            Arc::new(QueryState {
                name: name.to_string(),
                stream: def.plan.stream.clone(),
                sink: def.sink.clone(),
                sql,
                status: Mutex::new(QueryStatus::Stopped),
                rows_in: AtomicU64::new(0),
                rows_out: AtomicU64::new(0),
                late: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                watermark: AtomicI64::new(i64::MIN),
                state_bytes: AtomicU64::new(0),
                output: OutputHub::new(),
                recent_errors: RecentErrors::default(),
            }),
        );
    }

    pub fn start_query(self: &Arc<Self>, name: &str) -> Result<()> {
        let mut inner = self.lock();
        if !inner.queries.contains_key(name) {
            return Err(Error::user(format!("query '{name}' does not exist")));
        }
        self.start_locked(&mut inner, name)?;
        self.persist(&inner)
    }

    pub fn stop_query(self: &Arc<Self>, name: &str) -> Result<()> {
        let mut inner = self.lock();
        if !inner.queries.contains_key(name) {
            return Err(Error::user(format!("query '{name}' does not exist")));
        }
        self.stop_locked(&mut inner, name);
        inner.queries[name].set_status(QueryStatus::Stopped);
        self.persist(&inner)
    }

    /// Drops a stream, sink or query by name (refused while something uses it).
    pub fn drop_object(self: &Arc<Self>, kind: ObjectKind, name: &str) -> Result<()> {
        // The statement is ours, not the user's: its positions would mean nothing.
        self.apply_untrusted(
            None,
            &format!(
                "DROP {} {}",
                kind.to_string().to_uppercase(),
                quote_ident(name)
            ),
        )
        .map(|_| ())
        .map_err(Error::without_position)
    }

    fn start_locked(self: &Arc<Self>, inner: &mut Inner, name: &str) -> Result<()> {
        match self.start_many(inner, &[name.to_string()]).pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Starts queries (those not running yet); returns the ones that could not start,
    /// with why. Queries of one stream that has no run start together, in the same
    /// new run, before its source reads anything: started one by one, a short input
    /// (a file) could be read to its end before the second query joined.
    fn start_many(self: &Arc<Self>, inner: &mut Inner, names: &[String]) -> Vec<(String, Error)> {
        let mut failed = Vec::new();
        // Per stream, in the order first named: the queries to attach.
        let mut groups: Vec<(String, Vec<Attached>)> = Vec::new();
        for name in names {
            match self.prepare(inner, name) {
                Ok(None) => {}
                Ok(Some((stream, attached))) => {
                    match groups.iter_mut().find(|(s, _)| *s == stream) {
                        Some((_, list)) => list.push(attached),
                        None => groups.push((stream, vec![attached])),
                    }
                }
                Err(e) => failed.push((name.clone(), e)),
            }
        }
        for (stream, mut list) in groups {
            let run_alive = inner
                .streams
                .get(&stream)
                .is_some_and(|r| !r.task.is_finished());
            if run_alive {
                let mut rest = Vec::new();
                for a in list {
                    let run = &inner.streams[&stream];
                    match run.control.send(Control::Attach(Box::new(a))) {
                        Ok(()) => {}
                        // The task is gone but not yet reaped. A run whose input ended
                        // (the task said `ended` before it let go of its control
                        // channel) gives way to a new one. Any other end is a failure
                        // (its source failed, or it panicked), which the supervisor
                        // handles once it gets this lock: the query, already
                        // `running`, fails and starts again with the others.
                        Err(mpsc::error::SendError(Control::Attach(a))) => {
                            if *run.state.status.lock().expect("lock") == "ended" {
                                rest.push(*a);
                            }
                        }
                        Err(_) => unreachable!("only Attach was sent"),
                    }
                }
                if rest.is_empty() {
                    continue;
                }
                inner.streams.remove(&stream);
                list = rest;
            }
            let def = inner.catalog.streams[&stream].clone();
            let states: Vec<(String, Arc<QueryState>)> = list
                .iter()
                .map(|a| (a.name.clone(), Arc::clone(&a.state)))
                .collect();
            match self.spawn_stream(&def, list) {
                Ok(run) => {
                    inner
                        .stream_states
                        .insert(stream.clone(), Arc::clone(&run.state));
                    inner.streams.insert(stream, run);
                }
                Err(e) => {
                    for (name, state) in states {
                        state.set_status(QueryStatus::Stopped);
                        failed.push((name, Error::external(e.to_string())));
                    }
                }
            }
        }
        failed
    }

    /// A query ready to attach to its stream, marked `running` (before the stream task
    /// can see it: a short input may end at once, and the task finishes only the
    /// queries it finds running); `None` when it runs already.
    fn prepare(
        self: &Arc<Self>,
        inner: &mut Inner,
        name: &str,
    ) -> Result<Option<(String, Attached)>> {
        let state = Arc::clone(&inner.queries[name]);
        if state.status() == QueryStatus::Running {
            return Ok(None);
        }
        let def = inner.catalog.queries[name].clone();
        let stream_def = inner.catalog.streams[&def.plan.stream].clone();
        let results = match &def.sink {
            Some(s) => Some(self.sink_sender(inner, s)?),
            None => None,
        };
        let errors = match &stream_def.error_sink {
            Some(s) => Some(self.sink_sender(inner, s)?),
            None => None,
        };
        let attached = Attached {
            name: name.to_string(),
            query: Query::new(Arc::clone(&def.plan))?,
            state: Arc::clone(&state),
            results,
            errors,
        };
        state.set_status(QueryStatus::Running);
        Ok(Some((stream_def.name.clone(), attached)))
    }

    fn stop_locked(&self, inner: &mut Inner, name: &str) {
        let Some(state) = inner.queries.get(name) else {
            return;
        };
        if state.status() != QueryStatus::Running {
            return;
        }
        let stream = state.stream.clone();
        if let Some(run) = inner.streams.get(&stream) {
            let (tx, _rx) = oneshot::channel();
            let _ = run.control.send(Control::Detach(name.to_string(), tx));
        }
        // The stream stops with its last running query.
        let others = inner
            .queries
            .values()
            .any(|q| q.name != name && q.stream == stream && q.status() == QueryStatus::Running);
        if !others && let Some(run) = inner.streams.remove(&stream) {
            run.source.abort();
            run.task.abort();
            *run.state.status.lock().expect("lock") = "stopped".into();
        }
    }

    fn sink_sender(&self, inner: &mut Inner, name: &str) -> Result<mpsc::Sender<RecordBatch>> {
        if let Some(s) = inner.sinks.get(name)
            && !s.task.is_finished()
        {
            return Ok(s.tx.clone());
        }
        let def = &inner.catalog.sinks[name];
        let mut sink = sinks::build(
            name,
            &def.connector,
            &def.options,
            &self.options.connectors.sinks,
        )?;
        let (tx, mut rx) = mpsc::channel::<RecordBatch>(SINK_CHANNEL);
        let state = Arc::new(SinkState {
            health: sink.health(),
            ..Default::default()
        });
        // `idle` until the first batch is written: a sink that never wrote has not
        // proven it can.
        *state.status.lock().expect("lock") = "idle".into();
        let st = Arc::clone(&state);
        let sink_name = name.to_string();
        let task = tokio::spawn(async move {
            let mut failed = None;
            // A sink that panics fails like one that errs: its status says why, and
            // the queries writing to it see it stop.
            let caught = |p: Box<dyn std::any::Any + Send>| {
                Err(Error::internal(format!(
                    "the sink panicked: {}",
                    panic_message(&*p)
                )))
            };
            while let Some(batch) = rx.recv().await {
                let written = std::panic::AssertUnwindSafe(sink.write(&batch))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(caught);
                if let Err(e) = written {
                    failed = Some(e);
                    break;
                }
                if st.batches.fetch_add(1, Ordering::Relaxed) == 0 {
                    *st.status.lock().expect("lock") = "running".into();
                }
                st.rows
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            }
            if failed.is_none()
                && let Err(e) = std::panic::AssertUnwindSafe(sink.flush())
                    .catch_unwind()
                    .await
                    .unwrap_or_else(caught)
            {
                failed = Some(e);
            }
            let status = match failed {
                Some(e) => {
                    tracing::error!(sink = %sink_name, "sink failed: {e}");
                    format!("failed: {e}")
                }
                None => "stopped".into(),
            };
            *st.status.lock().expect("lock") = status;
        });
        inner.sinks.insert(
            name.to_string(),
            SinkRun {
                tx: tx.clone(),
                task,
                state,
            },
        );
        Ok(tx)
    }

    fn spawn_stream(
        self: &Arc<Self>,
        def: &crate::catalog::StreamDef,
        first: Vec<Attached>,
    ) -> Result<StreamRun> {
        let source = sources::build(
            &def.name,
            &def.connector,
            &def.options,
            &self.options.connectors.sources,
        )?;
        let core = StreamCore::new(def, source.partitions(), SystemClock.now_ms())?;
        let (input_tx, input_rx) = mpsc::channel(SOURCE_CHANNEL);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let state = Arc::new(StreamState {
            health: source.health(),
            ..Default::default()
        });
        *state.status.lock().expect("lock") = "running".into();
        let _ = state.input.set(input_tx.downgrade());
        state
            .processed_arrival_ms
            .store(SystemClock.now_ms(), Ordering::Relaxed);
        let source_state = Arc::clone(&state);
        let tx = input_tx.clone();
        let stream_name = def.name.clone();
        let source = tokio::spawn(async move {
            // A sender kept until the outcome is recorded: the input closes only
            // after it, so the stream task always knows how its source ended.
            let keep = tx.clone();
            let outcome = std::panic::AssertUnwindSafe(source.run(tx))
                .catch_unwind()
                .await;
            let failure = match outcome {
                Ok(Ok(())) => None,
                // A wrong option will be as wrong next time; anything else may pass.
                Ok(Err(e)) => Some((e.to_string(), !e.is_user())),
                Err(panic) => Some((format!("panicked: {}", panic_message(&*panic)), true)),
            };
            if let Some((why, _)) = &failure {
                tracing::error!(stream = %stream_name, "source failed: {why}");
                *source_state.status.lock().expect("lock") = format!("failed: {why}");
            }
            *source_state.source_failure.lock().expect("lock") = failure;
            drop(keep);
        });
        let task = StreamTask {
            core,
            queries: first,
            state: Arc::clone(&state),
            print_previews: self.options.print_previews,
            memory_limit: self.options.query_memory_bytes,
            tick: self.options.tick,
        };
        let shutdown = self.shutdown.subscribe();
        // The supervisor: however the task ends — its source failed, or it panicked —
        // the stream and its queries say so, and the manager starts them again with
        // backoff when that can help.
        let manager = Arc::downgrade(self);
        let task_state = Arc::clone(&state);
        let stream_name = def.name.clone();
        let task = tokio::spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(task.run(input_rx, control_rx, shutdown))
                .catch_unwind()
                .await;
            let failure = match outcome {
                Err(panic) => Some((
                    format!("its task panicked: {}", panic_message(&*panic)),
                    true,
                )),
                Ok(()) => task_state
                    .source_failure
                    .lock()
                    .expect("lock")
                    .clone()
                    .map(|(why, retry)| (format!("its source failed: {why}"), retry)),
            };
            if let Some((why, retry)) = failure
                && let Some(m) = manager.upgrade()
            {
                m.stream_failed(&stream_name, &task_state, why, retry);
            }
        });
        let input = (def.connector == "http").then_some(input_tx);
        Ok(StreamRun {
            control: control_tx,
            input,
            task,
            source,
            state,
        })
    }

    /// A stream's run ended in failure (its source failed, or its task panicked):
    /// its running queries are `failed` with the reason, the run is gone, and when
    /// trying again may help, the same queries start again after a backoff that grows
    /// with each failure in a row (1 s doubling to 60 s).
    fn stream_failed(
        self: &Arc<Self>,
        stream: &str,
        state: &Arc<StreamState>,
        why: String,
        retry: bool,
    ) {
        let mut inner = self.lock();
        // Only the current run counts: a stopped or replaced stream's old task may end
        // after its successor started.
        let current = inner
            .streams
            .get(stream)
            .is_some_and(|r| Arc::ptr_eq(&r.state, state));
        if !current {
            return;
        }
        if let Some(run) = inner.streams.remove(stream) {
            run.source.abort();
        }
        let victims: Vec<String> = inner
            .queries
            .values()
            .filter(|q| q.stream == stream && q.status() == QueryStatus::Running)
            .map(|q| q.name.clone())
            .collect();
        let reason = format!("stream '{stream}' failed: {why}");
        for q in &victims {
            inner.queries[q].set_status(QueryStatus::Failed(reason.clone()));
        }
        tracing::error!(stream = %stream, queries = ?victims, "{reason}");
        *state.status.lock().expect("lock") = format!("failed: {why}");
        if !retry || victims.is_empty() || *self.shutdown.borrow() {
            return;
        }
        let now = std::time::Instant::now();
        let (attempts, last) = inner.failures.entry(stream.to_string()).or_insert((0, now));
        // A stream that ran for a while before failing starts its backoff afresh.
        if now.duration_since(*last) > RESTART_BACKOFF_RESET {
            *attempts = 0;
        }
        *attempts += 1;
        *last = now;
        let delay =
            (RESTART_BACKOFF_FIRST * 2u32.saturating_pow(*attempts - 1)).min(RESTART_BACKOFF_MAX);
        *state.status.lock().expect("lock") = format!(
            "failed: {why}; starting again in {} ms (attempt {attempts})",
            delay.as_millis()
        );
        let manager = Arc::downgrade(self);
        let stream = stream.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if let Some(m) = manager.upgrade() {
                m.revive(&stream, &victims, &reason);
            }
        });
    }

    /// Starts again the queries a failed stream run took down, unless the user (or a
    /// change) did something to them meanwhile.
    fn revive(self: &Arc<Self>, stream: &str, queries: &[String], reason: &str) {
        if *self.shutdown.borrow() {
            return;
        }
        let mut inner = self.lock();
        let restarts = inner
            .stream_states
            .get(stream)
            .map_or(0, |s| s.restarts.load(Ordering::Relaxed));
        let mut again = Vec::new();
        for name in queries {
            let Some(q) = inner.queries.get(name).cloned() else {
                continue;
            };
            if q.stream != stream || q.status() != QueryStatus::Failed(reason.to_string()) {
                continue;
            }
            q.set_status(QueryStatus::Stopped);
            again.push(name.clone());
        }
        let failed = self.start_many(&mut inner, &again);
        for (name, e) in &failed {
            inner.queries[name].set_status(QueryStatus::Failed(e.to_string()));
        }
        let started = again.len() - failed.len();
        if started > 0
            && let Some(s) = inner.stream_states.get(stream)
        {
            s.restarts.store(restarts + 1, Ordering::Relaxed);
            tracing::info!(stream = %stream, queries = started, "started again after a failure");
        }
    }

    /// Hands an HTTP body to a running `http` stream and waits for its report.
    pub async fn ingest(&self, stream: &str, body: Vec<u8>) -> Result<IngestReport> {
        let input = {
            let inner = self.lock();
            let def = inner
                .catalog
                .streams
                .get(stream)
                .ok_or_else(|| Error::user(format!("stream '{stream}' does not exist")))?;
            if def.connector != "http" {
                return Err(Error::user(format!(
                    "stream '{stream}' reads from connector '{}'; only 'http' streams accept records",
                    def.connector
                )));
            }
            match inner
                .streams
                .get(stream)
                .filter(|r| !r.task.is_finished())
                .and_then(|r| r.input.clone())
            {
                Some(input) => input,
                None => {
                    return Err(Error::user(format!(
                        "stream '{stream}' has no running query, so records would be lost; start one first"
                    )));
                }
            }
        };
        let (ack, answer) = oneshot::channel();
        let chunk = Chunk::new(body, 0, SystemClock.now_ms());
        // The stream stopping meanwhile (its last query was stopped) is a race with the
        // user's own action, not a server failure.
        let stopped = || {
            Error::user(format!(
                "stream '{stream}' stopped while the records were sent"
            ))
        };
        input
            .send(Input {
                chunk,
                ack: Some(ack),
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())
    }

    /// A snapshot of the catalog (for listings).
    pub fn catalog(&self) -> Catalog {
        self.lock().catalog.clone()
    }

    /// What ad hoc SQL may read: the catalog's archive sinks and the data directory's
    /// embedded tables, through the objects this process's sinks write.
    pub fn adhoc_sources(&self) -> crate::adhoc::Sources {
        let inner = self.lock();
        crate::adhoc::Sources::of_catalog(&inner.catalog, &self.options.connectors.sinks, true)
    }

    pub fn query_states(&self) -> Vec<Arc<QueryState>> {
        self.lock().queries.values().cloned().collect()
    }

    pub fn query_state(&self, name: &str) -> Option<Arc<QueryState>> {
        self.lock().queries.get(name).cloned()
    }

    pub fn stream_state(&self, name: &str) -> Option<Arc<StreamState>> {
        self.lock().stream_states.get(name).cloned()
    }

    pub fn sink_state(&self, name: &str) -> Option<Arc<SinkState>> {
        self.lock().sinks.get(name).map(|s| Arc::clone(&s.state))
    }

    /// Every query whose stream's input has not ended; for `sluice run`.
    pub fn running_streams(&self) -> usize {
        self.lock()
            .streams
            .values()
            .filter(|r| !r.task.is_finished())
            .count()
    }

    /// Stops every stream and flushes every sink; bounded by `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let (streams, sinks) = {
            let mut inner = self.lock();
            let streams: Vec<StreamRun> = inner.streams.drain().map(|(_, r)| r).collect();
            let sinks: Vec<SinkRun> = inner.sinks.drain().map(|(_, s)| s).collect();
            (streams, sinks)
        };
        let wait = async {
            for r in streams {
                r.source.abort();
                drop(r.control);
                drop(r.input);
                let _ = r.task.await;
            }
            // With every stream task gone, each sink's last sender is ours: dropping
            // it ends the sink task after a flush.
            for s in sinks {
                drop(s.tx);
                let _ = s.task.await;
            }
        };
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::warn!("shutdown: some tasks did not finish within {grace:?}");
        }
    }

    /// Waits until every stream's input has ended (for `sluice run`), or shutdown.
    pub async fn wait_inputs_end(&self) {
        let mut shutdown = self.shutdown.subscribe();
        loop {
            if self.running_streams() == 0 || *shutdown.borrow() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Asks every task to stop (Ctrl-C); [`Manager::shutdown`] then waits for them.
    pub fn signal_shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    fn persist(&self, inner: &Inner) -> Result<()> {
        let Some(path) = &self.options.catalog_file else {
            return Ok(());
        };
        let c = &inner.catalog;
        let object =
            |name: &str, sql: &str, app: &Option<String>, network: bool, running: bool| Object {
                name: name.to_string(),
                sql: sql.to_string(),
                app: app.clone(),
                network,
                running,
            };
        let persisted = Persisted {
            version: 2,
            applications: c
                .applications
                .values()
                .map(|a| Application {
                    name: a.name.clone(),
                    sql: a.sql.clone(),
                })
                .collect(),
            sinks: c
                .sinks
                .values()
                .map(|s| object(&s.name, &s.sql, &s.app, s.from_network, false))
                .collect(),
            streams: c
                .streams
                .values()
                .map(|s| object(&s.name, &s.sql, &s.app, s.from_network, false))
                .collect(),
            queries: c
                .queries
                .values()
                .map(|q| {
                    let running = inner.queries.get(&q.name).is_some_and(|s| {
                        matches!(s.status(), QueryStatus::Running | QueryStatus::Failed(_))
                    });
                    object(&q.name, &q.sql, &q.app, false, running)
                })
                .collect(),
            skipped: inner.skipped.clone(),
        };
        let text =
            serde_json::to_string_pretty(&persisted).map_err(|e| Error::internal(e.to_string()))?;
        // Write then rename: a crash leaves the old catalog or the new one, never half.
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// What a caught panic said (its payload is a `&str` or a `String` when it came
/// from `panic!` with a message).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".to_string()
    }
}

/// Who wrote the SQL being applied.
#[derive(Debug, Clone, Copy)]
enum Trust {
    /// The operator: the command line, `--queries` files.
    Operator,
    /// A client of the HTTP API: no local files, no environment.
    Network,
}

/// Lets a sink that is dropped or replaced finish what it holds. A sink retrying
/// against a store that is down would retry forever: it gets a grace period to
/// finish and flush, then it is aborted.
fn retire_sink(s: SinkRun) {
    drop(s.tx);
    let task = s.task;
    tokio::spawn(async move {
        let abort = task.abort_handle();
        if tokio::time::timeout(SINK_DROP_GRACE, task).await.is_err() {
            abort.abort();
        }
    });
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A persisted catalog, read without a server and without checking connectors (for
/// `sluice query`, which finds archives through it). An absent file is an empty one;
/// entries that no longer apply are left out.
pub fn persisted_catalog(catalog_file: &std::path::Path) -> Result<Catalog> {
    match Persisted::read(catalog_file)? {
        Some(persisted) => {
            let any = crate::catalog::AnyConnector;
            Ok(persisted.restore(&any, &any).0)
        }
        None => Ok(Catalog::new()),
    }
}

/// The catalog file (`<data-dir>/catalog.json`): every object's statement as the user
/// wrote it, with its application, and which queries run. Version 1 files (no
/// applications) read as version 2 with no owners.
#[derive(serde::Serialize, serde::Deserialize)]
struct Persisted {
    version: u32,
    #[serde(default)]
    applications: Vec<Application>,
    sinks: Vec<Object>,
    streams: Vec<Object>,
    queries: Vec<Object>,
    /// Entries an earlier restore could not apply, kept so that nothing the user
    /// defined is silently forgotten.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    skipped: Vec<Skipped>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Application {
    name: String,
    sql: String,
}

/// A persisted entry a restore could not apply, and why.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    pub kind: ObjectKind,
    pub name: String,
    pub sql: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub network: bool,
    pub reason: String,
}

impl Persisted {
    /// The catalog file's contents; `None` when there is no file yet.
    fn read(path: &std::path::Path) -> Result<Option<Persisted>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                Error::external(format!(
                    "catalog file {} is unreadable: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::external(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Applies every entry on its own, sinks then streams then queries (the order in
    /// which they depend on each other); returns the catalog and the entries that
    /// failed, with why. Entries skipped before are tried again.
    fn restore(
        &self,
        trusted: &dyn crate::catalog::ConnectorCheck,
        network: &dyn crate::catalog::ConnectorCheck,
    ) -> (Catalog, Vec<Skipped>) {
        let mut catalog = Catalog::new();
        let mut skipped = Vec::new();
        let earlier = |kind: ObjectKind| self.skipped.iter().filter(move |s| s.kind == kind);
        for kind in [ObjectKind::Sink, ObjectKind::Stream, ObjectKind::Query] {
            let objects = match kind {
                ObjectKind::Sink => &self.sinks,
                ObjectKind::Stream => &self.streams,
                ObjectKind::Query => &self.queries,
            };
            let entries = objects
                .iter()
                .map(|o| (o.name.clone(), o.sql.clone(), o.app.clone(), o.network))
                .chain(
                    earlier(kind)
                        .map(|s| (s.name.clone(), s.sql.clone(), s.app.clone(), s.network)),
                );
            for (name, sql, app, from_network) in entries {
                let connectors = if from_network { network } else { trusted };
                // An unnamed query keeps the name it was given.
                let text = if kind == ObjectKind::Query && !names_itself(&sql) {
                    format!("CREATE QUERY {} AS {sql}", quote_ident(&name))
                } else {
                    sql.clone()
                };
                if let Err(e) = catalog.submit(app.as_deref(), &text, connectors) {
                    skipped.push(Skipped {
                        kind,
                        name,
                        sql,
                        app,
                        network: from_network,
                        reason: e.to_string(),
                    });
                }
            }
        }
        // Each submit above appended to its application's text: put the texts back.
        catalog.applications = self
            .applications
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    crate::catalog::AppDef {
                        name: a.name.clone(),
                        sql: a.sql.clone(),
                    },
                )
            })
            .collect();
        (catalog, skipped)
    }
}

/// Whether a query's statement gives its own name (`CREATE [OR REPLACE] QUERY`).
fn names_itself(sql: &str) -> bool {
    let words: Vec<String> = crate::sql::normal_tokens(sql)
        .into_iter()
        .take(4)
        .map(|w| w.to_ascii_uppercase())
        .collect();
    words.first().map(String::as_str) == Some("CREATE")
        && (words.get(1).map(String::as_str) == Some("QUERY")
            || words.get(3).map(String::as_str) == Some("QUERY"))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Object {
    name: String,
    sql: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    app: Option<String>,
    /// Streams and sinks: created by SQL that came over HTTP, so restored under the
    /// same rules (allow-lists, no local files), whatever the operator allows now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    network: bool,
    /// Queries only: whether it should run after a restart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    running: bool,
}

struct StreamTask {
    core: StreamCore,
    queries: Vec<Attached>,
    state: Arc<StreamState>,
    print_previews: bool,
    memory_limit: usize,
    tick: Duration,
}

impl StreamTask {
    async fn run(
        mut self,
        mut input: mpsc::Receiver<Input>,
        mut control: mpsc::UnboundedReceiver<Control>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let clock = SystemClock;
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch: Vec<Input> = Vec::new();
        loop {
            tokio::select! {
                // Shutdown first, then control (attach/detach), then data: a stop is
                // never stuck behind a backlog of input.
                biased;
                _ = shutdown.changed() => break,
                ctl = control.recv() => match ctl {
                    Some(Control::Attach(a)) => self.queries.push(*a),
                    Some(Control::Detach(name, done)) => {
                        self.queries.retain(|q| q.name != name);
                        let _ = done.send(());
                    }
                    None => break,
                },
                got = input.recv() => match got {
                    Some(first) => {
                        batch.push(first);
                        while batch.len() < MAX_CHUNKS_PER_STEP {
                            match input.try_recv() {
                                Ok(i) => batch.push(i),
                                Err(_) => break,
                            }
                        }
                        self.ingest(std::mem::take(&mut batch), clock.now_ms()).await;
                    }
                    None => {
                        // A source that failed ended nothing: its open windows are
                        // incomplete and stay unemitted; the supervisor reports it.
                        if self.state.source_failure.lock().expect("lock").is_some() {
                            break;
                        }
                        // Input ended: every window closes, then the queries finish.
                        let wm = self.core.finish();
                        self.step(&Decoded::default(), Some(wm), clock.now_ms()).await;
                        for q in &self.queries {
                            if q.state.status() == QueryStatus::Running {
                                q.state.set_status(QueryStatus::Finished);
                            }
                        }
                        *self.state.status.lock().expect("lock") = "ended".into();
                        break;
                    }
                },
                _ = ticker.tick() => {
                    let now = clock.now_ms();
                    let wm = self.core.tick(now);
                    self.step(&Decoded::default(), wm, now).await;
                }
            }
        }
    }

    async fn ingest(&mut self, inputs: Vec<Input>, now: i64) {
        // Acknowledged chunks are decoded alone, so their report is exactly theirs.
        let (acked, plain): (Vec<Input>, Vec<Input>) =
            inputs.into_iter().partition(|i| i.ack.is_some());
        if !plain.is_empty() {
            let chunks: Vec<Chunk> = plain.into_iter().map(|i| i.chunk).collect();
            self.ingest_chunks(&chunks, now).await;
        }
        for i in acked {
            let report = self
                .ingest_chunks(std::slice::from_ref(&i.chunk), now)
                .await;
            if let Some(ack) = i.ack {
                let _ = ack.send(report);
            }
        }
    }

    async fn ingest_chunks(&mut self, chunks: &[Chunk], now: i64) -> IngestReport {
        self.state
            .chunks
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        match self.core.ingest(chunks, now) {
            Ok((decoded, wm)) => {
                let accepted: usize = decoded.batches.iter().map(|b| b.num_rows()).sum();
                self.state
                    .records_in
                    .fetch_add(accepted as u64, Ordering::Relaxed);
                self.state
                    .decode_errors
                    .fetch_add(decoded.errors.len() as u64, Ordering::Relaxed);
                if let Some(w) = wm {
                    self.state.watermark.store(w, Ordering::Relaxed);
                }
                self.step(&decoded, wm, now).await;
                if let Some(newest) = chunks.iter().map(|c| c.arrival_ms).max() {
                    self.state
                        .processed_arrival_ms
                        .fetch_max(newest, Ordering::Relaxed);
                }
                IngestReport {
                    accepted,
                    rejected: decoded.errors,
                    failed: None,
                }
            }
            Err(e) => {
                // The decoder failed as a whole (a bug, not bad data): say so loudly,
                // and keep every record of the chunks on the error output with the
                // reason. Not acknowledging them instead would have the broker send
                // them again, fail again, and stop the stream for good.
                tracing::error!(stream = %self.core.def.name, "decode failed: {e}");
                let errors: Vec<RecordError> = chunks
                    .iter()
                    .flat_map(|c| {
                        let reason = format!("Sluice could not decode this chunk: {e}");
                        c.data
                            .split(|&b| b == b'\n')
                            .filter(|l| !l.trim_ascii().is_empty())
                            .map(move |l| RecordError {
                                kind: crate::error::RecordErrorKind::Internal,
                                reason: reason.clone(),
                                payload: String::from_utf8_lossy(l).into_owned(),
                                arrival_ms: c.arrival_ms,
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect();
                self.state
                    .decode_errors
                    .fetch_add(errors.len() as u64, Ordering::Relaxed);
                let decoded = Decoded {
                    errors,
                    ..Default::default()
                };
                self.step(&decoded, None, now).await;
                IngestReport {
                    accepted: 0,
                    rejected: decoded.errors,
                    failed: None,
                }
            }
        }
    }

    /// Runs one step of every attached query and routes what they emit.
    async fn step(&mut self, decoded: &Decoded, wm: Option<i64>, now: i64) {
        let emitted: Vec<Result<Emitted>> = self
            .queries
            .iter_mut()
            .map(|q| step_query(&mut q.query, decoded, wm, now))
            .collect();
        let stream = self.core.def.name.clone();
        // A record that failed to decode failed for the stream, not for one query:
        // where the error output is the log, it is logged here, once, and each
        // query below logs only its own errors (late records, failed expressions).
        // An error sink still gets it from every query, with the query's name.
        let decode_errors = decoded.errors.len();
        if decode_errors > 0 && self.queries.iter().any(|q| q.errors.is_none()) {
            log_errors(None, &stream, &decoded.errors);
        }
        let mut failed: Vec<String> = Vec::new();
        for (i, out) in emitted.into_iter().enumerate() {
            // Everything needed across the awaits below is cloned out first: the query
            // itself (its accumulators) must not be held across an await.
            let (name, state, results, errors) = {
                let q = &self.queries[i];
                (
                    q.name.clone(),
                    Arc::clone(&q.state),
                    q.results.clone(),
                    q.errors.clone(),
                )
            };
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    state.set_status(QueryStatus::Failed(e.to_string()));
                    failed.push(name);
                    continue;
                }
            };
            let size = {
                let q = &self.queries[i].query;
                let c = q.counters;
                state.rows_in.store(c.rows_in, Ordering::Relaxed);
                state.rows_out.store(c.rows_out, Ordering::Relaxed);
                state.late.store(c.late, Ordering::Relaxed);
                state.errors.store(c.errors, Ordering::Relaxed);
                if let Some(w) = q.watermark() {
                    state.watermark.store(w, Ordering::Relaxed);
                }
                q.state_size()
            };
            state.state_bytes.store(size as u64, Ordering::Relaxed);
            if size > self.memory_limit {
                state.set_status(QueryStatus::Failed(format!(
                    "the query's window state reached {} MB, over its limit of {} MB: use smaller \
                     windows or fewer groups",
                    size >> 20,
                    self.memory_limit >> 20
                )));
                failed.push(name);
                continue;
            }
            for b in out.batches {
                state.output.publish(b.clone());
                if let Some(tx) = &results {
                    // Awaiting here is the backpressure: a slow sink holds this stream.
                    if tx.send(b).await.is_err() {
                        state.set_status(QueryStatus::Failed(
                            "its sink stopped (see the sink's status)".into(),
                        ));
                        failed.push(name.clone());
                        break;
                    }
                } else if self.print_previews {
                    let mut buf = Vec::new();
                    if render::json_lines(&b, Rfc3339, &mut buf).is_ok() {
                        use std::io::Write;
                        let _ = std::io::stdout().lock().write_all(&buf);
                    }
                }
            }
            if !out.errors.is_empty() {
                state.recent_errors.push(&out.errors);
                match &errors {
                    Some(tx) => {
                        let Ok(batch) = errors_batch(&name, &stream, &out.errors) else {
                            continue;
                        };
                        let _ = tx.send(batch).await;
                    }
                    // The stream's decode errors come first (see `step_query`) and
                    // were logged above.
                    None => log_errors(
                        Some(&name),
                        &stream,
                        out.errors.get(decode_errors..).unwrap_or_default(),
                    ),
                }
            }
        }
        if !failed.is_empty() {
            self.queries.retain(|q| !failed.contains(&q.name));
        }
    }
}

/// Writes error-output records to the log (stderr), one JSON line each, in the error
/// output's row shape. `query` is `None` for a stream's decode errors, which concern
/// every query of the stream: their lines have no `query` field.
fn log_errors(query: Option<&str>, stream: &str, errors: &[crate::error::RecordError]) {
    if errors.is_empty() {
        return;
    }
    let Ok(mut batch) = errors_batch(query.unwrap_or(""), stream, errors) else {
        return;
    };
    if query.is_none() {
        let schema = batch.schema();
        let rest: Vec<usize> = (0..batch.num_columns())
            .filter(|&i| schema.field(i).name() != "query")
            .collect();
        match batch.project(&rest) {
            Ok(b) => batch = b,
            Err(_) => return,
        }
    }
    let mut buf = Vec::new();
    if render::json_lines(&batch, Rfc3339, &mut buf).is_ok() {
        use std::io::Write;
        // One write per batch, so lines of concurrent streams do not interleave.
        let _ = std::io::stderr().lock().write_all(&buf);
    }
}
