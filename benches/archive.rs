//! The archive sink's write throughput and ad hoc SQL latency over an archive.
//!
//! 1. **write**: the `archive` sink alone (as a query hands it batches of 8,192 rows of
//!    the seed readings schema: deviceId, temperature, humidity, deviceIP, ts) to the
//!    local filesystem and to an S3 server (moto, started on a free port), Parquet zstd
//!    and JSON lines; rows/s from the first write to the end of the final flush, with
//!    every object written (64 MB buffers, hourly partitions).
//! 2. **ad hoc**: 10 million rows archived locally over 10 days (240 hourly
//!    partitions), then typical queries through `sluice::adhoc::run`, each run 5 times:
//!    a full count, a per-device aggregate over everything, one hour through the
//!    partition columns (pruning) and the same hour through `ts` alone, and a top-10.
//!
//! Run: `cargo bench --bench archive` (`-- --rows N` for the ad hoc table size,
//! `--write-rows N` for the write runs, `--no-s3` without moto). Results go to stdout.

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use sluice::adhoc::{self, Limits, Sources};
use sluice::catalog::SinkDef;
use sluice::error::Position;
use sluice::sinks::{self, SinkContext};
use sluice::sql::Options;

// The S3 emulator, shared with the integration tests (which also use its SQL options).
#[allow(dead_code)]
#[path = "../tests/moto.rs"]
mod moto;
use moto::Moto;

const BATCH: usize = 8_192;
/// 2026-11-01T00:00:00Z.
const T0: i64 = 1_793_491_200_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("deviceId", DataType::Utf8, true),
        Field::new("temperature", DataType::Float64, true),
        Field::new("humidity", DataType::Float64, true),
        Field::new("deviceIP", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ]))
}

/// Rows `from..from+n`, spread evenly over `span_ms` of event time; 10,000 devices
/// and values drawn from a hash of the row number (compressible like real readings,
/// not like a repeating pattern).
fn batch(schema: &SchemaRef, from: usize, n: usize, total: usize, span_ms: i64) -> RecordBatch {
    let mix = |i: usize| {
        let mut x = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    };
    let rows = from..from + n;
    let ids: Vec<String> = rows
        .clone()
        .map(|i| format!("device-{:05}", mix(i) % 10_000))
        .collect();
    let temp: Vec<f64> = rows
        .clone()
        .map(|i| 15.0 + ((mix(i) >> 20) % 2_000) as f64 / 100.0)
        .collect();
    let hum: Vec<f64> = rows
        .clone()
        .map(|i| ((mix(i) >> 40) % 100) as f64)
        .collect();
    let ips: Vec<String> = rows
        .clone()
        .map(|i| {
            let d = mix(i) % 10_000;
            format!("10.0.{}.{}", d / 256, d % 256)
        })
        .collect();
    let ts: Vec<i64> = rows
        .map(|i| T0 + (i as i128 * span_ms as i128 / total as i128) as i64)
        .collect();
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Float64Array::from(temp)),
            Arc::new(Float64Array::from(hum)),
            Arc::new(StringArray::from(ips)),
            Arc::new(TimestampMillisecondArray::from(ts)),
        ],
    )
    .unwrap()
}

fn options(pairs: &[(&str, String)]) -> Options {
    let mut o = Options::new(Position { line: 1, column: 1 });
    for (k, v) in pairs {
        o.insert(k, v.clone(), Position { line: 1, column: 1 })
            .unwrap();
    }
    o
}

