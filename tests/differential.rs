//! Differential test of the windowed aggregates: every window kind must emit exactly
//! what DataFusion batch SQL computes over the same data.
//!
//! About 115,000 generated readings (bursty per device, so sessions really break, with
//! exact-integer, fractional and null temperatures) are shuffled within the watermark
//! bound and pushed through the real decoder, watermark tracker and query operators
//! ([`sluice::runtime::Step`]) in NDJSON chunks of varying size. The expected results
//! come from a plain DataFusion `SessionContext` over a `MemTable` of the same
//! readings, with each window kind spelled out in batch SQL (`date_bin`, a cross join
//! against hop lanes, `LAG`/running `SUM` sessionization), so the two sides share only
//! the aggregate functions, not the windowing. Both results are keyed by
//! (window_start, deviceId) and compared cell by cell: integers exactly, floats within
//! a relative 1e-9 (the engine sums in arrival order), nulls only to nulls.
//!
//! The shuffle never delays a record by the watermark delay or more, so no record may
//! be reported late, and every window must come out exactly once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, RecordBatch, TimestampMillisecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice::runtime::Step;

/// The watermark delay the stream declares, in ms; the shuffle stays strictly inside it.
const DELAY_MS: i64 = 2_000;

const STREAM_SQL: &str = "CREATE STREAM readings (deviceId INT NOT NULL, \
     temperature DOUBLE, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '2' SECOND) \
     WITH (connector = 'simulator');";

/// Applied before windowing on both sides, so sessions form over the surviving rows.
/// `= 20` readings exist (exact integers) and must be dropped.
const FILTER: &str = "temperature > 20 OR temperature IS NULL";

/// The same aggregate text on both sides: the test is about windowing and streaming,
/// not about re-deriving DataFusion's aggregates. DataFusion 55 has no
/// `approx_distinct` for DOUBLE, hence the cast; the FILTER clause reaches the
/// session operator's own filter path.
const AGGREGATES: &str = "count(*) AS n, count(temperature) AS nt, sum(temperature) AS s, \
     min(temperature) AS lo, max(temperature) AS hi, avg(temperature) AS mean, \
     stddev(temperature) AS sd, approx_distinct(CAST(temperature * 100 AS BIGINT)) AS ad, \
     count(*) FILTER (WHERE temperature >= 30) AS hot";

/// Not aligned to any window size, so the first windows are partial.
const START_MS: i64 = 1_700_000_001_234;
const SPAN_MS: i64 = 600_000;
const DEVICES: i32 = 150;

#[derive(Debug, Clone, Copy)]
struct Reading {
    device: i32,
    temperature: Option<f64>,
    ts: i64,
    /// A null temperature is written as an absent field rather than `null`.
    omit_null: bool,
}

/// Readings in event-time order. Each device runs its own clock: mostly short steps
/// (zero included, so equal timestamps occur), sometimes pauses longer than the 3 s
/// session gap, sometimes exactly 2999 / 3000 ms (the two sides of the gap), and
/// sometimes a jump to the next 5 s mark, so records sit exactly on window bounds.
fn generate(seed: u64) -> Vec<Reading> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for d in 0..DEVICES {
        // Negative ids too: keys are signed.
        let device = d * 13 - 200;
        // A few devices report mostly nulls, so whole groups have no temperature.
        let null_rate = if d % 30 == 0 { 0.9 } else { 0.015 };
        let mut ts = START_MS + rng.random_range(0..20_000);
        while ts < START_MS + SPAN_MS {
            let temperature = if rng.random_bool(null_rate) {
                None
            } else {
                Some(match rng.random_range(0..100) {
                    // Exact integers, 20 (filtered out) and 30 (FILTER boundary) among them.
                    0..20 => f64::from(rng.random_range(15..=45)),
                    // Two decimals, as thermostats report.
                    20..85 => f64::from(rng.random_range(1_500..4_500)) / 100.0,
                    // Full precision: sums no longer exact.
                    _ => rng.random_range(15.0..45.0),
                })
            };
            out.push(Reading {
                device,
                temperature,
                ts,
                omit_null: rng.random_bool(0.5),
            });
            ts += match rng.random_range(0..100) {
                0..88 => rng.random_range(0..=400),
                88..94 => rng.random_range(3_000..=12_000),
                94..97 => rng.random_range(1_000..3_000),
                97..99 => 3_000 - rng.random_range(0..=1),
                _ => 5_000 - ts.rem_euclid(5_000),
            };
        }
    }
    out.sort_by_key(|r| (r.ts, r.device));
    out
}

