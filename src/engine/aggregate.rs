//! Windowed group-by aggregation for tumbling and hopping windows (engine).
//!
//! DataFusion's own aggregation emits a group only when input ends or the next ordered
//! key arrives, and has no notion of a watermark; so this operator keeps state per open
//! window and emits a window exactly once, when the watermark passes its end. Inside a
//! window it reuses DataFusion's machinery: [`GroupValues`] interns group keys and
//! every aggregate runs through its vectorized `GroupsAccumulator` (or the adapter over
//! its row `Accumulator`), so every DataFusion aggregate works in a window.
//!
//! State is one `WindowState` per open window: nothing is kept for closed windows, and
//! a window's accumulators can be snapshotted as Arrow arrays (`GroupsAccumulator::state`)
//! for checkpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions,
    TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::aggregates::group_values::{GroupValues, new_group_values};
use datafusion::physical_plan::aggregates::order::GroupOrdering;

use super::window::{WindowSpec, align};
use crate::error::{Error, Result};

/// One output column of the aggregate, in the planner's order.
#[derive(Debug, Clone)]
pub enum GroupKey {
    WindowStart,
    WindowEnd,
    /// An ordinary GROUP BY expression: index into the key columns.
    Key(usize),
}

/// What a windowed aggregate computes; planned once, shared by operator instances.
#[derive(Debug)]
pub struct AggregatePlan {
    pub window: WindowSpec,
    /// Evaluates a row's event time (ms) on the aggregate's input.
    pub time: Arc<dyn PhysicalExpr>,
    /// Output order of the group columns.
    pub group_layout: Vec<GroupKey>,
    /// Non-window GROUP BY expressions, on the aggregate's input.
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Schema of the key columns (for interning).
    pub key_schema: SchemaRef,
    pub aggregates: Vec<Arc<AggregateFunctionExpr>>,
    /// `FILTER (WHERE …)` of each aggregate.
    pub filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// Group columns then aggregate columns, as DataFusion's plan names them.
    pub output_schema: SchemaRef,
}

impl AggregatePlan {
    pub fn new_accumulators(&self) -> Result<Vec<Box<dyn GroupsAccumulator>>> {
        self.aggregates
            .iter()
            .map(|a| -> Result<Box<dyn GroupsAccumulator>> {
                if a.groups_accumulator_supported() {
                    Ok(a.create_groups_accumulator()?)
                } else {
                    let a = Arc::clone(a);
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        a.create_accumulator()
                    })))
                }
            })
            .collect()
    }

    /// Evaluates the per-row inputs every window operator needs.
    pub(crate) fn evaluate_inputs(&self, batch: &RecordBatch) -> Result<Inputs> {
        let n = batch.num_rows();
        let time = self.time.evaluate(batch)?.into_array(n)?;
        let time = time
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or_else(|| Error::internal("window time column is not TIMESTAMP(3)"))?
            .clone();
        let keys = self
            .keys
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let mut args = Vec::with_capacity(self.aggregates.len());
        for a in &self.aggregates {
            // Arguments, then ORDER BY columns: order-sensitive aggregates
            // (first_value, array_agg … ORDER BY) sort their own input, as in
            // DataFusion's own aggregation.
            let exprs = a
                .expressions()
                .into_iter()
                .chain(a.order_bys().iter().map(|o| Arc::clone(&o.expr)));
            args.push(
                exprs
                    .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::error::Result<Vec<_>>>()?,
            );
        }
        let filters = self
            .filters
            .iter()
            .map(|f| match f {
                None => Ok(None),
                Some(f) => {
                    let v = f.evaluate(batch)?.into_array(n)?;
                    Ok(Some(v.as_boolean().clone()))
                }
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        Ok(Inputs {
            time,
            keys,
            args,
            filters,
        })
    }

    /// Builds the output batch of one closed window from its key and value columns.
    pub(crate) fn output_batch(
        &self,
        start: i64,
        end: i64,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<RecordBatch> {
        let starts = Arc::new(TimestampMillisecondArray::from_value(start, rows));
        let ends = Arc::new(TimestampMillisecondArray::from_value(end, rows));
        self.output_batch_with_bounds(starts, ends, keys, values, rows)
    }

    /// Like [`AggregatePlan::output_batch`], with bounds per row (sessions).
    pub(crate) fn output_batch_with_bounds(
        &self,
        starts: ArrayRef,
        ends: ArrayRef,
        keys: Vec<ArrayRef>,
        values: Vec<ArrayRef>,
        rows: usize,
    ) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.output_schema.fields().len());
        for g in &self.group_layout {
            columns.push(match g {
                GroupKey::WindowStart => Arc::clone(&starts),
                GroupKey::WindowEnd => Arc::clone(&ends),
                GroupKey::Key(i) => Arc::clone(&keys[*i]),
            });
        }
        columns.extend(values);
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            Arc::clone(&self.output_schema),
            columns,
            &options,
        )?)
    }
}

/// The evaluated inputs of one batch.
pub(crate) struct Inputs {
    pub time: TimestampMillisecondArray,
    pub keys: Vec<ArrayRef>,
    pub args: Vec<Vec<ArrayRef>>,
    pub filters: Vec<Option<BooleanArray>>,
}