/// Writes `total` rows through an archive sink; returns rows/s and the bytes stored.
async fn write_run(
    name: &str,
    opts: &[(&str, String)],
    data_dir: &std::path::Path,
    total: usize,
    span_ms: i64,
) -> f64 {
    let ctx = SinkContext {
        data_dir: Some(data_dir.to_path_buf()),
        ..Default::default()
    };
    let mut sink = sinks::build(name, "archive", &options(opts), &ctx).unwrap();
    let schema = schema();
    // Batches are built before the clock starts: only the sink is timed.
    let batches: Vec<RecordBatch> = (0..total)
        .step_by(BATCH)
        .map(|from| batch(&schema, from, BATCH.min(total - from), total, span_ms))
        .collect();
    let start = Instant::now();
    for b in &batches {
        sink.write(b).await.unwrap();
    }
    sink.flush().await.unwrap();
    total as f64 / start.elapsed().as_secs_f64()
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            n += if p.is_dir() {
                dir_bytes(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    n
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rows: usize = arg("--rows").map_or(10_000_000, |v| v.parse().unwrap());
    let write_rows: usize = arg("--write-rows").map_or(2_000_000, |v| v.parse().unwrap());
    let no_s3 = std::env::args().any(|a| a == "--no-s3");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = std::env::temp_dir().join(format!("sluice-bench-archive-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let day = 86_400_000;
    rt.block_on(async {
        println!("== write: {write_rows} rows over one day (24 hourly partitions)");
        let runs: Vec<(&str, Vec<(&str, String)>)> = vec![
            ("local parquet zstd", vec![]),
            ("local json lines", vec![("format", "json".into())]),
            (
                "local json lines gzip",
                vec![("format", "json".into()), ("compression", "gzip".into())],
            ),
        ];
        for (i, (label, opts)) in runs.iter().enumerate() {
            let dir = root.join(format!("w{i}"));
            let rate = write_run("w", opts, &dir, write_rows, day).await;
            let mb = dir_bytes(&dir) as f64 / 1e6;
            println!("{label:<24} {:>12.0} rows/s   {mb:>8.1} MB stored", rate);
        }
        let _moto = if no_s3 {
            None
        } else {
            let moto = Moto::start();
            moto.create_bucket("bench");
            let s3 = vec![
                ("url", "s3://bench/readings".to_string()),
                ("endpoint", moto.endpoint()),
                ("region", "us-east-1".into()),
                ("access_key_id", "t".into()),
                ("secret_access_key", "t".into()),
            ];
            let rate = write_run("s", &s3, &root.join("s3"), write_rows, day).await;
            println!("{:<24} {:>12.0} rows/s", "S3 (moto) parquet zstd", rate);
            Some(moto)
        };

        println!("\n== ad hoc SQL over {rows} archived rows (10 days, 240 hourly partitions)");
        let dir = root.join("adhoc");
        let built = Instant::now();
        write_run("readings", &[], &dir, rows, 10 * day).await;
        println!(
            "archived in {:.1} s, {:.1} MB of Parquet",
            built.elapsed().as_secs_f64(),
            dir_bytes(&dir.join("archive")) as f64 / 1e6
        );
        let sql = "CREATE SINK readings WITH (connector = 'archive')";
        let mut catalog = sluice::catalog::Catalog::new();
        catalog
            .apply(sql, &sluice::catalog::AnyConnector)
            .unwrap();
        let def: SinkDef = catalog.sinks["readings"].clone();
        let sources = Sources {
            sinks: vec![def],
            data_dir: Some(dir.clone()),
            sink_context: SinkContext {
                data_dir: Some(dir.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let limits = Limits::default();
        for (label, q) in [
            ("count(*)", "SELECT count(*) FROM readings"),
            (
                "avg/max per device (10K groups)",
                "SELECT deviceId, avg(temperature), max(humidity) FROM readings GROUP BY deviceId",
            ),
            (
                "one hour (pruned to 1 of 240)",
                "SELECT deviceId, avg(temperature) FROM readings \
                 WHERE dt = '2026-11-05' AND hour = '13' GROUP BY deviceId",
            ),
            (
                "one hour by ts (no partition filter)",
                "SELECT deviceId, avg(temperature) FROM readings \
                 WHERE ts >= '2026-11-05T13:00:00' AND ts < '2026-11-05T14:00:00' GROUP BY deviceId",
            ),
            (
                "top 10 by temperature",
                "SELECT deviceId, ts, temperature FROM readings ORDER BY temperature DESC, ts LIMIT 10",
            ),
        ] {
            let mut times = Vec::new();
            let mut n = 0;
            for _ in 0..5 {
                let start = Instant::now();
                let out = adhoc::run(q, Some(100_000), &sources, &limits)
                    .await
                    .unwrap_or_else(|e| panic!("{q}: {e}"));
                times.push(start.elapsed().as_secs_f64() * 1000.0);
                n = out.rows;
                if label == "count(*)" {
                    // The archive holds every row written: a figure over fewer is void.
                    let c = out.batches[0]
                        .column(0)
                        .as_any()
                        .downcast_ref::<datafusion::arrow::array::Int64Array>()
                        .unwrap()
                        .value(0);
                    assert_eq!(c as usize, rows, "rows in the archive");
                }
            }
            let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
            println!(
                "{label:<34} median {:>8.1} ms   min {:>8.1} ms   ({n} rows)",
                median(times),
                min
            );
        }
    });
    let _ = std::fs::remove_dir_all(&root);
}