/// Arrival order: by event time plus a jitter in [0, DELAY_MS). A record then follows
/// only records whose event time is less than DELAY_MS ahead of its own, so the
/// watermark (max seen − DELAY_MS) is always behind it: nothing is late, yet records
/// arrive up to ~2 s out of order.
fn shuffle_within_bound(readings: &[Reading], seed: u64) -> Vec<Reading> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut keyed: Vec<(i64, Reading)> = readings
        .iter()
        .map(|r| (r.ts + rng.random_range(0..DELAY_MS), *r))
        .collect();
    keyed.sort_by_key(|(k, _)| *k);
    let shuffled: Vec<Reading> = keyed.into_iter().map(|(_, r)| r).collect();
    // The property the test relies on, checked rather than trusted.
    let mut max_seen = i64::MIN;
    let mut displaced = 0usize;
    for r in &shuffled {
        assert!(
            max_seen < r.ts + DELAY_MS,
            "shuffle exceeded the watermark bound"
        );
        if max_seen > r.ts {
            displaced += 1;
        }
        max_seen = max_seen.max(r.ts);
    }
    assert!(
        displaced > shuffled.len() / 2,
        "the shuffle should reorder most records, reordered {displaced}"
    );
    shuffled
}

fn to_ndjson(readings: &[Reading]) -> String {
    let mut s = String::with_capacity(readings.len() * 64);
    for r in readings {
        let _ = match (r.temperature, r.omit_null) {
            // `{}` prints the shortest text that parses back to the same f64, and
            // exact integers without a fraction: both must decode into DOUBLE.
            (Some(t), _) => writeln!(
                s,
                r#"{{"deviceId":{},"temperature":{t},"ts":{}}}"#,
                r.device, r.ts
            ),
            (None, false) => writeln!(
                s,
                r#"{{"deviceId":{},"temperature":null,"ts":{}}}"#,
                r.device, r.ts
            ),
            (None, true) => writeln!(s, r#"{{"ts":{},"deviceId":{}}}"#, r.ts, r.device),
        };
    }
    s
}

/// Runs the queries through the engine in step mode; returns each query's output.
fn run_engine(
    queries: &[(&str, String)],
    arrivals: &[Reading],
    seed: u64,
) -> BTreeMap<String, Vec<RecordBatch>> {
    // The wall clock where the readings are: their event times must not be ahead of
    // it by more than the stream's max_future.
    let mut step = Step::new(START_MS);
    let mut app = STREAM_SQL.to_string();
    for (name, sql) in queries {
        app.push_str(&format!("\nCREATE QUERY {name} AS {sql};"));
    }
    step.apply(&app)
        .unwrap_or_else(|e| panic!("engine rejected the application: {e}\n{app}"));

    let mut rng = SmallRng::seed_from_u64(seed);
    let mut outputs: BTreeMap<String, Vec<RecordBatch>> = BTreeMap::new();
    let mut rest = arrivals;
    while !rest.is_empty() {
        // Varying chunk sizes move batch boundaries around window boundaries.
        let n = rng.random_range(200..=1_800).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        step.push("readings", &to_ndjson(chunk))
            .unwrap_or_else(|e| panic!("push failed: {e}"));
        rest = tail;
        for (name, _) in queries {
            outputs
                .entry(name.to_string())
                .or_default()
                .extend(step.take_output(name));
        }
    }
    let before_finish: BTreeMap<String, usize> =
        outputs.iter().map(|(k, v)| (k.clone(), rows(v))).collect();
    step.finish("readings")
        .unwrap_or_else(|e| panic!("finish failed: {e}"));
    for (name, _) in queries {
        let out = outputs.entry(name.to_string()).or_default();
        out.extend(step.take_output(name));
        // The watermark, not the end of input, must close windows: only the last
        // window or so may be left for finish.
        let total = rows(out);
        assert!(
            before_finish[*name] * 10 >= total * 9,
            "query {name}: only {} of {total} rows were emitted before the input ended",
            before_finish[*name]
        );
        let errors = step.take_errors(name);
        assert!(
            errors.is_empty(),
            "query {name} reported {} error records, first: {:?}",
            errors.len(),
            errors.first()
        );
        let q = step.query(name).expect("query is running");
        assert_eq!(q.counters.late, 0, "query {name}: late records");
        assert_eq!(q.counters.errors, 0, "query {name}: errors");
        assert_eq!(
            q.counters.rows_in,
            arrivals.len() as u64,
            "query {name}: rows in"
        );
        assert_eq!(q.open_windows(), 0, "query {name}: windows left open");
    }
    outputs
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

/// Runs batch SQL over the readings in a fresh DataFusion context.
fn run_batch_sql(readings: &[Reading], sql: &str) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("deviceId", DataType::Int32, false),
        Field::new("temperature", DataType::Float64, true),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int32Array::from_iter_values(
                readings.iter().map(|r| r.device),
            )),
            Arc::new(Float64Array::from_iter(
                readings.iter().map(|r| r.temperature),
            )),
            Arc::new(TimestampMillisecondArray::from_iter_values(
                readings.iter().map(|r| r.ts),
            )),
        ],
    )
    .expect("readings batch");
    let mut config = SessionConfig::new();
    // As in Sluice: `deviceId` keeps its case.
    config.options_mut().sql_parser.enable_ident_normalization = false;
    let ctx = SessionContext::new_with_config(config);
    let table = MemTable::try_new(schema, vec![vec![batch]]).expect("mem table");
    ctx.register_table("readings", Arc::new(table))
        .expect("register readings");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        ctx.sql(sql)
            .await
            .unwrap_or_else(|e| panic!("batch SQL failed to plan: {e}\n{sql}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("batch SQL failed: {e}\n{sql}"))
    })
}

