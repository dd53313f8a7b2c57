//! Session windows (engine): per group key, events closer together than the gap share
//! one window `[first event, last event + gap)`; a late-arriving event can bridge two
//! sessions, which then merge.
//!
//! Sessions are few per key and merge, so each keeps DataFusion row `Accumulator`s
//! (mergeable through `state()` / `merge_batch`, the same path DataFusion uses between
//! partial and final aggregation). A batch is sorted by (key, time) first, so each run
//! of a key's close events updates its accumulators with one vectorized call.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;

use super::aggregate::{AggregatePlan, Inputs};
use super::window::WindowSpec;
use crate::error::{Error, Result};

struct Session {
    start: i64,
    /// Last event time + gap.
    end: i64,
    accumulators: Vec<Box<dyn Accumulator>>,
}

pub struct SessionAggregate {
    plan: Arc<AggregatePlan>,
    gap: i64,
    converter: RowConverter,
    /// Open sessions per key, sorted by start and never overlapping.
    sessions: HashMap<OwnedRow, Vec<Session>>,
    watermark: i64,
}

impl SessionAggregate {
    pub fn new(plan: Arc<AggregatePlan>) -> Result<Self> {
        let WindowSpec::Session { gap } = plan.window else {
            return Err(Error::internal("SessionAggregate needs a session window"));
        };
        let fields = plan
            .key_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(SessionAggregate {
            converter: RowConverter::new(fields)?,
            plan,
            gap,
            sessions: HashMap::new(),
            watermark: i64::MIN,
        })
    }

    fn new_accumulators(&self) -> Result<Vec<Box<dyn Accumulator>>> {
        self.plan
            .aggregates
            .iter()
            .map(|a| a.create_accumulator().map_err(Error::from))
            .collect()
    }

    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(());
        }
        let inputs = self.plan.evaluate_inputs(batch)?;
        let rows = self.converter.convert_columns(&inputs.keys)?;
        let times = inputs.time.values();
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by(|&a, &b| {
            rows.row(a as usize)
                .cmp(&rows.row(b as usize))
                .then(times[a as usize].cmp(&times[b as usize]))
        });
        let mut i = 0;
        while i < n {
            // One run: same key, each event within `gap` of the previous one.
            let first = order[i] as usize;
            let mut j = i + 1;
            while j < n {
                let (prev, next) = (order[j - 1] as usize, order[j] as usize);
                if rows.row(next) != rows.row(first) || times[next] >= times[prev] + self.gap {
                    break;
                }
                j += 1;
            }
            let run: Vec<u32> = order[i..j]
                .iter()
                .copied()
                .filter(|&r| times[r as usize] + self.gap > self.watermark)
                .collect();
            if !run.is_empty() {
                let start = times[run[0] as usize];
                let end = times[*run.last().expect("non-empty") as usize] + self.gap;
                let key = rows.row(first).owned();
                self.add_run(key, start, end, &inputs, &UInt32Array::from(run))?;
            }
            i = j;
        }
        Ok(())
    }

    /// Folds a run `[start, end)` into the key's sessions, merging every session it
    /// overlaps.
    fn add_run(
        &mut self,
        key: OwnedRow,
        start: i64,
        end: i64,
        inputs: &Inputs,
        rows: &UInt32Array,
    ) -> Result<()> {
        let fresh = self.new_accumulators()?;
        let list = self.sessions.entry(key).or_default();
        let mut merged = Session {
            start,
            end,
            accumulators: fresh,
        };
        // Take out every overlapping session and merge its state in.
        let mut k = 0;
        while k < list.len() {
            let s = &list[k];
            if s.start < merged.end && merged.start < s.end {
                let mut old = list.remove(k);
                merged.start = merged.start.min(old.start);
                merged.end = merged.end.max(old.end);
                for (into, from) in merged
                    .accumulators
                    .iter_mut()
                    .zip(old.accumulators.iter_mut())
                {
                    let state = from.state()?;
                    let arrays = state
                        .iter()
                        .map(ScalarValue::to_array)
                        .collect::<datafusion::error::Result<Vec<_>>>()?;
                    into.merge_batch(&arrays)?;
                }
            } else {
                k += 1;
            }
        }
        for (i, acc) in merged.accumulators.iter_mut().enumerate() {
            let mut args: Vec<ArrayRef> = inputs.args[i]
                .iter()
                .map(|a| take(a.as_ref(), rows, None))
                .collect::<Result<_, _>>()?;
            if let Some(f) = &inputs.filters[i] {
                // Row accumulators take no filter argument: apply FILTER (WHERE …) here.
                let mask = take(f, rows, None)?;
                let mask = datafusion::arrow::array::AsArray::as_boolean(&mask);
                args = args
                    .iter()
                    .map(|a| datafusion::arrow::compute::filter(a.as_ref(), mask))
                    .collect::<Result<_, _>>()?;
            }
            acc.update_batch(&args)?;
        }
        let at = list.partition_point(|s| s.start < merged.start);
        list.insert(at, merged);
        Ok(())
    }

    /// Moves the watermark and emits every session that closed, oldest end first.
    pub fn advance(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        self.watermark = self.watermark.max(watermark);
        let wm = self.watermark;
        let mut closed: Vec<(i64, i64, OwnedRow, Session)> = Vec::new();
        self.sessions.retain(|key, list| {
            let mut k = 0;
            while k < list.len() {
                if list[k].end <= wm {
                    let s = list.remove(k);
                    closed.push((s.end, s.start, key.clone(), s));
                } else {
                    k += 1;
                }
            }
            !list.is_empty()
        });
        if closed.is_empty() {
            return Ok(Vec::new());
        }
        closed.sort_by(|a, b| (a.0, a.1, a.2.row()).cmp(&(b.0, b.1, b.2.row())));
        // Everything one watermark closes is one emission (ordered by session end), so
        // ORDER BY sorts all of it, as it sorts a tumbling window's results.
        let rows = closed.len();
        let starts = TimestampMillisecondArray::from_iter_values(closed.iter().map(|c| c.1));
        let ends = TimestampMillisecondArray::from_iter_values(closed.iter().map(|c| c.0));
        let keys = self
            .converter
            .convert_rows(closed.iter().map(|c| c.2.row()))?;
        let mut values = Vec::with_capacity(self.plan.aggregates.len());
        for a in 0..self.plan.aggregates.len() {
            let scalars = closed
                .iter_mut()
                .map(|c| c.3.accumulators[a].evaluate())
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            values.push(ScalarValue::iter_to_array(scalars)?);
        }
        let out = vec![self.plan.output_batch_with_bounds(
            Arc::new(starts),
            Arc::new(ends),
            keys,
            values,
            rows,
        )?];
        Ok(out)
    }

    /// Bytes of session state held (an estimate: keys plus accumulators).
    pub fn state_size(&self) -> usize {
        self.sessions
            .iter()
            .map(|(k, list)| {
                k.as_ref().len()
                    + list
                        .iter()
                        .map(|s| 32 + s.accumulators.iter().map(|a| a.size()).sum::<usize>())
                        .sum::<usize>()
            })
            .sum()
    }

    pub fn open_windows(&self) -> usize {
        self.sessions.values().map(Vec::len).sum()
    }
}

impl std::fmt::Debug for SessionAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAggregate")
            .field("gap", &self.gap)
            .field("open_sessions", &self.open_windows())
            .finish()
    }
}
