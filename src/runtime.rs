//! The runtime: turns a catalog into running work (source → decode → queries → sinks).
//!
//! Two drivers share one core:
//! - [`StreamCore`] decodes a stream's chunks and tracks its watermark; [`Step`] drives
//!   it and the queries synchronously, with a manual clock, for tests and benchmarks;
//! - [`run`] spawns tasks: per stream, a source task feeding a bounded channel and a
//!   stream task that decodes and runs the stream's queries; per sink, a task draining
//!   a bounded channel. Every channel is bounded, so a slow sink blocks its queries'
//!   sends, which stops the stream task reading chunks, which blocks the source.
//!
//! This is the only module that knows sources, sinks and the engine together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use tokio::sync::{mpsc, watch};

use crate::catalog::{Catalog, ConnectorCheck, StreamDef};
use crate::decode::{Chunk, Decoded, JsonDecoder};
use crate::engine::watermark::{Clock, ManualClock, SystemClock, WatermarkTracker};
use crate::engine::{Emitted, Query, QueryCounters};
use crate::error::{Error, RecordError, Result};
use crate::sinks::{self, Sink, SinkContext};
use crate::sources::{self, SourceContext};
use crate::sql::Options;
use crate::sql::planner::ARRIVAL_TIME;

/// Checks connector options by building the connector's typed options.
#[derive(Debug, Clone, Default)]
pub struct Connectors {
    pub sources: SourceContext,
    pub sinks: SinkContext,
}

impl ConnectorCheck for Connectors {
    fn check_source(&self, connector: &str, options: &Options) -> Result<()> {
        let mut o = options.clone();
        o.take("connector");
        sources::build(connector, &o, &self.sources).map(|_| ())
    }
    fn check_sink(&self, connector: &str, options: &Options) -> Result<()> {
        let mut o = options.clone();
        o.take("connector");
        sinks::build(connector, &o, &self.sinks).map(|_| ())
    }
}

/// A stream's decoder and watermark, independent of how chunks arrive.
pub struct StreamCore {
    pub def: StreamDef,
    decoder: JsonDecoder,
    tracker: WatermarkTracker,
}

impl StreamCore {
    pub fn new(def: &StreamDef, partitions: usize, now_ms: i64) -> Result<Self> {
        let time_index = def.event_time.as_ref().map(|_| def.info.time_index);
        let decoder = JsonDecoder::new(
            def.columns.clone(),
            ARRIVAL_TIME,
            time_index,
            def.max_record_bytes,
        )?;
        if decoder.schema().as_ref() != def.info.schema.as_ref() {
            return Err(Error::internal(
                "decoder and planner disagree on the stream schema",
            ));
        }
        let delay = if def.event_time.is_some() {
            def.watermark_delay_ms
        } else {
            0
        };
        Ok(StreamCore {
            decoder,
            tracker: WatermarkTracker::new(delay, def.idle_timeout_ms, partitions, now_ms),
            def: def.clone(),
        })
    }

    /// Decodes chunks and updates the watermark; returns the batches and the new
    /// watermark.
    pub fn ingest(&mut self, chunks: &[Chunk], now_ms: i64) -> Result<(Decoded, Option<i64>)> {
        let decoded = self.decoder.decode(chunks)?;
        for c in chunks {
            self.tracker.observe(c.partition, None, now_ms);
        }
        for &(p, max) in &decoded.partition_max {
            self.tracker.observe(p, Some(max), now_ms);
        }
        Ok((decoded, self.tracker.watermark(now_ms)))
    }

    /// Recomputes the watermark on the wall clock (idle advance).
    pub fn tick(&mut self, now_ms: i64) -> Option<i64> {
        self.tracker.watermark(now_ms)
    }

    pub fn finish(&mut self) -> i64 {
        self.tracker.finish()
    }
}

/// Schema of error-output rows, for sinks that receive them.
pub fn error_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("query"),
        s("stream"),
        s("kind"),
        s("reason"),
        s("payload"),
        Field::new(
            ARRIVAL_TIME,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// Error records as a batch of [`error_schema`].
pub fn errors_batch(query: &str, stream: &str, errors: &[RecordError]) -> Result<RecordBatch> {
    let n = errors.len();
    let repeat = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v; n])) };
    let columns: Vec<ArrayRef> = vec![
        repeat(query),
        repeat(stream),
        Arc::new(StringArray::from_iter_values(
            errors.iter().map(|e| e.kind.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            errors.iter().map(|e| e.reason.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            errors.iter().map(|e| e.payload.as_str()),
        )),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            errors.iter().map(|e| e.arrival_ms),
        )),
    ];
    Ok(RecordBatch::try_new(error_schema(), columns)?)
}

