//! A guard around every operator of an ad hoc query's physical plan (beside the data
//! flow, inside `adhoc`): what makes the query's time and memory limits hold for
//! every operator, not only for the rows the reply collects.
//!
//! ```text
//!  Sort ── Guard ── CrossJoin ── Guard ── Scan a
//!                       └─────── Guard ── Scan b
//! ```
//!
//! Every batch an operator hands up passes its guard, which
//! - fails the query once its deadline has passed or it was cancelled (the request
//!   went away), so an operator that pulls input in a loop (an aggregate over a cross
//!   join) stops at its next batch instead of running on after the reply;
//! - gives the tokio scheduler a turn when the task's budget is spent, so queries
//!   sharing the ad hoc executor's threads take turns;
//! - holds the batch's bytes in the query's memory pool until the next one, so an
//!   operator that allocates outside the pool (a projection, `unnest`, a scan)
//!   still counts against the query's memory;
//! - below an `unnest`, cuts each input batch so that what `unnest` makes of one
//!   piece stays small, and refuses a record that alone would make more than the
//!   whole memory limit (a large list beside a large value is copied once per
//!   element) before `unnest` allocates it.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::unnest::{ListUnnest, UnnestExec};
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::{Stream, StreamExt};

use crate::limits::{fmt_bytes, row_bytes};

/// What `unnest` makes of one piece of its input, at most (unless one record alone
/// makes more): a few batches' worth, so its output is never one huge batch.
const UNNEST_PIECE_BYTES: usize = 16 << 20;

/// When the query must stop, shared by all its guards.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    pub deadline: Instant,
    /// Set when the request is gone or its timeout fired outside the query.
    pub cancelled: Arc<AtomicBool>,
}

impl Stop {
    fn check(&self) -> Result<()> {
        if self.cancelled.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            // adhoc::run tells the user how long the query may run.
            return Err(DataFusionError::Execution(
                "the query was stopped at its time limit".to_string(),
            ));
        }
        Ok(())
    }
}

/// Puts a guard above every operator of `plan` (and, below an `unnest`, one that cuts
/// its input), with the limits of `stop` and the query's memory `limit_bytes`.
pub(crate) fn guard_plan(
    plan: Arc<dyn ExecutionPlan>,
    stop: &Stop,
    limit_bytes: usize,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        // Below an unnest: its input is cut to size. The guard above its input,
        // placed when that input was visited, is replaced by one that also cuts.
        let node = match node.downcast_ref::<UnnestExec>() {
            Some(unnest) => {
                let input = Arc::clone(unnest.input());
                let input = match input.downcast_ref::<GuardExec>() {
                    Some(g) => Arc::clone(&g.input),
                    None => input,
                };
                let cut = Arc::new(GuardExec::new(
                    input,
                    stop.clone(),
                    Some(UnnestCut {
                        lists: unnest.list_column_indices().to_vec(),
                        limit_bytes,
                    }),
                ));
                Arc::clone(&node).replace_children(
                    vec![cut],
                    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
                )?
            }
            None => node,
        };
        Ok(Transformed::yes(
            Arc::new(GuardExec::new(node, stop.clone(), None)) as Arc<dyn ExecutionPlan>,
        ))
    })
    .map(|t| t.data)
}

/// How to cut the input of an `unnest`.
#[derive(Debug, Clone)]
struct UnnestCut {
    lists: Vec<ListUnnest>,
    limit_bytes: usize,
}

/// The guard: see the module docs.
#[derive(Debug)]
pub(crate) struct GuardExec {
    input: Arc<dyn ExecutionPlan>,
    stop: Stop,
    cut: Option<UnnestCut>,
}

impl GuardExec {
    fn new(input: Arc<dyn ExecutionPlan>, stop: Stop, cut: Option<UnnestCut>) -> Self {
        GuardExec { input, stop, cut }
    }
}

impl DisplayAs for GuardExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuardExec")
    }
}