/// One result cell, normalized across Arrow types: timestamps to epoch ms, every
/// integer type to i64.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell {
    Null,
    Int(i64),
    Float(f64),
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cell::Null => write!(f, "NULL"),
            Cell::Int(v) => write!(f, "{v}"),
            Cell::Float(v) => write!(f, "{v:?}"),
        }
    }
}

/// Summation order differs between the engine (arrival order, merged partial states)
/// and batch SQL; 1e-9 is far above that rounding and far below any real error. The
/// floor of 1 keeps near-zero standard deviations from demanding bit equality.
fn cells_match(a: Cell, b: Cell) -> bool {
    match (a, b) {
        (Cell::Float(x), Cell::Float(y)) => {
            x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        _ => a == b,
    }
}

struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Cell>>,
}

impl Table {
    fn from_batches(batches: &[RecordBatch]) -> Table {
        let Some(first) = batches.first() else {
            return Table {
                columns: Vec::new(),
                rows: Vec::new(),
            };
        };
        let columns: Vec<String> = first
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mut rows = Vec::new();
        for b in batches {
            let cols: Vec<Vec<Cell>> = b.columns().iter().map(column_cells).collect();
            for i in 0..b.num_rows() {
                rows.push(cols.iter().map(|c| c[i]).collect());
            }
        }
        Table { columns, rows }
    }

