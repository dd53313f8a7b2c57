//! Stateless operators: filters, projections and per-emission sorts, evaluated batch
//! by batch with DataFusion physical expressions planned once per query (engine).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::{filter_record_batch, lexsort_to_indices, take_record_batch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::cast::as_boolean_array;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr};

use crate::error::Result;

#[derive(Debug, Clone)]
pub enum StatelessOp {
    /// Keeps rows where the predicate is true (NULL counts as false, as in SQL).
    Filter(Arc<dyn PhysicalExpr>),
    /// Computes the output columns.
    Project {
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        schema: SchemaRef,
    },
    /// Orders the rows of each emitted batch (a window's results, for example).
    Sort(LexOrdering),
}

impl StatelessOp {
    pub fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        match self {
            StatelessOp::Filter(predicate) => {
                let array = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                let mask = as_boolean_array(&array)?;
                // Fast paths: most filters keep all or nothing of a batch now and then.
                match mask.true_count() {
                    n if n == batch.num_rows() && array.null_count() == 0 => Ok(batch),
                    0 => Ok(batch.slice(0, 0)),
                    _ => Ok(filter_record_batch(&batch, mask)?),
                }
            }
            StatelessOp::Project { exprs, schema } => {
                let n = batch.num_rows();
                let columns = exprs
                    .iter()
                    .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
                let options = RecordBatchOptions::new().with_row_count(Some(n));
                Ok(RecordBatch::try_new_with_options(
                    schema.clone(),
                    columns,
                    &options,
                )?)
            }
            StatelessOp::Sort(ordering) => {
                if batch.num_rows() < 2 {
                    return Ok(batch);
                }
                let columns = ordering
                    .iter()
                    .map(|s| s.evaluate_to_sort_column(&batch))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let indices = lexsort_to_indices(&columns, None)?;
                Ok(take_record_batch(&batch, &indices)?)
            }
        }
    }
}

/// Applies operators in order, stopping early when a batch empties.
pub fn apply_all(ops: &[StatelessOp], mut batch: RecordBatch) -> Result<RecordBatch> {
    for op in ops {
        if batch.num_rows() == 0 {
            break;
        }
        batch = op.apply(batch)?;
    }
    Ok(batch)
}