impl ExecutionPlan for GuardExec {
    fn name(&self) -> &str {
        "GuardExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "GuardExec has one input".to_string(),
            ));
        }
        Ok(Arc::new(GuardExec::new(
            children.swap_remove(0),
            self.stop.clone(),
            self.cut.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        self.stop.check()?;
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let reservation = MemoryConsumer::new(format!("{} output", self.input.name()))
            .register(context.memory_pool());
        Ok(Box::pin(GuardStream {
            schema: input.schema(),
            input,
            stop: self.stop.clone(),
            cut: self.cut.clone(),
            pending: None,
            reservation,
        }))
    }
}

struct GuardStream {
    schema: SchemaRef,
    input: SendableRecordBatchStream,
    stop: Stop,
    cut: Option<UnnestCut>,
    /// Pieces of a cut batch not handed up yet: the batch and where each piece ends.
    pending: Option<(RecordBatch, Vec<usize>, usize)>,
    /// The bytes of the batch last handed up.
    reservation: MemoryReservation,
}

impl GuardStream {
    /// Holds `batch`'s bytes in the pool (releasing the previous batch's) and hands
    /// it up.
    fn hand_up(&mut self, batch: RecordBatch) -> Poll<Option<Result<RecordBatch>>> {
        let bytes = batch
            .columns()
            .iter()
            .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
            .sum();
        match self.reservation.try_resize(bytes) {
            Ok(()) => Poll::Ready(Some(Ok(batch))),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    /// The next piece of the batch being cut.
    fn next_piece(&mut self) -> Option<RecordBatch> {
        let (batch, ends, next) = self.pending.as_mut()?;
        let start = if *next == 0 { 0 } else { ends[*next - 1] };
        let piece = batch.slice(start, ends[*next] - start);
        *next += 1;
        if *next == ends.len() {
            self.pending = None;
        }
        Some(piece)
    }
}

impl Stream for GuardStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Err(e) = self.stop.check() {
            return Poll::Ready(Some(Err(e)));
        }
        // A turn for the other tasks when this one has used its budget.
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        if let Some(piece) = self.next_piece() {
            coop.made_progress();
            return self.hand_up(piece);
        }
        let polled = self.input.poll_next_unpin(cx);
        if polled.is_ready() {
            coop.made_progress();
        }
        match polled {
            Poll::Ready(Some(Ok(batch))) => match &self.cut {
                None => self.hand_up(batch),
                Some(cut) => match cut.pieces(&batch) {
                    Err(e) => Poll::Ready(Some(Err(e))),
                    Ok(ends) => {
                        self.pending = Some((batch, ends, 0));
                        match self.next_piece() {
                            Some(piece) => self.hand_up(piece),
                            None => Poll::Ready(Some(Ok(RecordBatch::new_empty(Arc::clone(
                                &self.schema,
                            ))))),
                        }
                    }
                },
            },
            Poll::Ready(None) => {
                self.reservation.free();
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

impl RecordBatchStream for GuardStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

impl UnnestCut {
    /// Where to cut `batch` (the end row of each piece), so that what `unnest` makes
    /// of each piece is about [`UNNEST_PIECE_BYTES`]; fails on a record that alone
    /// would make more than the query's memory.
    fn pieces(&self, batch: &RecordBatch) -> Result<Vec<usize>> {
        let unnested: Vec<usize> = self.lists.iter().map(|l| l.index_in_input_schema).collect();
        let mut ends = Vec::new();
        let mut piece = 0usize;
        for row in 0..batch.num_rows() {
            // Every element of the longest list is a row, and each such row copies
            // the record's other columns.
            let rows = self
                .lists
                .iter()
                .map(|l| {
                    elements(
                        batch.column(l.index_in_input_schema).as_ref(),
                        row,
                        row + 1,
                        l.depth,
                    )
                })
                .max()
                .unwrap_or(1)
                .max(1);
            let (mut copied, mut own) = (0usize, 0usize);
            for (i, c) in batch.columns().iter().enumerate() {
                let b = row_bytes(c.as_ref(), row);
                if unnested.contains(&i) {
                    own += b;
                } else {
                    copied += b;
                }
            }
            let made = (rows as u128) * (copied as u128 + 8) + own as u128;
            if made > self.limit_bytes as u128 {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "unnest would make {rows} rows ({}) of one record, more than the {} the \
                     query may use",
                    fmt_bytes(made),
                    fmt_bytes(self.limit_bytes as u128)
                )));
            }
            if piece > 0 && piece as u128 + made > UNNEST_PIECE_BYTES as u128 {
                ends.push(row);
                piece = 0;
            }
            piece += made as usize;
        }
        if batch.num_rows() > 0 {
            ends.push(batch.num_rows());
        }
        Ok(ends)
    }
}

/// The elements of rows `start..end` of a list column, `depth` levels down (what
/// `unnest` at that depth turns into rows); for other types, the rows themselves.
fn elements(array: &dyn Array, start: usize, end: usize, depth: usize) -> usize {
    if depth == 0 {
        return end - start;
    }
    let (values, from, to) = match array.data_type() {
        DataType::List(_) => {
            let l = array.as_list::<i32>();
            let o = l.value_offsets();
            (l.values(), o[start] as usize, o[end] as usize)
        }
        DataType::LargeList(_) => {
            let l = array.as_list::<i64>();
            let o = l.value_offsets();
            (l.values(), o[start] as usize, o[end] as usize)
        }
        DataType::FixedSizeList(_, n) => {
            let l = array.as_fixed_size_list();
            let n = *n as usize;
            (l.values(), start * n, end * n)
        }
        _ => return end - start,
    };
    elements(values.as_ref(), from, to, depth - 1)
}
