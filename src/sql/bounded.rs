//! Functions whose output size a number in the SQL decides, checked before they run
//! (sql layer: registered in every session that plans user SQL, the continuous
//! planner's and each ad hoc query's).
//!
//! `repeat(deviceIP, 100000000)` makes 1.2 GB for one record, and two such records in
//! a batch overflow Arrow's 32-bit string offsets, which panics; `range(0, 3e8)` makes
//! a 2.4 GB list. Neither allocation goes through a memory pool. So `repeat`, `lpad`,
//! `rpad`, `replace`, `array_repeat`, `array_resize`, `range` and `generate_series`
//! are DataFusion's own, wrapped: before a call runs, the bytes it would make are
//! computed from its arguments, record by record, and a call that would make a value
//! over [`MAX_VALUE_BYTES`], or over [`MAX_BATCH_VALUE_BYTES`] for the whole batch,
//! fails with an error that says so. In a continuous query that error sends the
//! record to the error output (a batch over the limit is retried record by record);
//! in ad hoc SQL it ends the query. A call on constants fails at planning, where
//! DataFusion folds it.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::preimage::PreimageResult;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExpressionPlacement, ReturnFieldArgs, ScalarFunctionArgs,
    ScalarUDF, ScalarUDFImpl, Signature, StructFieldMapping,
};

use datafusion::physical_expr::PhysicalExpr;

use crate::limits::{
    MAX_BATCH_VALUE_BYTES, MAX_CONSTANT_BYTES, MAX_VALUE_BYTES, fmt_bytes, row_bytes,
};

/// How a wrapped function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: the text n times.
    Repeat,
    /// `lpad(text, n [, fill])`, `rpad`: n characters.
    Pad,
    /// `replace(text, from, to)`: every `from` becomes `to`.
    Replace,
    /// `array_repeat(value, n)`: a list of n values.
    ArrayRepeat,
    /// `array_resize(list, n [, value])`: a list of n values.
    Resize,
    /// `range(…)`, `generate_series(…)`: a list from start to stop by step.
    Series,
}

const WRAPPED: [(&str, Growth); 8] = [
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::Resize),
    ("range", Growth::Series),
    ("generate_series", Growth::Series),
];

/// The bounded versions of the functions in `functions` (a session's scalar
/// functions by name), to register over them.
pub fn bounded_functions(
    functions: &std::collections::HashMap<String, Arc<ScalarUDF>>,
) -> Vec<ScalarUDF> {
    WRAPPED
        .iter()
        .filter_map(|(name, growth)| {
            let inner = functions.get(*name)?;
            Some(ScalarUDF::new_from_impl(Bounded {
                inner: Arc::clone(inner),
                growth: *growth,
            }))
        })
        .collect()
}

/// One of DataFusion's functions, with its output size checked first.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    growth: Growth,
}

impl Bounded {
    fn f(&self) -> &dyn ScalarUDFImpl {
        self.inner.inner().as_ref()
    }

    /// Fails when the call would make a value over [`MAX_VALUE_BYTES`] for one
    /// record, or over [`MAX_BATCH_VALUE_BYTES`] for all of them.
    fn check(&self, args: &[ColumnarValue], number_rows: usize) -> Result<()> {
        // On constants the call makes one value, which its consumer copies into
        // every row.
        let all_scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let (rows, copies) = if all_scalar {
            (1, number_rows.max(1) as u128)
        } else {
            (number_rows, 1)
        };
        let mut total: u128 = 0;
        for row in 0..rows {
            let bytes = self.bytes(args, row);
            if bytes > MAX_VALUE_BYTES as u128 {
                return exec_err!(
                    "{} would make a value of {} for this record, more than the {} one value \
                     may hold",
                    self.f().name(),
                    fmt_bytes(bytes),
                    fmt_bytes(MAX_VALUE_BYTES as u128)
                );
            }
            total += bytes * copies;
        }
        if total > MAX_BATCH_VALUE_BYTES as u128 {
            return exec_err!(
                "{} would make {} for {rows} records together, more than the {} one call may \
                 make at once",
                self.f().name(),
                fmt_bytes(total),
                fmt_bytes(MAX_BATCH_VALUE_BYTES as u128)
            );
        }
        Ok(())
    }