    fn index(&self, name: &str) -> usize {
        self.columns
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("no column {name} in {:?}", self.columns))
    }

    fn describe(&self, row: &[Cell]) -> String {
        self.columns
            .iter()
            .zip(row)
            .map(|(n, c)| format!("{n}={c}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn count(&self, column: &str, pred: impl Fn(Cell) -> bool) -> usize {
        let i = self.index(column);
        self.rows.iter().filter(|r| pred(r[i])).count()
    }
}

fn column_cells(col: &ArrayRef) -> Vec<Cell> {
    let normalized = match col.data_type() {
        DataType::Float64 => Arc::clone(col),
        DataType::Timestamp(..) => {
            let ms = cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))
                .expect("timestamp to ms");
            cast(&ms, &DataType::Int64).expect("timestamp to i64")
        }
        t if t.is_integer() => cast(col, &DataType::Int64).expect("integer to i64"),
        t => panic!("unexpected result type {t}"),
    };
    match normalized.data_type() {
        DataType::Float64 => normalized
            .as_primitive::<Float64Type>()
            .iter()
            .map(|v| v.map_or(Cell::Null, Cell::Float))
            .collect(),
        _ => normalized
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map_or(Cell::Null, Cell::Int))
            .collect(),
    }
}

/// Compares engine output with the expected rows by (window_start, deviceId); on any
/// difference returns a report of the first few.
fn compare(actual: &Table, expected: &Table) -> Result<(), String> {
    if actual.columns != expected.columns {
        return Err(format!(
            "columns differ: engine {:?}, expected {:?} (engine emitted {} rows)",
            actual.columns,
            expected.columns,
            actual.rows.len()
        ));
    }
    let (ws, we, dev) = (
        expected.index("window_start"),
        expected.index("window_end"),
        expected.index("deviceId"),
    );
    let key = |r: &Vec<Cell>| match (r[ws], r[dev]) {
        (Cell::Int(w), Cell::Int(d)) => (w, d),
        other => panic!("window_start and deviceId must be non-null integers, got {other:?}"),
    };
    let mut problems: Vec<String> = Vec::new();
    let mut seen: BTreeMap<(i64, i64), &Vec<Cell>> = BTreeMap::new();
    for r in &actual.rows {
        if let Some(prev) = seen.insert(key(r), r) {
            let what = if prev[we] == r[we] {
                "emitted twice"
            } else {
                "overlapping windows for one key"
            };
            problems.push(format!(
                "{what}: {}\n    and: {}",
                actual.describe(prev),
                actual.describe(r)
            ));
        }
    }
    let mut wanted: BTreeMap<(i64, i64), &Vec<Cell>> = BTreeMap::new();
    for r in &expected.rows {
        assert!(
            wanted.insert(key(r), r).is_none(),
            "expected rows repeat a key: {}",
            expected.describe(r)
        );
    }
    for (k, want) in &wanted {
        match seen.get(k) {
            None => problems.push(format!("missing from engine: {}", expected.describe(want))),
            Some(got) => {
                let diffs: Vec<String> = expected
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| !cells_match(got[i], want[i]))
                    .map(|(i, name)| format!("{name}: engine {} expected {}", got[i], want[i]))
                    .collect();
                if !diffs.is_empty() {
                    problems.push(format!(
                        "window_start={} deviceId={}: {}",
                        k.0,
                        k.1,
                        diffs.join(", ")
                    ));
                }
            }
        }
    }
    for (k, got) in &seen {
        if !wanted.contains_key(k) {
            problems.push(format!("unexpected from engine: {}", actual.describe(got)));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    let mut report = format!(
        "{} problems (engine {} rows, expected {} rows); first ones:\n",
        problems.len(),
        actual.rows.len(),
        expected.rows.len()
    );
    for p in problems.iter().take(20) {
        report.push_str("  ");
        report.push_str(p);
        report.push('\n');
    }
    Err(report)
}

/// Runs `queries` (name, engine SQL, expected batch SQL) over one data set and checks
/// every one against batch SQL.
fn check(seed: u64, queries: &[(&str, String, String)]) {
    let began = Instant::now();
    let readings = generate(seed);
    assert!(
        readings.len() >= 100_000,
        "only {} readings",
        readings.len()
    );
    // 30 s marks start windows of every kind used here and end tumbling and even-hop
    // windows; 30 s + 10 s marks end the uneven hops (3 s slide, 10 s size).
    for phase in [0, 10_000] {
        assert!(
            readings.iter().any(|r| r.ts % 30_000 == phase),
            "no reading on a window bound"
        );
    }
    let arrivals = shuffle_within_bound(&readings, seed + 1);
    let engine_queries: Vec<(&str, String)> = queries
        .iter()
        .map(|(n, sql, _)| (*n, sql.clone()))
        .collect();
    let mut outputs = run_engine(&engine_queries, &arrivals, seed + 2);
    let engine_time = began.elapsed();
    for (name, _, batch_sql) in queries {
        let expected = Table::from_batches(&run_batch_sql(&readings, batch_sql));
        let actual = Table::from_batches(&outputs.remove(*name).unwrap_or_default());
        // The data must reach the cases that matter, or agreement proves little.
        assert!(expected.rows.len() > 5_000, "{name}: few windows");
        assert!(
            expected.count("nt", |c| c == Cell::Int(0)) > 0,
            "{name}: no all-null group"
        );
        assert!(
            expected.count("sd", |c| c == Cell::Null) > 0,
            "{name}: no null stddev"
        );
        assert!(
            expected.count("n", |c| matches!(c, Cell::Int(n) if n > 1)) > 0,
            "{name}: no multi-row group"
        );
        if let Err(report) = compare(&actual, &expected) {
            panic!("{name}: engine output differs from batch SQL: {report}");
        }
        println!(
            "{name}: {} windows × devices agree ({} readings)",
            expected.rows.len(),
            readings.len()
        );
    }
    println!("engine {:.1?}, total {:.1?}", engine_time, began.elapsed());
}

fn streaming_sql(window: &str) -> String {
    format!(
        "SELECT window_start, window_end, deviceId, {AGGREGATES} FROM readings \
         WHERE {FILTER} GROUP BY {window}, deviceId"
    )
}

#[test]
fn tumble_matches_batch_sql() {
    // date_bin aligns to the epoch, as TUMBLE does.
    let batch = format!(
        "SELECT window_start, window_end, deviceId, {AGGREGATES} FROM (
           SELECT date_bin(INTERVAL '10 seconds', ts, TIMESTAMP '1970-01-01T00:00:00') AS window_start,
                  date_bin(INTERVAL '10 seconds', ts, TIMESTAMP '1970-01-01T00:00:00')
                    + INTERVAL '10 seconds' AS window_end,
                  deviceId, temperature
           FROM readings WHERE {FILTER})
         GROUP BY window_start, window_end, deviceId"
    );
    check(
        1,
        &[(
            "q",
            streaming_sql("TUMBLE(ts, INTERVAL '10' SECOND)"),
            batch,
        )],
    );
}

