//! `GET /metrics`: Prometheus text exposition of per-query, per-stream and per-sink
//! counters and gauges.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;
use crate::runtime::manager::QueryStatus;

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(super) async fn render(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::new();
    let queries = state.manager.query_states();
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let per_query =
        |f: &dyn Fn(&crate::runtime::manager::QueryState) -> f64| -> Vec<(String, f64)> {
            queries
                .iter()
                .map(|q| (format!("query=\"{}\"", label(&q.name)), f(q)))
                .collect()
        };
    family(
        "sluice_query_records_in_total",
        "counter",
        "Records a query read.",
        per_query(&|q| q.rows_in.load(Ordering::Relaxed) as f64),
    );
    family(
        "sluice_query_records_out_total",
        "counter",
        "Rows a query emitted.",
        per_query(&|q| q.rows_out.load(Ordering::Relaxed) as f64),
    );
    family(
        "sluice_query_errors_total",
        "counter",
        "Records a query sent to its error output.",
        per_query(&|q| q.errors.load(Ordering::Relaxed) as f64),
    );
    family(
        "sluice_query_late_total",
        "counter",
        "Late records (their window had closed).",
        per_query(&|q| q.late.load(Ordering::Relaxed) as f64),
    );
    family(
        "sluice_query_running",
        "gauge",
        "1 when the query runs.",
        per_query(&|q| f64::from(u8::from(q.status() == QueryStatus::Running))),
    );
    family(
        "sluice_query_failed",
        "gauge",
        "1 when the query failed (see GET /queries/{name} for why).",
        per_query(&|q| f64::from(u8::from(matches!(q.status(), QueryStatus::Failed(_))))),
    );
    family(
        "sluice_query_state_bytes",
        "gauge",
        "Bytes of open window state.",
        per_query(&|q| q.state_bytes.load(Ordering::Relaxed) as f64),
    );
    family(
        "sluice_query_watermark_seconds",
        "gauge",
        "The query's watermark (Unix seconds).",
        queries
            .iter()
            .filter_map(|q| {
                q.watermark()
                    .filter(|&w| w != i64::MAX)
                    .map(|w| (format!("query=\"{}\"", label(&q.name)), w as f64 / 1000.0))
            })
            .collect(),
    );
    let catalog = state.manager.catalog();
    let streams: Vec<_> = catalog
        .streams
        .keys()
        .filter_map(|s| state.manager.stream_state(s).map(|st| (s.clone(), st)))
        .collect();
    family(
        "sluice_stream_records_total",
        "counter",
        "Records a stream decoded.",
        streams
            .iter()
            .map(|(n, s)| {
                (
                    format!("stream=\"{}\"", label(n)),
                    s.records_in.load(Ordering::Relaxed) as f64,
                )
            })
            .collect(),
    );
    family(
        "sluice_stream_decode_errors_total",
        "counter",
        "Records a stream could not decode.",
        streams
            .iter()
            .map(|(n, s)| {
                (
                    format!("stream=\"{}\"", label(n)),
                    s.decode_errors.load(Ordering::Relaxed) as f64,
                )
            })
            .collect(),
    );
    family(
        "sluice_stream_restarts_total",
        "counter",
        "Times a stream was started again after it failed.",
        streams
            .iter()
            .map(|(n, s)| {
                (
                    format!("stream=\"{}\"", label(n)),
                    s.restarts.load(Ordering::Relaxed) as f64,
                )
            })
            .collect(),
    );
    let sinks: Vec<_> = catalog
        .sinks
        .keys()
        .filter_map(|s| state.manager.sink_state(s).map(|st| (s.clone(), st)))
        .collect();
    family(
        "sluice_sink_rows_total",
        "counter",
        "Rows a sink wrote.",
        sinks
            .iter()
            .map(|(n, s)| {
                (
                    format!("sink=\"{}\"", label(n)),
                    s.rows.load(Ordering::Relaxed) as f64,
                )
            })
            .collect(),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