/// Runs one stream step for its queries: pushes the decoded batches, hands decode
/// errors to every query's error output, then applies the new watermark.
fn drive_queries(
    queries: &mut [(String, Query)],
    decoded: &Decoded,
    watermark: Option<i64>,
    arrival_ms: i64,
    mut emit: impl FnMut(&str, Emitted),
) -> Result<()> {
    for (name, q) in queries.iter_mut() {
        let mut out = Emitted::default();
        if !decoded.errors.is_empty() {
            q.counters.errors += decoded.errors.len() as u64;
            out.errors.extend(decoded.errors.iter().cloned());
        }
        for b in &decoded.batches {
            let e = q.push(b, arrival_ms)?;
            out.batches.extend(e.batches);
            out.errors.extend(e.errors);
        }
        if let Some(wm) = watermark {
            out.batches.extend(q.advance(wm)?.batches);
        }
        emit(name, out);
    }
    Ok(())
}

/// Synchronous driver for tests and benchmarks: push JSON, move the clock, read
/// outputs. Uses the same decoder, watermark tracker and queries as [`run`].
pub struct Step {
    pub catalog: Catalog,
    pub clock: ManualClock,
    connectors: Connectors,
    streams: BTreeMap<String, StreamCore>,
    queries: BTreeMap<String, Vec<(String, Query)>>,
    outputs: BTreeMap<String, Vec<RecordBatch>>,
    errors: BTreeMap<String, Vec<RecordError>>,
}

impl Step {
    pub fn new(now_ms: i64) -> Self {
        Step {
            catalog: Catalog::new(),
            clock: ManualClock::new(now_ms),
            connectors: Connectors::default(),
            streams: BTreeMap::new(),
            queries: BTreeMap::new(),
            outputs: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    /// Applies SQL statements, then starts new queries and forgets dropped ones.
    pub fn apply(&mut self, sql: &str) -> Result<Vec<crate::catalog::Change>> {
        let changes = self.catalog.apply(sql, &self.connectors)?;
        let now = self.clock.now_ms();
        self.streams
            .retain(|name, _| self.catalog.streams.contains_key(name));
        for (name, def) in &self.catalog.streams {
            if !self.streams.contains_key(name) {
                self.streams
                    .insert(name.clone(), StreamCore::new(def, 1, now)?);
            }
        }
        for list in self.queries.values_mut() {
            list.retain(|(q, _)| self.catalog.queries.contains_key(q));
        }
        for (name, def) in &self.catalog.queries {
            let list = self.queries.entry(def.plan.stream.clone()).or_default();
            if !list.iter().any(|(n, _)| n == name) {
                list.push((name.clone(), Query::new(Arc::clone(&def.plan))?));
            }
        }
        Ok(changes)
    }

    /// Pushes raw JSON (NDJSON or an array) into a stream's partition 0.
    pub fn push(&mut self, stream: &str, data: &str) -> Result<()> {
        self.push_partition(stream, 0, data.as_bytes().to_vec())
    }

    pub fn push_partition(&mut self, stream: &str, partition: usize, data: Vec<u8>) -> Result<()> {
        let now = self.clock.now_ms();
        let core = self
            .streams
            .get_mut(stream)
            .ok_or_else(|| Error::user(format!("unknown stream '{stream}'")))?;
        let chunk = Chunk {
            data,
            partition,
            arrival_ms: now,
        };
        let (decoded, wm) = core.ingest(std::slice::from_ref(&chunk), now)?;
        self.drive(stream, &decoded, wm, now)
    }

    /// Declares how many partitions a stream's source has (before pushing).
    pub fn set_partitions(&mut self, stream: &str, n: usize) -> Result<()> {
        let def = self
            .catalog
            .stream(stream)
            .ok_or_else(|| Error::user(format!("unknown stream '{stream}'")))?
            .clone();
        self.streams.insert(
            stream.to_string(),
            StreamCore::new(&def, n, self.clock.now_ms())?,
        );
        Ok(())
    }

    /// Recomputes a stream's watermark at the clock's time (idle advance).
    pub fn tick(&mut self, stream: &str) -> Result<()> {
        let now = self.clock.now_ms();
        let core = self
            .streams
            .get_mut(stream)
            .ok_or_else(|| Error::user(format!("unknown stream '{stream}'")))?;
        let wm = core.tick(now);
        self.drive(stream, &Decoded::default(), wm, now)
    }

    /// Ends a stream's input: every open window closes.
    pub fn finish(&mut self, stream: &str) -> Result<()> {
        let now = self.clock.now_ms();
        let core = self
            .streams
            .get_mut(stream)
            .ok_or_else(|| Error::user(format!("unknown stream '{stream}'")))?;
        let wm = core.finish();
        self.drive(stream, &Decoded::default(), Some(wm), now)
    }

    fn drive(&mut self, stream: &str, decoded: &Decoded, wm: Option<i64>, now: i64) -> Result<()> {
        let Some(queries) = self.queries.get_mut(stream) else {
            return Ok(());
        };
        let (outputs, errors) = (&mut self.outputs, &mut self.errors);
        drive_queries(queries, decoded, wm, now, |name, e| {
            outputs
                .entry(name.to_string())
                .or_default()
                .extend(e.batches);
            errors.entry(name.to_string()).or_default().extend(e.errors);
        })
    }

    /// Takes the results a query emitted since the last call.
    pub fn take_output(&mut self, query: &str) -> Vec<RecordBatch> {
        self.outputs.remove(query).unwrap_or_default()
    }

    pub fn take_errors(&mut self, query: &str) -> Vec<RecordError> {
        self.errors.remove(query).unwrap_or_default()
    }

    pub fn query(&self, name: &str) -> Option<&Query> {
        self.queries
            .values()
            .flatten()
            .find(|(n, _)| n == name)
            .map(|(_, q)| q)
    }

    pub fn watermark(&self, stream: &str) -> Option<i64> {
        self.streams.get(stream).and_then(|s| s.tracker.current())
    }
}

/// How [`run`] behaves.
#[derive(Clone)]
pub struct RunOptions {
    pub connectors: Connectors,
    /// How often idle streams re-check their watermark.
    pub tick: Duration,
    /// Where bare `SELECT` results go (query name, batch); `None` prints them to stdout.
    pub preview: Option<mpsc::Sender<(String, RecordBatch)>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            connectors: Connectors::default(),
            tick: Duration::from_millis(200),
            preview: None,
        }
    }
}