    /// An upper bound of the bytes the call makes for `row` (0 when an argument is
    /// null or of a form the function itself refuses).
    fn bytes(&self, args: &[ColumnarValue], row: usize) -> u128 {
        let n = |i: usize| args.get(i).and_then(|a| int_at(a, row));
        let count = |i: usize| n(i).map_or(0, |n| n.max(0) as u128);
        match self.growth {
            Growth::Repeat => text_at(&args[0], row).map_or(0, |(len, _)| len) * count(1),
            Growth::Pad => {
                // Up to 4 bytes a character, unless both texts are ASCII.
                let ascii = [0, 2].iter().all(|&i| {
                    args.get(i)
                        .and_then(|a| text_at(a, row))
                        .is_none_or(|t| t.1)
                });
                count(1) * if ascii { 1 } else { 4 }
            }
            Growth::Replace => {
                let (Some(s), Some(from), Some(to)) = (
                    text_at(&args[0], row),
                    args.get(1).and_then(|a| text_at(a, row)),
                    args.get(2).and_then(|a| text_at(a, row)),
                ) else {
                    return 0;
                };
                let (s, from, to) = (s.0, from.0, to.0);
                // An empty `from` matches between every two characters.
                let matches = s.checked_div(from).unwrap_or(s + 1);
                s + matches * to.saturating_sub(from)
            }
            Growth::ArrayRepeat => count(1) * value_bytes(&args[0], row),
            Growth::Resize => {
                let element = match args[0].data_type() {
                    DataType::List(f) | DataType::LargeList(f) => {
                        f.data_type().primitive_width().unwrap_or(16)
                    }
                    _ => 16,
                };
                count(1) * element as u128
            }
            Growth::Series => series_len(args, row).saturating_mul(8),
        }
    }
}

/// Refuses a constant in `expr` larger than [`MAX_CONSTANT_BYTES`]: evaluating the
/// expression copies it into every row of a batch.
pub fn check_constants(expr: &Arc<dyn PhysicalExpr>) -> crate::error::Result<()> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::physical_expr::expressions::Literal;
    let mut found = None;
    expr.apply(|e| {
        if let Some(l) = e.downcast_ref::<Literal>() {
            let bytes = match l.value() {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => s.len(),
                ScalarValue::Binary(Some(b))
                | ScalarValue::LargeBinary(Some(b))
                | ScalarValue::BinaryView(Some(b)) => b.len(),
                v => v.size(),
            };
            if bytes > MAX_CONSTANT_BYTES {
                found = Some(bytes);
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    match found {
        Some(bytes) => Err(crate::error::Error::user(format!(
            "the query holds a constant of {} (a literal, or a call on constants such as \
             repeat('x', 100000)), more than the {} a constant may be: it would be copied \
             into every row",
            fmt_bytes(bytes as u128),
            fmt_bytes(MAX_CONSTANT_BYTES as u128)
        ))),
        None => Ok(()),
    }
}

/// The number of values `range` / `generate_series` makes for `row` (at most; 0
/// when it cannot be told, and the function refuses those arguments itself).
fn series_len(args: &[ColumnarValue], row: usize) -> u128 {
    let at = |i: usize| args.get(i).and_then(|a| scalar_at(a, row));
    match args.len() {
        1 => at(0).and_then(|v| int(&v)).map_or(0, |n| n.max(0) as u128),
        2 => match (at(0).and_then(|v| int(&v)), at(1).and_then(|v| int(&v))) {
            (Some(a), Some(b)) if b > a => (b as i128 - a as i128) as u128 + 1,
            _ => 0,
        },
        _ => {
            let (Some(start), Some(stop), Some(step)) = (at(0), at(1), at(2)) else {
                return 0;
            };
            let (span, step) = match (int(&start), int(&stop), int(&step)) {
                (Some(a), Some(b), Some(s)) => (b as i128 - a as i128, s as i128),
                _ => match (nanos(&start), nanos(&stop), shortest_step(&step)) {
                    (Some(a), Some(b), Some(s)) => (b - a, s),
                    _ => return 0,
                },
            };
            if step == 0 || (span != 0 && (span > 0) != (step > 0)) {
                return 0;
            }
            (span / step).unsigned_abs() + 1
        }
    }
}

fn int(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int8(Some(v)) => Some(*v as i64),
        ScalarValue::Int16(Some(v)) => Some(*v as i64),
        ScalarValue::Int32(Some(v)) => Some(*v as i64),
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::UInt8(Some(v)) => Some(*v as i64),
        ScalarValue::UInt16(Some(v)) => Some(*v as i64),
        ScalarValue::UInt32(Some(v)) => Some(*v as i64),
        ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok().or(Some(i64::MAX)),
        _ => None,
    }
}

/// A date or timestamp in nanoseconds since the epoch.
fn nanos(v: &ScalarValue) -> Option<i128> {
    Some(match v {
        ScalarValue::Date32(Some(d)) => *d as i128 * 86_400_000_000_000,
        ScalarValue::Date64(Some(ms)) => *ms as i128 * 1_000_000,
        ScalarValue::TimestampSecond(Some(s), _) => *s as i128 * 1_000_000_000,
        ScalarValue::TimestampMillisecond(Some(ms), _) => *ms as i128 * 1_000_000,
        ScalarValue::TimestampMicrosecond(Some(us), _) => *us as i128 * 1_000,
        ScalarValue::TimestampNanosecond(Some(ns), _) => *ns as i128,
        _ => return None,
    })
}

/// The shortest time an interval step can be, in nanoseconds, signed: a month is at
/// least 28 days, a day at least 23 hours (a daylight-saving change). `None` when its
/// parts have different signs.
fn shortest_step(v: &ScalarValue) -> Option<i128> {
    const DAY: i128 = 23 * 3_600_000_000_000;
    let (months, days, ns) = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) => {
            (i.months as i128, i.days as i128, i.nanoseconds as i128)
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            (0, i.days as i128, i.milliseconds as i128 * 1_000_000)
        }
        ScalarValue::IntervalYearMonth(Some(m)) => (*m as i128, 0, 0),
        _ => return None,
    };
    let parts = [months, days, ns];
    let positive = parts.iter().all(|&p| p >= 0);
    let negative = parts.iter().all(|&p| p <= 0);
    if !(positive || negative) {
        return None;
    }
    Some(months * 28 * DAY + days * DAY + ns)
}

