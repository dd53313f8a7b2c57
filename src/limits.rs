//! Hard limits that keep one statement or one record from exhausting the process, and
//! the stack that statements are planned and evaluated on (below every layer; used by
//! sql/, engine/, runtime/ and adhoc). docs/limits.md lists them with every other
//! limit and its default.
//!
//! They are constants, not settings: each one is far above what a real application
//! needs and far below what would hurt the server, and the stack size is derived from
//! them.

/// Most levels an expression may nest (see `sql::depth`). Each operator of a chain
/// (`a + b + c`), each bracket, function call, CASE, cast or subquery is a level.
/// DataFusion's planning time grows faster than the depth (3 s for 256 nested
/// function calls in a debug build, 18 s for 500): this keeps it small.
pub const MAX_EXPR_DEPTH: usize = 256;

/// Most subqueries one may nest in another (in FROM, in an expression, in a WITH).
/// DataFusion's planning time doubles with each level past a few (planning 16
/// nested `IN (SELECT …)` took 7 s in a debug build, 24 did not end), and planning
/// cannot be interrupted: this keeps it well under a second.
pub const MAX_SUBQUERY_DEPTH: usize = 8;

/// Most tables a statement may read once its WITH queries are expanded (a WITH query
/// read twice counts twice): WITH queries that each read the one before twice make a
/// plan twice as large at every step.
pub const MAX_RELATIONS: usize = 64;

/// Most tokens (words, numbers, operators) one statement may have: about 500 KB of
/// SQL. It bounds how deep a statement refused by [`MAX_EXPR_DEPTH`] can be, since
/// that statement must still be dropped, which recurses.
pub const MAX_STATEMENT_TOKENS: usize = 100_000;

/// Most windows one record may fall in: `HOP(ts, slide, size)` puts a record in
/// `size / slide` windows, each updated for every record and each holding state.
pub const MAX_WINDOWS_PER_RECORD: i64 = 1_000;

/// Largest value one function call may produce for one row (a string from `repeat`,
/// `lpad`; a list from `range`, `array_repeat`): a larger one fails that record (to the
/// error output in a continuous query) before it is allocated.
pub const MAX_VALUE_BYTES: usize = 16 << 20;

/// Largest output one function call may produce for a whole batch (its rows
/// together), checked before it is allocated. Arrow's strings and lists address their
/// bytes with 32-bit offsets, so a column over 2 GiB cannot even be built: past this
/// the batch is evaluated record by record.
pub const MAX_BATCH_VALUE_BYTES: usize = 256 << 20;

/// Most rows one batch may have when a query evaluates it: a larger batch (a 16 MB
/// ingest of small records is 160,000 of them) is evaluated in slices this long.
/// Ad hoc queries read in batches this long too.
pub const MAX_BATCH_ROWS: usize = 8192;

/// Largest constant a query may hold (a string literal, or a call on constants that
/// DataFusion folds into one): a constant is copied into every row of a batch, so
/// this times [`MAX_BATCH_ROWS`] is [`MAX_BATCH_VALUE_BYTES`].
pub const MAX_CONSTANT_BYTES: usize = MAX_BATCH_VALUE_BYTES / MAX_BATCH_ROWS;

/// Stack that parsing and planning one statement within the limits above needs, with
/// a wide margin. Measured in a debug build (whose frames are the largest): under 4
/// MiB to plan an expression [`MAX_EXPR_DEPTH`] deep, 8 MiB to refuse and drop a
/// chain of 49,000 operators.
pub const STACK_BYTES: usize = 64 << 20;

/// Stack that evaluating a planned query on a batch needs, with a wide margin:
/// measured under 2 MiB for an expression [`MAX_EXPR_DEPTH`] deep in a debug build.
pub const EVAL_STACK_BYTES: usize = 8 << 20;

/// Stack of the threads that run streams and the API (`sluice serve`, `run`): enough
/// for [`EVAL_STACK_BYTES`] on the thread itself, so a query's step never needs a
/// fresh stack there (getting one costs about 12 µs a step).
pub const WORKER_STACK_BYTES: usize = 16 << 20;

/// Runs `f` (parsing, planning) with at least [`STACK_BYTES`] of stack: on the
/// current one when it has that much left, else on a fresh one allocated for the
/// call (only the pages touched are ever backed by memory).
pub fn with_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(STACK_BYTES, STACK_BYTES, f)
}

/// Runs `f` (a query's evaluation) with at least [`EVAL_STACK_BYTES`] of stack.
pub fn with_eval_stack<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(EVAL_STACK_BYTES, EVAL_STACK_BYTES, f)
}

/// The message of a caught panic (`panic!` with a string, or a formatted one).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Bytes as a person reads them: `812 B`, `16 MB`, `1.2 GB` (powers of 1024).
pub fn fmt_bytes(n: u128) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 || v >= 10.0 || v.fract() == 0.0 {
        format!("{} {}", v.round() as u128, UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The bytes one row of `array` holds: its values (for strings and lists, only its
/// own part of the shared buffers), not the buffers it shares with other rows.
pub fn row_bytes(array: &dyn datafusion::arrow::array::Array, row: usize) -> usize {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::DataType;
    let d = array.data_type();
    if let Some(w) = d.primitive_width() {
        return w;
    }
    match d {
        DataType::Utf8 => array.as_string::<i32>().value(row).len() + 4,
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).len() + 8,
        DataType::Binary => array.as_binary::<i32>().value(row).len() + 4,
        DataType::LargeBinary => array.as_binary::<i64>().value(row).len() + 8,
        DataType::Utf8View => array.as_string_view().value(row).len() + 16,
        DataType::BinaryView => array.as_binary_view().value(row).len() + 16,
        DataType::Boolean | DataType::Null => 1,
        _ => array
            .slice(row, 1)
            .to_data()
            .get_slice_memory_size()
            .unwrap_or(0),
    }
}

/// At least the bytes of the largest row of `array` (exact for fixed-width and
/// string or binary columns; the slice's whole size for the others): a quick bound
/// before looking at rows one by one.
pub fn max_row_bytes(array: &dyn datafusion::arrow::array::Array) -> usize {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::DataType;
    fn widest<O: datafusion::arrow::array::OffsetSizeTrait>(offsets: &[O]) -> usize {
        offsets
            .windows(2)
            .map(|w| (w[1] - w[0]).as_usize())
            .max()
            .unwrap_or(0)
    }
    let d = array.data_type();
    if let Some(w) = d.primitive_width() {
        return w;
    }
    match d {
        DataType::Utf8 => widest(array.as_string::<i32>().value_offsets()) + 4,
        DataType::LargeUtf8 => widest(array.as_string::<i64>().value_offsets()) + 8,
        DataType::Binary => widest(array.as_binary::<i32>().value_offsets()) + 4,
        DataType::LargeBinary => widest(array.as_binary::<i64>().value_offsets()) + 8,
        // A view's length is its low 32 bits.
        DataType::Utf8View => {
            let views = array.as_string_view().views();
            views.iter().map(|v| *v as u32 as usize).max().unwrap_or(0) + 16
        }
        DataType::BinaryView => {
            let views = array.as_binary_view().views();
            views.iter().map(|v| *v as u32 as usize).max().unwrap_or(0) + 16
        }
        DataType::Boolean | DataType::Null => 1,
        _ => array.to_data().get_slice_memory_size().unwrap_or(0),
    }
}
