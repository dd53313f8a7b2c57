//! Pipeline throughput: JSON bytes → decode → `WHERE temperature > 50` → 10-second
//! tumbling avg/min/max/count per device over 10,000 devices, against JSON decode alone.
//!
//! Why: decoding JSON is the engine's cost (ARCHITECTURE.md, "Where the time goes"), so
//! the whole query is judged against decode alone, measured in the same run on the same
//! bytes. The target is the full query at ≥ 75% of decode-alone throughput.
//!
//! The input is generated once, before timing, by the simulator source's own generator
//! (`{"deviceId":N,"temperature":T,"humidity":H,"deviceIP":"10.x.y.z","ts":MS}`, ~100
//! bytes a line): 10,000 devices, 10,000 readings per second of event time with up to
//! 1 s of out-of-order jitter (as `queries/demo_windows.sql`), as NDJSON chunks of 8192
//! lines. 120 chunks (983,040 readings, ~98 s of event time, ~10 windows).
//!
//! Benchmarks (one group, `Throughput::Elements` = readings, so criterion prints
//! records/s):
//! - `decode_only/arrow_json`: a bare arrow-json decoder, built once, over every chunk:
//!   the floor nothing JSON-based can go under;
//! - `decode_only/json_decoder`: `sluice::decode::JsonDecoder`, what the engine runs;
//! - `query`: exactly the runtime's per-step path: `StreamCore::ingest` (decode +
//!   watermark), then `Query::push` for each batch and `Query::advance` to the new
//!   watermark, and at the end `finish` closes the last windows;
//! - `engine_only`: the same query over pre-decoded batches (the non-decode share).
//!
//! Run (one core): `cargo bench --bench pipeline --no-run && taskset -c 0 cargo bench
//! --bench pipeline`. Results: BENCHMARKS.md. Under `cargo test --benches` (criterion's
//! test mode) each benchmark runs once on 4 chunks only.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use sluice::catalog::{Catalog, StreamDef};
use sluice::decode::{BATCH_ROWS, Chunk, JsonDecoder};
use sluice::engine::{Query, QueryPlan};
use sluice::runtime::{Connectors, StreamCore};
use sluice::sources::simulator::Simulator;

const DEVICES: u64 = 10_000;
/// Readings per second of event time: a 10-second window holds 100,000 readings,
/// about 10 per device (about 4.5 after the filter).
const RATE: u64 = 10_000;
/// 2026-01-01T00:00:00Z: event time of the first reading.
const START_MS: i64 = 1_767_225_600_000;
/// The wall clock the benchmark pretends (no idle timeout, so it only stamps arrival).
const NOW_MS: i64 = START_MS + 3_600_000;
const CHUNKS: usize = 120;
const CHUNKS_TEST_MODE: usize = 4;

const APP: &str = "
CREATE STREAM readings (
    deviceId    INT NOT NULL,
    temperature DOUBLE,
    humidity    DOUBLE,
    deviceIP    TEXT,
    ts          TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
) WITH (connector = 'simulator', devices = '10000');

SELECT window_start, window_end, deviceId, avg(temperature), min(temperature),
       max(temperature), count(*)
FROM readings
WHERE temperature > 50
GROUP BY TUMBLE(ts, INTERVAL '10' SECOND), deviceId;
";

/// Criterion runs benchmarks only under `cargo bench` (`--bench` without `--test`).
fn benchmark_mode() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test")
}

/// The simulator's readings as NDJSON chunks of [`BATCH_ROWS`] lines.
fn generate(chunks: usize) -> Vec<Chunk> {
    let sim = Simulator {
        devices: DEVICES,
        rate: RATE,
        throttle: false,
        seed: 3,
        jitter_ms: 1000,
        limit: None,
        start_ms: Some(START_MS),
    };
    let mut rng = SmallRng::seed_from_u64(sim.seed);
    (0..chunks)
        .map(|i| {
            let (from, to) = ((i * BATCH_ROWS) as u64, ((i + 1) * BATCH_ROWS) as u64);
            let mut data = Vec::with_capacity(BATCH_ROWS * 110);
            sim.generate(&mut rng, START_MS, from, to, &mut data);
            Chunk::new(data, 0, NOW_MS)
        })
        .collect()
}

/// The catalog's stream definition and the planned query.
fn plan() -> (StreamDef, Arc<QueryPlan>) {
    let mut catalog = Catalog::new();
    catalog
        .apply(APP, &Connectors::default())
        .expect("the benchmark's SQL applies");
    let def = catalog.stream("readings").expect("stream readings").clone();
    let query = catalog.queries.values().next().expect("one query");
    (def, Arc::clone(&query.plan))
}

/// The flat schema arrow-json decodes the readings into (what `JsonDecoder` builds
/// for top-level columns: every field nullable, the declared types).
fn raw_schema(def: &StreamDef) -> SchemaRef {
    let fields: Vec<Field> = def
        .columns
        .iter()
        .map(|c| Field::new(&c.path[0], c.data_type.clone(), true))
        .collect();
    Arc::new(Schema::new(fields))
}

