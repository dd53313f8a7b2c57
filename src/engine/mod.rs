//! The engine: continuous queries as operators on Arrow record batches.
//!
//! ```text
//!  decoded batches ─> input (project, lateness) ─> pre (filter/project) ─> window aggregate ─> post (having/project/sort) ─> output
//!  watermarks ──────────────────────────────────────────────────────────────^ closes windows
//! ```
//!
//! The core runs without tasks or sockets: push batches and watermarks in, take batches
//! and error records out ([`Query::push`], [`Query::advance`]). The runtime drives it
//! from channels; `.slt` tests, the differential test and the benchmarks drive it
//! directly. A query's physical expressions and accumulators are planned once
//! (`sql::planner`) and live as long as the query.

pub mod aggregate;
pub mod session;
pub mod stateless;
pub mod watermark;
pub mod window;

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions,
};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};

use crate::error::{RecordError, RecordErrorKind, Result};
use crate::limits::{MAX_BATCH_ROWS, MAX_VALUE_BYTES, fmt_bytes, max_row_bytes, row_bytes};
use crate::render;
use aggregate::{AggregatePlan, WindowAggregate};
use session::SessionAggregate;
use stateless::{StatelessOp, apply_all};
use window::{Lateness, WindowSpec};

/// Where a query's input column comes from in the stream's decoded batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputColumn {
    /// A decoded column, by index.
    Stream(usize),
    /// The window time carrier (`window_start` / `window_end` before aggregation): the
    /// row's event time, which the window aggregate turns into window bounds.
    WindowTime,
}

/// A planned continuous query: immutable, shared by its running instance(s).
#[derive(Debug)]
pub struct QueryPlan {
    /// The stream the query reads.
    pub stream: String,
    /// Columns of the query's input, from the stream's decoded batch.
    pub input: Vec<InputColumn>,
    pub input_schema: SchemaRef,
    /// Index of the event-time column (TIMESTAMP(3)) in the decoded batch.
    pub time_index: usize,
    pub pre: Vec<StatelessOp>,
    pub aggregate: Option<Arc<AggregatePlan>>,
    pub post: Vec<StatelessOp>,
    pub output_schema: SchemaRef,
}

impl QueryPlan {
    pub fn window(&self) -> Option<WindowSpec> {
        self.aggregate.as_ref().map(|a| a.window)
    }
}

/// What one step of a query produced.
#[derive(Debug, Default)]
pub struct Emitted {
    pub batches: Vec<RecordBatch>,
    pub errors: Vec<RecordError>,
}

impl Emitted {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

enum Aggregator {
    Window(WindowAggregate),
    Session(SessionAggregate),
}

/// Counters a running query exposes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueryCounters {
    pub rows_in: u64,
    pub rows_out: u64,
    pub late: u64,
    pub errors: u64,
}

/// A running instance of a [`QueryPlan`] with its state.
pub struct Query {
    plan: Arc<QueryPlan>,
    aggregator: Option<Aggregator>,
    watermark: Option<i64>,
    pub counters: QueryCounters,
}

impl Query {
    pub fn new(plan: Arc<QueryPlan>) -> Result<Self> {
        let aggregator = match &plan.aggregate {
            None => None,
            Some(a) => Some(match a.window {
                WindowSpec::Session { .. } => {
                    Aggregator::Session(SessionAggregate::new(Arc::clone(a))?)
                }
                _ => Aggregator::Window(WindowAggregate::new(Arc::clone(a))?),
            }),
        };
        Ok(Query {
            plan,
            aggregator,
            watermark: None,
            counters: QueryCounters::default(),
        })
    }