impl Inputs {
    /// The subset of rows at `indices`.
    fn take(&self, indices: &UInt32Array) -> Result<Inputs> {
        let t = |a: &ArrayRef| take(a.as_ref(), indices, None);
        Ok(Inputs {
            time: take(&self.time, indices, None)?.as_primitive().clone(),
            keys: self.keys.iter().map(t).collect::<Result<_, _>>()?,
            args: self
                .args
                .iter()
                .map(|v| v.iter().map(t).collect::<Result<Vec<_>, _>>())
                .collect::<Result<_, _>>()?,
            filters: self
                .filters
                .iter()
                .map(|f| {
                    f.as_ref()
                        .map(|f| take(f, indices, None).map(|a| a.as_boolean().clone()))
                        .transpose()
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

/// Accumulator state of one open window.
struct WindowState {
    groups: Box<dyn GroupValues>,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
    group_ids: Vec<usize>,
}

impl WindowState {
    fn new(plan: &AggregatePlan) -> Result<Self> {
        Ok(WindowState {
            groups: new_group_values(Arc::clone(&plan.key_schema), &GroupOrdering::None)?,
            accumulators: plan.new_accumulators()?,
            group_ids: Vec::new(),
        })
    }

    fn update(&mut self, inputs: &Inputs) -> Result<()> {
        self.group_ids.clear();
        self.groups.intern(&inputs.keys, &mut self.group_ids)?;
        let total = self.groups.len();
        for (i, acc) in self.accumulators.iter_mut().enumerate() {
            acc.update_batch(
                &inputs.args[i],
                &self.group_ids,
                inputs.filters[i].as_ref(),
                total,
            )?;
        }
        Ok(())
    }

    fn size(&self) -> usize {
        self.groups.size() + self.accumulators.iter().map(|a| a.size()).sum::<usize>()
    }
}

/// Tumbling / hopping window aggregation driven by watermarks.
pub struct WindowAggregate {
    plan: Arc<AggregatePlan>,
    size: i64,
    slide: i64,
    /// Open windows by start time; a BTreeMap so closing walks them in time order.
    windows: BTreeMap<i64, WindowState>,
    watermark: i64,
}

impl WindowAggregate {
    pub fn new(plan: Arc<AggregatePlan>) -> Result<Self> {
        let (size, slide) = match plan.window {
            WindowSpec::Tumble { size } => (size, size),
            WindowSpec::Hop { slide, size } => (size, slide),
            WindowSpec::Session { .. } => {
                return Err(Error::internal("session windows use SessionAggregate"));
            }
        };
        Ok(WindowAggregate {
            plan,
            size,
            slide,
            windows: BTreeMap::new(),
            watermark: i64::MIN,
        })
    }

    /// Adds a batch of the aggregate's input. Windows already closed are skipped: the
    /// query's input stage has reported those records as late.
    pub fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let inputs = self.plan.evaluate_inputs(batch)?;
        let times = inputs.time.values();
        let lanes = self.plan.window.lanes();
        let mut starts: Vec<i64> = vec![0; times.len()];
        for lane in 0..lanes {
            let back = lane * self.slide;
            for (s, &t) in starts.iter_mut().zip(times.iter()) {
                *s = align(t, self.slide) - back;
            }
            self.push_lane(&inputs, &starts)?;
        }
        Ok(())
    }

    /// Routes each row to the window starting at `starts[row]`, skipping windows that
    /// do not hold the row (uneven hops) or have closed.
    fn push_lane(&mut self, inputs: &Inputs, starts: &[i64]) -> Result<()> {
        let times = inputs.time.values();
        let (size, wm) = (self.size, self.watermark);
        let usable = |i: usize| starts[i] + size > times[i] && starts[i] + size > wm;
        let first = starts[0];
        // Fast path: the whole batch falls in one open window (the common case for
        // in-order data).
        if starts.iter().all(|&s| s == first) && (0..starts.len()).all(usable) {
            return self.window(first)?.update(inputs);
        }
        let mut by_window: Vec<(i64, Vec<u32>)> = Vec::new();
        for (i, &s) in starts.iter().enumerate() {
            if !usable(i) {
                continue;
            }
            match by_window.iter_mut().find(|(w, _)| *w == s) {
                Some((_, rows)) => rows.push(i as u32),
                None => by_window.push((s, vec![i as u32])),
            }
        }
        for (start, rows) in by_window {
            let subset = inputs.take(&UInt32Array::from(rows))?;
            self.window(start)?.update(&subset)?;
        }
        Ok(())
    }

    fn window(&mut self, start: i64) -> Result<&mut WindowState> {
        if !self.windows.contains_key(&start) {
            self.windows.insert(start, WindowState::new(&self.plan)?);
        }
        Ok(self.windows.get_mut(&start).expect("inserted above"))
    }

    /// Moves the watermark and returns the results of every window it closed, oldest
    /// first.
    pub fn advance(&mut self, watermark: i64) -> Result<Vec<RecordBatch>> {
        self.watermark = self.watermark.max(watermark);
        let mut out = Vec::new();
        while let Some(entry) = self.windows.first_entry() {
            let start = *entry.key();
            let end = start.saturating_add(self.size);
            if end > self.watermark {
                break;
            }
            let mut state = entry.remove();
            let rows = state.groups.len();
            if rows == 0 {
                continue;
            }
            let keys = state.groups.emit(EmitTo::All)?;
            let values = state
                .accumulators
                .iter_mut()
                .map(|a| a.evaluate(EmitTo::All))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            out.push(self.plan.output_batch(start, end, keys, values, rows)?);
        }
        Ok(out)
    }

    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// Bytes of accumulator and key state held.
    pub fn state_size(&self) -> usize {
        self.windows.values().map(WindowState::size).sum()
    }

    pub fn open_groups(&self) -> usize {
        self.windows.values().map(|w| w.groups.len()).sum()
    }
}

impl std::fmt::Debug for WindowAggregate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowAggregate")
            .field("window", &self.plan.window)
            .field("open_windows", &self.windows.len())
            .finish()
    }
}

/// `Array` is used through `dyn` in closures above.
#[allow(dead_code)]
fn _uses(_: &dyn Array) {}