fn scalar_at(v: &ColumnarValue, row: usize) -> Option<ScalarValue> {
    match v {
        ColumnarValue::Scalar(s) => Some(s.clone()),
        ColumnarValue::Array(a) if a.is_null(row) => None,
        ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row).ok(),
    }
}

fn int_at(v: &ColumnarValue, row: usize) -> Option<i64> {
    match v {
        ColumnarValue::Array(a) => match a.as_primitive_opt::<Int64Type>() {
            Some(ints) if ints.is_null(row) => None,
            Some(ints) => Some(ints.value(row)),
            None => scalar_at(v, row).and_then(|s| int(&s)),
        },
        ColumnarValue::Scalar(s) => int(s),
    }
}

/// A text argument's length in bytes and whether it is ASCII.
fn text_at(v: &ColumnarValue, row: usize) -> Option<(u128, bool)> {
    let s: &str = match v {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)),
        ) => s,
        ColumnarValue::Scalar(_) => return None,
        ColumnarValue::Array(a) if a.is_null(row) => return None,
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().value(row),
            DataType::LargeUtf8 => a.as_string::<i64>().value(row),
            DataType::Utf8View => a.as_string_view().value(row),
            _ => return None,
        },
    };
    Some((s.len() as u128, s.is_ascii()))
}

/// The bytes one value takes, as an element of a list.
fn value_bytes(v: &ColumnarValue, row: usize) -> u128 {
    match v {
        ColumnarValue::Scalar(s) => match (s.data_type().primitive_width(), text_at(v, row)) {
            (Some(width), _) => width as u128,
            (None, Some((len, _))) => len + 4,
            // The in-memory size of the value (with the enum around it): a bound.
            (None, None) => s.size() as u128,
        },
        ColumnarValue::Array(a) => row_bytes(a.as_ref(), row) as u128,
    }
}