/// A hop of `slide` and `size` ms in batch SQL: each row joined with every lane it
/// could fall in, keeping the windows that hold it.
fn hop_batch_sql(slide: i64, size: i64) -> String {
    let lanes: Vec<String> = (0..(size + slide - 1) / slide)
        .map(|k| format!("({k})"))
        .collect();
    format!(
        "SELECT window_start, window_end, deviceId, {AGGREGATES} FROM (
           SELECT t - t % {slide} - lane * {slide} AS window_start,
                  t - t % {slide} - lane * {slide} + {size} AS window_end,
                  t, deviceId, temperature
           FROM (SELECT CAST(ts AS BIGINT) AS t, deviceId, temperature FROM readings
                 WHERE {FILTER}) r
           CROSS JOIN (VALUES {}) AS lanes(lane))
         WHERE t < window_end
         GROUP BY window_start, window_end, deviceId",
        lanes.join(", ")
    )
}

#[test]
fn hop_matches_batch_sql() {
    check(
        2,
        &[
            (
                "even",
                streaming_sql("HOP(ts, INTERVAL '5' SECOND, INTERVAL '20' SECOND)"),
                hop_batch_sql(5_000, 20_000),
            ),
            // The size is no multiple of the slide: a row's last lane may not hold it.
            (
                "uneven",
                streaming_sql("HOP(ts, INTERVAL '3' SECOND, INTERVAL '10' SECOND)"),
                hop_batch_sql(3_000, 10_000),
            ),
        ],
    );
}