/// The final counters of each query after [`run`].
pub type RunReport = BTreeMap<String, QueryCounters>;

/// Chunks a stream task takes from its source per step, at most: enough to fill a
/// decode batch from small messages without delaying big chunks.
const MAX_CHUNKS_PER_STEP: usize = 256;
/// Channel capacities, in chunks or batches. Small: memory stays bounded and
/// backpressure reaches the source quickly.
const SOURCE_CHANNEL: usize = 8;
const SINK_CHANNEL: usize = 16;

/// Runs every query of the catalog until all their inputs end or `shutdown` turns
/// true. Open windows are emitted when an input ends, not on shutdown.
pub async fn run(
    catalog: &Catalog,
    options: RunOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<RunReport> {
    let clock = SystemClock;
    // Sinks: one task each, fed by every query writing to it.
    let mut sink_senders: BTreeMap<String, mpsc::Sender<RecordBatch>> = BTreeMap::new();
    let mut sink_tasks = Vec::new();
    let needed: Vec<&String> = catalog
        .queries
        .values()
        .filter_map(|q| q.sink.as_ref())
        .chain(
            catalog
                .streams
                .values()
                .filter_map(|s| s.error_sink.as_ref()),
        )
        .collect();
    for name in needed {
        if sink_senders.contains_key(name) {
            continue;
        }
        let def = &catalog.sinks[name];
        let sink = sinks::build(&def.connector, &def.options, &options.connectors.sinks)?;
        let (tx, rx) = mpsc::channel(SINK_CHANNEL);
        sink_senders.insert(name.clone(), tx);
        sink_tasks.push(tokio::spawn(run_sink(name.clone(), sink, rx)));
    }

    let mut stream_tasks = Vec::new();
    for (name, def) in &catalog.streams {
        let queries: Vec<(String, Query)> = catalog
            .queries_on(name)
            .map(|q| Ok((q.name.clone(), Query::new(Arc::clone(&q.plan))?)))
            .collect::<Result<_>>()?;
        if queries.is_empty() {
            continue;
        }
        let source = sources::build(&def.connector, &def.options, &options.connectors.sources)?;
        let core = StreamCore::new(def, source.partitions(), clock.now_ms())?;
        let (tx, rx) = mpsc::channel(SOURCE_CHANNEL);
        let source_name = name.clone();
        let source_task = tokio::spawn(async move {
            if let Err(e) = source.run(tx).await {
                tracing::error!(stream = %source_name, "source failed: {e}");
                return Err(e);
            }
            Ok(())
        });
        let targets: Vec<Target> = queries
            .iter()
            .map(|(q, _)| {
                let def = &catalog.queries[q];
                Target {
                    results: def.sink.as_ref().map(|s| sink_senders[s].clone()),
                    errors: core
                        .def
                        .error_sink
                        .as_ref()
                        .map(|s| sink_senders[s].clone()),
                }
            })
            .collect();
        let task = StreamTask {
            core,
            queries,
            targets,
            preview: options.preview.clone(),
            tick: options.tick,
        };
        let shutdown = shutdown.clone();
        stream_tasks.push((source_task, tokio::spawn(task.run(rx, shutdown))));
    }
    drop(sink_senders);

    let mut report = RunReport::new();
    let mut first_error: Option<Error> = None;
    for (source_task, stream_task) in stream_tasks {
        match stream_task.await {
            Ok(Ok(counters)) => report.extend(counters),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::internal(format!("stream task panicked: {e}")));
            }
        }
        // The stream task dropped the receiver, so the source's next send fails and it
        // returns; abort covers a source blocked elsewhere (a file read, a socket).
        source_task.abort();
        if let Ok(Err(e)) = source_task.await {
            first_error.get_or_insert(e);
        }
    }
    for t in sink_tasks {
        match t.await {
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(Error::internal(format!("sink task panicked: {e}")));
            }
            Ok(Ok(())) => {}
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

async fn run_sink(
    name: String,
    mut sink: Box<dyn Sink>,
    mut rx: mpsc::Receiver<RecordBatch>,
) -> Result<()> {
    while let Some(batch) = rx.recv().await {
        sink.write(&batch)
            .await
            .map_err(|e| Error::external(format!("sink '{name}': {e}")))?;
    }
    sink.flush()
        .await
        .map_err(|e| Error::external(format!("sink '{name}': {e}")))
}

struct Target {
    results: Option<mpsc::Sender<RecordBatch>>,
    errors: Option<mpsc::Sender<RecordBatch>>,
}

struct StreamTask {
    core: StreamCore,
    queries: Vec<(String, Query)>,
    targets: Vec<Target>,
    preview: Option<mpsc::Sender<(String, RecordBatch)>>,
    tick: Duration,
}

impl StreamTask {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Chunk>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<RunReport> {
        let clock = SystemClock;
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut chunks: Vec<Chunk> = Vec::new();
        loop {
            tokio::select! {
                // Shutdown wins over more input: stop promptly, without emitting open
                // windows (they are incomplete).
                biased;
                _ = shutdown.changed() => break,
                got = rx.recv() => match got {
                    Some(chunk) => {
                        chunks.push(chunk);
                        // Take what is already waiting, to decode in full batches.
                        while chunks.len() < MAX_CHUNKS_PER_STEP {
                            match rx.try_recv() {
                                Ok(c) => chunks.push(c),
                                Err(_) => break,
                            }
                        }
                        let now = clock.now_ms();
                        let (decoded, wm) = self.core.ingest(&chunks, now)?;
                        chunks.clear();
                        self.step(&decoded, wm, now).await?;
                    }
                    None => {
                        // Input ended: every window closes.
                        let wm = self.core.finish();
                        self.step(&Decoded::default(), Some(wm), clock.now_ms()).await?;
                        break;
                    }
                },
                // Idle streams: the watermark may advance with the wall clock.
                _ = ticker.tick() => {
                    let now = clock.now_ms();
                    let wm = self.core.tick(now);
                    self.step(&Decoded::default(), wm, now).await?;
                }
            }
        }
        Ok(self
            .queries
            .iter()
            .map(|(n, q)| (n.clone(), q.counters))
            .collect())
    }

    async fn step(&mut self, decoded: &Decoded, wm: Option<i64>, now: i64) -> Result<()> {
        let mut emitted: Vec<Emitted> = Vec::with_capacity(self.queries.len());
        drive_queries(&mut self.queries, decoded, wm, now, |_, e| emitted.push(e))?;
        let stream = self.core.def.name.clone();
        for (i, out) in emitted.into_iter().enumerate() {
            let name = &self.queries[i].0;
            let target = &self.targets[i];
            for b in out.batches {
                match (&target.results, &self.preview) {
                    // A closed channel means the sink task failed; it reports why.
                    (Some(tx), _) => {
                        if tx.send(b).await.is_err() {
                            return Err(Error::external(format!(
                                "query '{name}': its sink stopped"
                            )));
                        }
                    }
                    (None, Some(p)) => {
                        let _ = p.send((name.clone(), b)).await;
                    }
                    (None, None) => print_preview(name, &b)?,
                }
            }
            if !out.errors.is_empty() {
                match &target.errors {
                    Some(tx) => {
                        let batch = errors_batch(name, &stream, &out.errors)?;
                        if tx.send(batch).await.is_err() {
                            return Err(Error::external(format!(
                                "query '{name}': its error sink stopped"
                            )));
                        }
                    }
                    None => {
                        let batch = errors_batch(name, &stream, &out.errors)?;
                        let mut buf = Vec::new();
                        sinks::to_json_lines(&batch, &mut buf)?;
                        eprint!("{}", String::from_utf8_lossy(&buf));
                    }
                }
            }
        }
        Ok(())
    }
}

fn print_preview(_query: &str, batch: &RecordBatch) -> Result<()> {
    use std::io::Write;
    let mut buf = Vec::new();
    sinks::to_json_lines(batch, &mut buf)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&buf)?;
    out.flush()?;
    Ok(())
}