/// Everything but the call itself is DataFusion's function, unchanged.
impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.f().name()
    }
    fn aliases(&self) -> &[String] {
        self.f().aliases()
    }
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.f().schema_name(args)
    }
    fn signature(&self) -> &Signature {
        self.f().signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.f().return_type(arg_types)
    }
    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.f().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(Bounded {
            inner: Arc::new(inner),
            growth: self.growth,
        }))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.f().return_field_from_args(args)
    }
    fn is_strict(&self) -> bool {
        self.f().is_strict()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args.args, args.number_rows)?;
        self.f().invoke_with_args(args)
    }
    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.f().simplify(args, info)
    }
    fn preimage(
        &self,
        args: &[Expr],
        lit_expr: &Expr,
        info: &SimplifyContext,
    ) -> Result<PreimageResult> {
        self.f().preimage(args, lit_expr, info)
    }
    fn short_circuits(&self) -> bool {
        self.f().short_circuits()
    }
    fn conditional_arguments<'a>(
        &self,
        args: &'a [Expr],
    ) -> Option<(Vec<&'a Expr>, Vec<&'a Expr>)> {
        self.f().conditional_arguments(args)
    }
    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.f().evaluate_bounds(input)
    }
    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.f().propagate_constraints(interval, inputs)
    }
    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.f().output_ordering(inputs)
    }
    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.f().preserves_lex_ordering(inputs)
    }
    fn strictly_order_preserving(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.f().strictly_order_preserving(inputs)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.f().coerce_types(arg_types)
    }
    fn struct_field_mapping(
        &self,
        literal_args: &[Option<ScalarValue>],
    ) -> Option<StructFieldMapping> {
        self.f().struct_field_mapping(literal_args)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.f().documentation()
    }
    fn placement(&self, args: &[ExpressionPlacement]) -> ExpressionPlacement {
        self.f().placement(args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    fn ctx() -> SessionContext {
        let ctx = SessionContext::new();
        for f in bounded_functions(ctx.state().scalar_functions()) {
            ctx.register_udf(f);
        }
        ctx
    }

    async fn run(ctx: &SessionContext, sql: &str) -> std::result::Result<usize, String> {
        let df = ctx.sql(sql).await.map_err(|e| e.to_string())?;
        let batches = df.collect().await.map_err(|e| e.to_string())?;
        Ok(batches.iter().map(|b| b.num_rows()).sum())
    }

    #[tokio::test]
    async fn within_the_limits_the_functions_work_as_before() {
        let ctx = ctx();
        for (sql, rows) in [
            (
                "SELECT repeat('ab', 3), lpad('x', 5, 'é'), rpad('x', 5), replace('aaa', 'a', 'bb')",
                1,
            ),
            (
                "SELECT array_repeat(1, 3), array_resize([1, 2], 5, 0), range(10), range(1, 10, 2)",
                1,
            ),
            (
                "SELECT generate_series(DATE '2024-01-01', DATE '2024-03-01', INTERVAL '1' DAY)",
                1,
            ),
            (
                "SELECT range(TIMESTAMP '2024-01-01', TIMESTAMP '2024-01-02', INTERVAL '1' HOUR)",
                1,
            ),
            (
                "SELECT repeat(column1, 1000000) FROM (VALUES ('abc'), ('de'))",
                2,
            ),
        ] {
            assert_eq!(run(&ctx, sql).await, Ok(rows), "{sql}");
        }
    }

    #[tokio::test]
    async fn beyond_them_each_fails_before_it_allocates() {
        let ctx = ctx();
        let cases = [
            (
                "SELECT repeat('192.168.1.10', 100000000)",
                "repeat would make a value of 1.1 GB",
            ),
            (
                "SELECT lpad('x', 2000000000)",
                "lpad would make a value of 1.9 GB",
            ),
            (
                "SELECT rpad('x', 20000000, 'é')",
                "rpad would make a value of 76 MB",
            ),
            (
                "SELECT replace(repeat('a', 10000), 'a', repeat('b', 10000))",
                "replace would make a value of 95 MB",
            ),
            (
                "SELECT array_repeat(1, 100000000)",
                "array_repeat would make a value of 763 MB",
            ),
            (
                "SELECT array_resize([1], 100000000, 0)",
                "array_resize would make a value of 763 MB",
            ),
            (
                "SELECT range(0, 300000000)",
                "range would make a value of 2.2 GB",
            ),
            (
                "SELECT unnest(range(0, 300000000))",
                "range would make a value of 2.2 GB",
            ),
            (
                "SELECT generate_series(1, 9000000000000000000, 1)",
                "generate_series would make",
            ),
            (
                "SELECT range(TIMESTAMP '2000-01-01', TIMESTAMP '2024-01-01', INTERVAL '1' SECOND)",
                "range would make a value of 5.6 GB",
            ),
        ];
        for (sql, expected) in cases {
            let err = run(&ctx, sql).await.expect_err(sql);
            assert!(err.contains(expected), "{sql}: {err}");
        }
        // 14 MB a record is within the limit; 20 of them in one call are not.
        let rows = vec!["('abc')"; 20].join(", ");
        let sql = format!("SELECT repeat(column1, 5000000) FROM (VALUES {rows})");
        let err = run(&ctx, &sql).await.unwrap_err();
        assert!(err.contains("repeat would make 286 MB for 20 records together, more than the 256 MB one call may make at once"), "{err}");
    }
}
