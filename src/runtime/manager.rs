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
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::{Connectors, StreamCore, errors_batch, step_query};
use crate::catalog::{Catalog, Change};
use crate::decode::{Chunk, Decoded};
use crate::engine::watermark::{Clock, SystemClock};
use crate::engine::{Emitted, Query};
use crate::error::{Error, Result};
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
            let rows: serde_json::Value = match sinks::to_json_array(&self.batch, &mut buf) {
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
            }),
            shutdown: watch::channel(false).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("manager lock")
    }

    /// Restores the persisted catalog and restarts the queries that were running.
    pub fn restore(self: &Arc<Self>) -> Result<usize> {
        let Some(path) = &self.options.catalog_file else {
            return Ok(0);
        };
        let Some(persisted) = Persisted::read(path)? else {
            return Ok(0);
        };
        let sql = persisted.sql();
        let mut inner = self.lock();
        inner
            .catalog
            .apply(&sql, &self.options.connectors)
            .map_err(|e| {
                Error::external(format!("the persisted catalog no longer applies: {e}"))
            })?;
        let mut running = 0;
        for q in &persisted.queries {
            self.register_query(&mut inner, &q.name);
            if q.running {
                self.start_locked(&mut inner, &q.name)?;
                running += 1;
            } else {
                inner.queries[&q.name].set_status(QueryStatus::Stopped);
            }
        }
        Ok(running)
    }

    /// Applies an application from a trusted place (the command line, the `--queries`
    /// directory): all-or-nothing, then starts its new queries.
    pub fn apply(self: &Arc<Self>, sql: &str) -> Result<Vec<Change>> {
        self.apply_with(sql, false, false)
    }

    /// Applies an application that arrived over HTTP: it may not use local files.
    pub fn apply_untrusted(self: &Arc<Self>, sql: &str) -> Result<Vec<Change>> {
        self.apply_with(sql, false, true)
    }

    /// Like [`Manager::apply`], but objects that already exist (by name) are left as
    /// they are: loading the same directory of applications twice changes nothing.
    pub fn apply_if_missing(self: &Arc<Self>, sql: &str) -> Result<Vec<Change>> {
        self.apply_with(sql, true, false)
    }

    fn apply_with(
        self: &Arc<Self>,
        sql: &str,
        if_missing: bool,
        untrusted: bool,
    ) -> Result<Vec<Change>> {
        let connectors = if untrusted {
            self.options.connectors.untrusted()
        } else {
            self.options.connectors.clone()
        };
        let mut inner = self.lock();
        let mut next = inner.catalog.clone();
        let changes = if if_missing {
            next.apply_if_missing(sql, &connectors)?
        } else {
            next.apply(sql, &connectors)?
        };
        if next.queries.len() > self.options.max_queries {
            return Err(Error::user(format!(
                "at most {} queries may exist; drop some first",
                self.options.max_queries
            )));
        }
        // Dropped queries stop before the catalog forgets them.
        for c in &changes {
            if let Change::Dropped(ObjectKind::Query, name) = c {
                self.stop_locked(&mut inner, name);
                inner.queries.remove(name);
            }
            if let Change::Dropped(ObjectKind::Sink, name) = c
                && let Some(s) = inner.sinks.remove(name)
            {
                drop(s.tx);
                // A sink retrying against a store that is down would retry forever:
                // it gets a grace period to finish and flush, then it is aborted.
                let task = s.task;
                tokio::spawn(async move {
                    let abort = task.abort_handle();
                    if tokio::time::timeout(SINK_DROP_GRACE, task).await.is_err() {
                        abort.abort();
                    }
                });
            }
        }
        inner.catalog = next;
        // Every statement was valid: the application is applied. A query that then
        // cannot start (its sink cannot be built, say) shows as failed, with why.
        for c in &changes {
            if let Change::Created(ObjectKind::Query, name) = c {
                self.register_query(&mut inner, name);
                if let Err(e) = self.start_locked(&mut inner, name) {
                    inner.queries[name].set_status(QueryStatus::Failed(e.to_string()));
                }
            }
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
        self.apply_untrusted(&format!(
            "DROP {} {}",
            kind.to_string().to_uppercase(),
            quote_ident(name)
        ))
        .map(|_| ())
        // The statement is ours: a position in it means nothing to the caller.
        .map_err(Error::without_position)
    }

    fn start_locked(self: &Arc<Self>, inner: &mut Inner, name: &str) -> Result<()> {
        let state = Arc::clone(&inner.queries[name]);
        if state.status() == QueryStatus::Running {
            return Ok(());
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
        let run_alive = inner
            .streams
            .get(&stream_def.name)
            .is_some_and(|r| !r.task.is_finished());
        // Running before the stream task can see the query: a short input may end at
        // once, and the task finishes only the queries it finds running (set after
        // the spawn, the status stayed `running` forever when the task was quicker).
        let previous = state.status();
        state.set_status(QueryStatus::Running);
        let attached_or_spawned = if run_alive {
            inner.streams[&stream_def.name]
                .control
                .send(Control::Attach(Box::new(attached)))
                .map_err(|_| Error::internal("stream control channel is closed"))
        } else {
            // The first query goes into the task before it (and its source) starts:
            // attached later, the records the source sends first would meet a stream
            // with no query and be lost.
            self.spawn_stream(&stream_def, attached).map(|run| {
                inner
                    .stream_states
                    .insert(stream_def.name.clone(), Arc::clone(&run.state));
                inner.streams.insert(stream_def.name.clone(), run);
            })
        };
        if let Err(e) = attached_or_spawned {
            state.set_status(previous);
            return Err(e);
        }
        Ok(())
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
        *state.status.lock().expect("lock") = "running".into();
        let st = Arc::clone(&state);
        let sink_name = name.to_string();
        let task = tokio::spawn(async move {
            let mut failed = None;
            while let Some(batch) = rx.recv().await {
                if let Err(e) = sink.write(&batch).await {
                    failed = Some(e);
                    break;
                }
                st.batches.fetch_add(1, Ordering::Relaxed);
                st.rows
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            }
            if failed.is_none()
                && let Err(e) = sink.flush().await
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
        first: Attached,
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
        let source_state = Arc::clone(&state);
        let tx = input_tx.clone();
        let stream_name = def.name.clone();
        let source = tokio::spawn(async move {
            if let Err(e) = source.run(tx).await {
                tracing::error!(stream = %stream_name, "source failed: {e}");
                *source_state.status.lock().expect("lock") = format!("failed: {e}");
            }
        });
        let task = StreamTask {
            core,
            queries: vec![first],
            state: Arc::clone(&state),
            print_previews: self.options.print_previews,
            memory_limit: self.options.query_memory_bytes,
            tick: self.options.tick,
        };
        let shutdown = self.shutdown.subscribe();
        let task = tokio::spawn(task.run(input_rx, control_rx, shutdown));
        let input = (def.connector == "http").then_some(input_tx);
        Ok(StreamRun {
            control: control_tx,
            input,
            task,
            source,
            state,
        })
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
        let persisted = Persisted {
            version: 1,
            sinks: c
                .sinks
                .values()
                .map(|s| Object {
                    name: s.name.clone(),
                    sql: s.sql.clone(),
                    running: false,
                })
                .collect(),
            streams: c
                .streams
                .values()
                .map(|s| Object {
                    name: s.name.clone(),
                    sql: s.sql.clone(),
                    running: false,
                })
                .collect(),
            queries: inner
                .queries
                .values()
                .map(|q| Object {
                    name: q.name.clone(),
                    sql: q.sql.clone(),
                    running: matches!(q.status(), QueryStatus::Running | QueryStatus::Failed(_)),
                })
                .collect(),
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

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A persisted catalog, read without a server and without checking connectors (for
/// `sluice query`, which finds archives through it). An absent file is an empty one.
pub fn persisted_catalog(catalog_file: &std::path::Path) -> Result<Catalog> {
    let mut catalog = Catalog::new();
    if let Some(persisted) = Persisted::read(catalog_file)? {
        catalog.apply(&persisted.sql(), &crate::catalog::AnyConnector)?;
    }
    Ok(catalog)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Persisted {
    version: u32,
    sinks: Vec<Object>,
    streams: Vec<Object>,
    queries: Vec<Object>,
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

    /// Every object's statement, sinks then streams then queries (the order in which
    /// they apply).
    fn sql(&self) -> String {
        let mut sql = String::new();
        for o in self.sinks.iter().chain(&self.streams).chain(&self.queries) {
            sql.push_str(&o.sql);
            sql.push_str(";\n");
        }
        sql
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Object {
    name: String,
    sql: String,
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
                        // Input ended: every window closes, then the queries finish.
                        let wm = self.core.finish();
                        self.step(&Decoded::default(), Some(wm), clock.now_ms()).await;
                        // A source that failed said why: its queries fail with that
                        // reason, and the stream keeps it rather than "ended".
                        let mut status = self.state.status.lock().expect("lock");
                        let failed = status.starts_with("failed").then(|| status.clone());
                        for q in &self.queries {
                            if q.state.status() == QueryStatus::Running {
                                q.state.set_status(match &failed {
                                    Some(why) => QueryStatus::Failed(format!("source {why}")),
                                    None => QueryStatus::Finished,
                                });
                            }
                        }
                        if failed.is_none() {
                            *status = "ended".into();
                        }
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
                IngestReport {
                    accepted,
                    rejected: decoded.errors,
                    failed: None,
                }
            }
            Err(e) => {
                // The decoder failed as a whole (a bug, not bad data): say so loudly.
                tracing::error!(stream = %self.core.def.name, "decode failed: {e}");
                IngestReport {
                    failed: Some(e.to_string()),
                    ..Default::default()
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
                    if sinks::to_json_lines(&b, &mut buf).is_ok() {
                        use std::io::Write;
                        let _ = std::io::stdout().lock().write_all(&buf);
                    }
                }
            }
            if !out.errors.is_empty() {
                let Ok(batch) = errors_batch(&name, &stream, &out.errors) else {
                    continue;
                };
                match &errors {
                    Some(tx) => {
                        let _ = tx.send(batch).await;
                    }
                    None => {
                        let mut buf = Vec::new();
                        if sinks::to_json_lines(&batch, &mut buf).is_ok() {
                            eprint!("{}", String::from_utf8_lossy(&buf));
                        }
                    }
                }
            }
        }
        if !failed.is_empty() {
            self.queries.retain(|q| !failed.contains(&q.name));
        }
    }
}