/// Bare arrow-json over every chunk: one decoder, batches of [`BATCH_ROWS`].
fn decode_raw(schema: &SchemaRef, chunks: &[Chunk]) -> usize {
    let mut decoder = arrow_json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(BATCH_ROWS)
        .build_decoder()
        .expect("decoder");
    let mut rows = 0;
    for chunk in chunks {
        let data = chunk.data.as_slice();
        let mut offset = 0;
        while offset < data.len() {
            let n = decoder.decode(&data[offset..]).expect("valid JSON");
            offset += n;
            if n == 0 || decoder.len() >= BATCH_ROWS {
                rows += decoder
                    .flush()
                    .expect("flush")
                    .map_or(0, |b| black_box(b).num_rows());
            }
        }
    }
    rows + decoder
        .flush()
        .expect("flush")
        .map_or(0, |b| black_box(b).num_rows())
}

/// `JsonDecoder`, one chunk per call (each chunk is one full batch).
fn decode_sluice(decoder: &JsonDecoder, chunks: &[Chunk]) -> usize {
    let mut rows = 0;
    for chunk in chunks {
        let decoded = decoder
            .decode(std::slice::from_ref(chunk))
            .expect("decodes");
        rows += black_box(decoded)
            .batches
            .iter()
            .map(RecordBatch::num_rows)
            .sum::<usize>();
    }
    rows
}

/// What one run of the query produced.
struct QueryRun {
    rows_out: usize,
    rows_in: u64,
    late: u64,
    errors: usize,
}

/// The runtime's per-step path for one stream and one query, from fresh state.
fn run_query(def: &StreamDef, plan: &Arc<QueryPlan>, chunks: &[Chunk]) -> QueryRun {
    let mut core = StreamCore::new(def, 1, NOW_MS).expect("stream core");
    let mut query = Query::new(Arc::clone(plan)).expect("query");
    let (mut rows_out, mut errors) = (0, 0);
    for chunk in chunks {
        let (decoded, wm) = core
            .ingest(std::slice::from_ref(chunk), NOW_MS)
            .expect("ingest");
        errors += decoded.errors.len();
        for b in &decoded.batches {
            let e = query.push(b, NOW_MS).expect("push");
            errors += e.errors.len();
            rows_out += black_box(e).rows();
        }
        if let Some(wm) = wm {
            rows_out += black_box(query.advance(wm).expect("advance")).rows();
        }
    }
    let wm = core.finish();
    rows_out += black_box(query.advance(wm).expect("advance")).rows();
    QueryRun {
        rows_out,
        rows_in: query.counters.rows_in,
        late: query.counters.late,
        errors,
    }
}

/// The query over already-decoded batches: the engine's share of the work.
fn run_engine(plan: &Arc<QueryPlan>, batches: &[(RecordBatch, i64)]) -> usize {
    let mut query = Query::new(Arc::clone(plan)).expect("query");
    let mut rows_out = 0;
    for (b, wm) in batches {
        rows_out += black_box(query.push(b, NOW_MS).expect("push")).rows();
        rows_out += black_box(query.advance(*wm).expect("advance")).rows();
    }
    rows_out + black_box(query.advance(i64::MAX).expect("advance")).rows()
}

fn pipeline(c: &mut Criterion) {
    let chunks = generate(if benchmark_mode() {
        CHUNKS
    } else {
        CHUNKS_TEST_MODE
    });
    let records = chunks.len() * BATCH_ROWS;
    let bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
    let (def, plan) = plan();
    let schema = raw_schema(&def);
    let decoder = def.decoder().expect("decoder");

    // Check once, untimed, that every path sees every record and the query does real
    // work: no decode errors, nothing late, windows emitted.
    assert_eq!(decode_raw(&schema, &chunks), records);
    assert_eq!(decode_sluice(&decoder, &chunks), records);
    let check = run_query(&def, &plan, &chunks);
    assert_eq!(check.rows_in, records as u64);
    assert_eq!((check.late, check.errors), (0, 0));
    assert!(check.rows_out > 0);
    let mut core = StreamCore::new(&def, 1, NOW_MS).expect("stream core");
    let decoded: Vec<(RecordBatch, i64)> = chunks
        .iter()
        .flat_map(|chunk| {
            let (d, wm) = core
                .ingest(std::slice::from_ref(chunk), NOW_MS)
                .expect("ingest");
            let wm = wm.expect("a watermark after the first chunk");
            d.batches.into_iter().map(move |b| (b, wm))
        })
        .collect();
    assert_eq!(run_engine(&plan, &decoded), check.rows_out);
    eprintln!(
        "pipeline input: {records} readings, {:.1} MB ({:.0} bytes/reading), {DEVICES} devices; \
         query emits {} rows",
        bytes as f64 / 1e6,
        bytes as f64 / records as f64,
        check.rows_out
    );

    let mut group = c.benchmark_group("pipeline");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .throughput(Throughput::Elements(records as u64));
    group.bench_function("decode_only/arrow_json", |b| {
        b.iter(|| decode_raw(&schema, black_box(&chunks)))
    });
    group.bench_function("decode_only/json_decoder", |b| {
        b.iter(|| decode_sluice(&decoder, black_box(&chunks)))
    });
    group.bench_function("query", |b| {
        b.iter(|| run_query(&def, &plan, black_box(&chunks)).rows_out)
    });
    group.bench_function("engine_only", |b| {
        b.iter(|| run_engine(&plan, black_box(&decoded)))
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