    pub fn plan(&self) -> &Arc<QueryPlan> {
        &self.plan
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    /// Processes one decoded batch of the query's stream. Stateless queries emit at
    /// once; windowed ones emit when [`Query::advance`] closes windows.
    pub fn push(&mut self, batch: &RecordBatch, arrival_ms: i64) -> Result<Emitted> {
        let mut out = Emitted::default();
        // A batch is evaluated in slices of at most MAX_BATCH_ROWS: what a query makes
        // of a batch (a constant copied into every row, a function's output) is
        // bounded for batches that long.
        let mut start = 0;
        while start < batch.num_rows() {
            let len = MAX_BATCH_ROWS.min(batch.num_rows() - start);
            self.push_slice(&batch.slice(start, len), arrival_ms, &mut out)?;
            start += len;
        }
        Ok(out)
    }

    fn push_slice(
        &mut self,
        batch: &RecordBatch,
        arrival_ms: i64,
        out: &mut Emitted,
    ) -> Result<()> {
        self.counters.rows_in += batch.num_rows() as u64;
        let batch = self.split_late(batch, arrival_ms, out)?;
        let input = self.input(&batch)?;
        if let Err(e) = self.process(&input, out) {
            if !e.is_user() {
                return Err(e);
            }
            // Some record made an expression fail (a division by zero, a failed
            // CAST): find which, row by row, so only those go to the error output.
            for row in 0..input.num_rows() {
                if let Err(e) = self.process(&input.slice(row, 1), out) {
                    if !e.is_user() {
                        return Err(e);
                    }
                    self.counters.errors += 1;
                    out.errors.push(RecordError {
                        kind: RecordErrorKind::Eval,
                        reason: e.to_string(),
                        payload: row_as_json(&batch, row),
                        arrival_ms,
                    });
                }
            }
        }
        Ok(())
    }

    /// Runs the query's operators on its input columns.
    fn process(&mut self, input: &RecordBatch, out: &mut Emitted) -> Result<()> {
        let pre = apply_all(&self.plan.pre, input.clone())?;
        match &mut self.aggregator {
            None => {
                check_record_sizes(&pre)?;
                if pre.num_rows() > 0 {
                    self.counters.rows_out += pre.num_rows() as u64;
                    out.batches.push(pre);
                }
            }
            Some(Aggregator::Window(w)) => w.push(&pre)?,
            Some(Aggregator::Session(s)) => s.push(&pre)?,
        }
        Ok(())
    }

    /// Moves the watermark forward (never back) and emits the windows it closed.
    pub fn advance(&mut self, watermark: i64) -> Result<Emitted> {
        let mut out = Emitted::default();
        if self.watermark.is_some_and(|w| w >= watermark) {
            return Ok(out);
        }
        self.watermark = Some(watermark);
        let closed = match &mut self.aggregator {
            None => return Ok(out),
            Some(Aggregator::Window(w)) => w.advance(watermark)?,
            Some(Aggregator::Session(s)) => s.advance(watermark)?,
        };
        for batch in closed {
            let batch = apply_all(&self.plan.post, batch)?;
            if batch.num_rows() > 0 {
                self.counters.rows_out += batch.num_rows() as u64;
                out.batches.push(batch);
            }
        }
        Ok(out)
    }

    /// Bytes of window state held (keys and accumulators), for memory limits.
    pub fn state_size(&self) -> usize {
        match &self.aggregator {
            None => 0,
            Some(Aggregator::Window(w)) => w.state_size(),
            Some(Aggregator::Session(s)) => s.state_size(),
        }
    }

    /// Open windows (or sessions) holding state.
    pub fn open_windows(&self) -> usize {
        match &self.aggregator {
            None => 0,
            Some(Aggregator::Window(w)) => w.open_windows(),
            Some(Aggregator::Session(s)) => s.open_windows(),
        }
    }

    /// Separates records whose windows have all closed; they go to the error output
    /// whole, with the reason, so they can be replayed.
    fn split_late(
        &mut self,
        batch: &RecordBatch,
        arrival_ms: i64,
        out: &mut Emitted,
    ) -> Result<RecordBatch> {
        let (Some(window), Some(wm)) = (self.plan.window(), self.watermark) else {
            return Ok(batch.clone());
        };
        let times = batch
            .column(self.plan.time_index)
            .as_primitive::<TimestampMillisecondType>();
        let mut keep: Option<Vec<bool>> = None;
        for (i, t) in times.values().iter().enumerate() {
            let verdict = window.lateness(*t, wm);
            if verdict == Lateness::OnTime {
                continue;
            }
            let reason = match verdict {
                Lateness::Late => format!(
                    "late: event time {} is behind the watermark {} and its window has closed",
                    fmt_ts(*t),
                    fmt_ts(wm)
                ),
                _ => format!(
                    "late: event time {} is behind the watermark {}; counted only in its \
                     windows still open",
                    fmt_ts(*t),
                    fmt_ts(wm)
                ),
            };
            self.counters.late += 1;
            out.errors.push(RecordError {
                kind: RecordErrorKind::Late,
                reason,
                payload: row_as_json(batch, i),
                arrival_ms,
            });
            if verdict == Lateness::Late {
                keep.get_or_insert_with(|| vec![true; batch.num_rows()])[i] = false;
            }
        }
        match keep {
            None => Ok(batch.clone()),
            Some(keep) => Ok(filter_record_batch(batch, &BooleanArray::from(keep))?),
        }
    }

    /// Builds the query's input columns from the decoded batch.
    fn input(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = self
            .plan
            .input
            .iter()
            .map(|c| match c {
                InputColumn::Stream(i) => Arc::clone(batch.column(*i)),
                InputColumn::WindowTime => Arc::clone(batch.column(self.plan.time_index)),
            })
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.plan.input_schema),
            columns,
            &options,
        )?)
    }
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("stream", &self.plan.stream)
            .field("watermark", &self.watermark)
            .field("counters", &self.counters)
            .finish()
    }
}

/// Fails (a user error: [`Query::push`] then finds the record, row by row, and sends
/// it to the error output) when a result record is over [`MAX_VALUE_BYTES`]: a sink,
/// the WebSocket and the error output's payload would each have to carry it whole.
fn check_record_sizes(batch: &RecordBatch) -> Result<()> {
    let widest: usize = batch
        .columns()
        .iter()
        .map(|c| max_row_bytes(c.as_ref()))
        .sum();
    if widest <= MAX_VALUE_BYTES {
        return Ok(());
    }
    for row in 0..batch.num_rows() {
        let bytes: usize = batch
            .columns()
            .iter()
            .map(|c| row_bytes(c.as_ref(), row))
            .sum();
        if bytes > MAX_VALUE_BYTES {
            return Err(crate::error::Error::user(format!(
                "the query's result for this record is {}, more than the {} one result \
                 record may be",
                fmt_bytes(bytes as u128),
                fmt_bytes(MAX_VALUE_BYTES as u128)
            )));
        }
    }
    Ok(())
}

/// Renders a millisecond timestamp for messages and API fields (a watermark): RFC 3339
/// in UTC as [`crate::render`] writes every time, or `±inf` for the watermark of an
/// input that ended (or has not begun).
pub fn fmt_ts(ms: i64) -> String {
    match ms {
        i64::MAX => "+inf".to_string(),
        i64::MIN => "-inf".to_string(),
        _ => render::timestamp_ms(ms),
    }
}

/// One row of a batch as a JSON object (for error payloads), as sinks write rows.
fn row_as_json(batch: &RecordBatch, row: usize) -> String {
    render::row_json(batch, row).unwrap_or_default()
}

#[allow(dead_code)]
fn _array_marker(_: &dyn Array) {}