#[test]
fn session_matches_batch_sql() {
    // Per device, over the filtered rows: a row starts a session when the previous
    // one is 3 s or more before it; a running sum of those starts numbers sessions.
    let batch = format!(
        "WITH f AS (
           SELECT deviceId, temperature, CAST(ts AS BIGINT) AS t FROM readings WHERE {FILTER}),
         flagged AS (
           SELECT *, CASE WHEN t - LAG(t) OVER (PARTITION BY deviceId ORDER BY t) < 3000
                          THEN 0 ELSE 1 END AS starts
           FROM f),
         numbered AS (
           SELECT *, SUM(starts) OVER (PARTITION BY deviceId ORDER BY t
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS sid
           FROM flagged)
         SELECT min(t) AS window_start, max(t) + 3000 AS window_end, deviceId, {AGGREGATES}
         FROM numbered GROUP BY deviceId, sid"
    );
    // Both sides of the gap must occur between consecutive rows that pass the filter.
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    let mut steps: BTreeMap<i64, usize> = BTreeMap::new();
    for r in generate(3) {
        if r.temperature.is_none_or(|t| t > 20.0)
            && let Some(prev) = last.insert(r.device, r.ts)
        {
            *steps.entry(r.ts - prev).or_default() += 1;
        }
    }
    assert!(
        steps.get(&2_999) > Some(&0) && steps.get(&3_000) > Some(&0),
        "no consecutive readings exactly 2999 and 3000 ms apart"
    );
    check(
        3,
        &[(
            "q",
            streaming_sql("SESSION(ts, INTERVAL '3' SECOND)"),
            batch,
        )],
    );
}

/// The comparison itself must be able to fail, or the tests above prove nothing.
#[test]
fn comparison_reports_differences() {
    let columns: Vec<String> = ["window_start", "window_end", "deviceId", "s"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let row = |ws: i64, d: i64, s: Cell| vec![Cell::Int(ws), Cell::Int(ws + 10), Cell::Int(d), s];
    let table = |rows: Vec<Vec<Cell>>| Table {
        columns: columns.clone(),
        rows,
    };
    let expected = table(vec![
        row(0, 1, Cell::Float(100.0)),
        row(0, 2, Cell::Null),
        row(10, 1, Cell::Float(0.0)),
    ]);
    let same = table(vec![
        row(10, 1, Cell::Float(1e-12)),
        row(0, 2, Cell::Null),
        row(0, 1, Cell::Float(100.0 * (1.0 + 1e-12))),
    ]);
    assert!(compare(&same, &expected).is_ok());
    let cases = [
        (
            "value",
            vec![
                row(0, 1, Cell::Float(100.001)),
                row(0, 2, Cell::Null),
                row(10, 1, Cell::Float(0.0)),
            ],
        ),
        (
            "null",
            vec![
                row(0, 1, Cell::Float(100.0)),
                row(0, 2, Cell::Float(0.0)),
                row(10, 1, Cell::Float(0.0)),
            ],
        ),
        (
            "missing",
            vec![row(0, 1, Cell::Float(100.0)), row(10, 1, Cell::Float(0.0))],
        ),
        (
            "extra",
            vec![
                row(0, 1, Cell::Float(100.0)),
                row(0, 2, Cell::Null),
                row(10, 1, Cell::Float(0.0)),
                row(20, 1, Cell::Null),
            ],
        ),
        (
            "duplicate",
            vec![
                row(0, 1, Cell::Float(100.0)),
                row(0, 2, Cell::Null),
                row(10, 1, Cell::Float(0.0)),
                row(0, 2, Cell::Null),
            ],
        ),
        (
            "int",
            vec![
                row(0, 1, Cell::Float(100.0)),
                row(0, 2, Cell::Null),
                vec![Cell::Int(10), Cell::Int(21), Cell::Int(1), Cell::Float(0.0)],
            ],
        ),
    ];
    for (what, rows) in cases {
        assert!(
            compare(&table(rows), &expected).is_err(),
            "{what} not reported"
        );
    }
}
