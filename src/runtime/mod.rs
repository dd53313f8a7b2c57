//! The runtime: turns a catalog into running work (source → decode → queries → sinks).
//!
//! Two drivers share one core ([`StreamCore`] decodes a stream's chunks and tracks its
//! watermark; [`step_query`] runs a query on what it decoded):
//! - [`step::Step`] drives them synchronously, on a manual clock, for tests and
//!   benchmarks;
//! - [`manager::Manager`] spawns tasks: per stream, a source task feeding a bounded
//!   channel and a stream task that decodes and runs the stream's queries; per sink, a
//!   task draining a bounded channel. Every channel is bounded, so a slow sink blocks
//!   its queries' sends, which stops the stream task reading chunks, which blocks the
//!   source.
//!
//! This is the only module that knows sources, sinks and the engine together.

pub mod manager;
pub mod step;

pub use manager::{Manager, ManagerOptions};
pub use step::Step;

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, AsArray, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::catalog::{ConnectorCheck, StreamDef};
use crate::decode::{Chunk, Decoded, JsonDecoder};
use crate::engine::watermark::WatermarkTracker;
use crate::engine::{Emitted, Query};
use crate::error::{Error, RecordError, Result};
use crate::reach::AllowList;
use crate::sinks::{self, Claim, SinkContext};
use crate::sources::{self, SourceContext};
use crate::sql::Options;
use crate::sql::planner::ARRIVAL_TIME;

/// Checks connector options by building the connector's typed options.
#[derive(Debug, Clone, Default)]
pub struct Connectors {
    pub sources: SourceContext,
    pub sinks: SinkContext,
    /// Whether SQL may name the `file` source and sink. Off for SQL that arrives over
    /// HTTP: it must never read or write local files.
    pub deny_files: bool,
}

impl Connectors {
    fn check_files(&self, connector: &str, options: &Options) -> Result<()> {
        // `${VAR}` would let SQL from the network read this server's environment
        // (credentials included) and send it to a broker of its choosing.
        if self.deny_files
            && let Some((key, at)) = options.env_reference()
        {
            return Err(Error::user_at(
                format!(
                    "option '{key}' reads an environment variable: only SQL files loaded at start \
                     (--queries) may do that; write the value itself"
                ),
                at,
            ));
        }
        // Certificate files are read from the data directory only; without one, SQL
        // from the network names no local file at all.
        let local_files = ["ca", "client_cert", "client_key"];
        if self.deny_files
            && self.sources.file_root.is_none()
            && let Some((key, v)) = options
                .iter()
                .find(|(k, _)| local_files.contains(&k.as_str()))
        {
            return Err(Error::user_at(
                format!(
                    "option '{key}' names a local file, which SQL submitted over HTTP may do only \
                     when the server has a data directory to hold it"
                ),
                v.position,
            ));
        }
        if self.deny_files && connector == "file" {
            return Err(Error::user(
                "the 'file' connector is not available to SQL submitted over HTTP (it would read or \
                 write this server's files); use 'http', 'simulator' or a network connector",
            ));
        }
        Ok(())
    }

    /// The same connectors for SQL from the network: refusing local files, and
    /// reaching only the hosts the operator allowed (see [`crate::reach`]).
    pub fn untrusted(&self) -> Self {
        let mut c = self.clone();
        c.deny_files = true;
        c.sources.reach.restricted = true;
        c.sinks.reach.restricted = true;
        c
    }

    /// Sets the hosts SQL from the network may reach (`sluice serve --allow-…`).
    pub fn allow(&mut self, list: AllowList) {
        let list = Arc::new(list);
        self.sources.reach.allow = Arc::clone(&list);
        self.sinks.reach.allow = list;
    }
}

impl ConnectorCheck for Connectors {
    fn is_network(&self) -> bool {
        self.deny_files
    }

    fn check_source(&self, name: &str, connector: &str, options: &Options) -> Result<()> {
        self.check_files(connector, options)?;
        let mut o = options.clone();
        o.take("connector");
        o.parse_connector(&format!("source connector '{connector}'"), |o| {
            sources::build(name, connector, o, &self.sources).map(|_| ())
        })
    }
    fn check_sink(&self, name: &str, connector: &str, options: &Options) -> Result<Option<Claim>> {
        self.check_files(connector, options)?;
        let mut o = options.clone();
        o.take("connector");
        o.parse_connector(&format!("sink connector '{connector}'"), |o| {
            sinks::build(name, connector, o, &self.sinks).map(|s| s.claim())
        })
    }
}

/// A stream's decoder and watermark, independent of how chunks arrive.
pub struct StreamCore {
    pub def: StreamDef,
    decoder: JsonDecoder,
    tracker: WatermarkTracker,
}

impl StreamCore {
    pub fn new(def: &StreamDef, partitions: usize, now_ms: i64) -> Result<Self> {
        let decoder = def.decoder()?;
        if decoder.schema().as_ref() != def.info.schema.as_ref() {
            return Err(Error::internal(
                "decoder and planner disagree on the stream schema",
            ));
        }
        let delay = if def.event_time.is_some() {
            def.watermark_delay_ms
        } else {
            0
        };
        Ok(StreamCore {
            decoder,
            tracker: WatermarkTracker::new(delay, def.idle_timeout_ms, partitions, now_ms),
            def: def.clone(),
        })
    }

    /// Decodes chunks and updates the watermark; returns the batches and the new
    /// watermark.
    pub fn ingest(&mut self, chunks: &[Chunk], now_ms: i64) -> Result<(Decoded, Option<i64>)> {
        let mut decoded = self.decoder.decode(chunks)?;
        if let (Some(limit), true) = (self.def.max_future_ms, self.def.event_time.is_some()) {
            let bound = now_ms.saturating_add(limit);
            if decoded.partition_max.iter().any(|&(_, max)| max > bound) {
                decoded = self.without_future(chunks, decoded, bound, limit, now_ms)?;
            }
        }
        for c in chunks {
            self.tracker.observe(c.partition, None, now_ms);
        }
        for &(p, max) in &decoded.partition_max {
            self.tracker.observe(p, Some(max), now_ms);
        }
        Ok((decoded, self.tracker.watermark(now_ms)))
    }

    /// Takes the records whose event time is past `bound` out of `decoded`, to the
    /// error output (kind `future`): they reach no query and do not move the
    /// watermark. Rare, so it may cost: with several partitions in one step, their
    /// chunks are decoded again one partition at a time, to know each partition's
    /// largest remaining time.
    fn without_future(
        &self,
        chunks: &[Chunk],
        decoded: Decoded,
        bound: i64,
        limit: i64,
        now_ms: i64,
    ) -> Result<Decoded> {
        let mut partitions: Vec<usize> = Vec::new();
        for c in chunks {
            if !partitions.contains(&c.partition) {
                partitions.push(c.partition);
            }
        }
        let per_partition = match partitions.as_slice() {
            [p] => vec![(*p, decoded)],
            _ => partitions
                .iter()
                .map(|&p| {
                    let mine: Vec<Chunk> = chunks
                        .iter()
                        .filter(|c| c.partition == p)
                        .cloned()
                        .collect();
                    self.decoder.decode(&mine).map(|d| (p, d))
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let time = self.def.info.time_index;
        let mut out = Decoded::default();
        for (p, d) in per_partition {
            out.errors.extend(d.errors);
            let mut max: Option<i64> = None;
            for b in d.batches {
                let times = b
                    .column(time)
                    .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
                let keep: datafusion::arrow::array::BooleanArray = times
                    .iter()
                    .map(|t| Some(t.is_none_or(|t| t <= bound)))
                    .collect();
                for row in (0..b.num_rows()).filter(|&r| !keep.value(r)) {
                    let t = times.value(row);
                    let arrival = b
                        .column(b.num_columns() - 1)
                        .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>()
                        .value(row);
                    out.errors.push(RecordError {
                        kind: crate::error::RecordErrorKind::Future,
                        reason: format!(
                            "event time {} is more than {} ahead of the wall clock ({}): \
                             the stream's max_future",
                            crate::render::timestamp_ms(t),
                            fmt_duration(limit),
                            crate::render::timestamp_ms(now_ms)
                        ),
                        payload: crate::render::row_json(&b, row)?,
                        arrival_ms: arrival,
                    });
                }
                let kept = datafusion::arrow::compute::filter_record_batch(&b, &keep)?;
                if kept.num_rows() == 0 {
                    continue;
                }
                let kept_times =
                    kept.column(time)
                        .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
                if let Some(m) = datafusion::arrow::compute::max(kept_times) {
                    max = Some(max.map_or(m, |x: i64| x.max(m)));
                }
                out.batches.push(kept);
            }
            if let Some(m) = max {
                out.partition_max.push((p, m));
            }
        }
        Ok(out)
    }

    /// Recomputes the watermark on the wall clock (idle advance).
    pub fn tick(&mut self, now_ms: i64) -> Option<i64> {
        self.tracker.watermark(now_ms)
    }

    pub fn finish(&mut self) -> i64 {
        self.tracker.finish()
    }
}

/// A duration as a user writes it: `1h`, `90s`, `1500ms`.
fn fmt_duration(ms: i64) -> String {
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Schema of error-output rows, for sinks that receive them.
pub fn error_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    Arc::new(Schema::new(vec![
        s("query"),
        s("stream"),
        s("kind"),
        s("reason"),
        s("payload"),
        Field::new(
            ARRIVAL_TIME,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]))
}

/// Error records as a batch of [`error_schema`].
pub fn errors_batch(query: &str, stream: &str, errors: &[RecordError]) -> Result<RecordBatch> {
    let n = errors.len();
    let repeat = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v; n])) };
    let columns: Vec<ArrayRef> = vec![
        repeat(query),
        repeat(stream),
        Arc::new(StringArray::from_iter_values(
            errors.iter().map(|e| e.kind.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            errors.iter().map(|e| e.reason.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            errors.iter().map(|e| e.payload.as_str()),
        )),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            errors.iter().map(|e| e.arrival_ms),
        )),
    ];
    Ok(RecordBatch::try_new(error_schema(), columns)?)
}

/// Runs one step of a query: pushes the decoded batches, hands the stream's decode
/// errors to the query's error output, then applies the new watermark. The decode
/// errors come first in [`Emitted::errors`], in their order (the manager logs them
/// once per stream and only the rest per query).
///
/// This is the query's boundary: evaluation runs on a stack sized for the statement
/// limits (a query's expressions recurse as deep as they nest), and a panic anywhere
/// in it (a bug in Sluice or in a DataFusion function) fails this query with the
/// panic's message instead of the stream task that runs it and every other query on
/// that stream. The stream task then drops the query, whose state may be half
/// updated, and goes on with the others.
pub(crate) fn step_query(
    q: &mut Query,
    decoded: &Decoded,
    watermark: Option<i64>,
    arrival_ms: i64,
) -> Result<Emitted> {
    crate::limits::with_eval_stack(|| {
        let step =
            std::panic::AssertUnwindSafe(|| step_query_now(q, decoded, watermark, arrival_ms));
        std::panic::catch_unwind(step).unwrap_or_else(|panic| {
            Err(Error::internal(format!(
                "the query panicked while evaluating a batch: {}",
                crate::limits::panic_message(panic.as_ref())
            )))
        })
    })
}

fn step_query_now(
    q: &mut Query,
    decoded: &Decoded,
    watermark: Option<i64>,
    arrival_ms: i64,
) -> Result<Emitted> {
    let mut out = Emitted::default();
    if !decoded.errors.is_empty() {
        q.counters.errors += decoded.errors.len() as u64;
        out.errors.extend(decoded.errors.iter().cloned());
    }
    for b in &decoded.batches {
        let e = q.push(b, arrival_ms)?;
        out.batches.extend(e.batches);
        out.errors.extend(e.errors);
    }
    if let Some(wm) = watermark {
        out.batches.extend(q.advance(wm)?.batches);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::sync::Arc;

    use datafusion::arrow::array::RecordBatch;
    use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema};
    use datafusion::logical_expr::ColumnarValue;
    use datafusion::physical_expr::PhysicalExpr;

    use super::step_query;
    use crate::catalog::Catalog;
    use crate::decode::{Chunk, Decoded};
    use crate::engine::Query;
    use crate::engine::stateless::StatelessOp;

    /// A filter that panics when it runs: a bug in an expression, standing in for
    /// one in Sluice or in DataFusion.
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct Panics;

    impl fmt::Display for Panics {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("panics()")
        }
    }

    impl PhysicalExpr for Panics {
        fn return_field(&self, _: &Schema) -> datafusion::error::Result<FieldRef> {
            Ok(Arc::new(Field::new("p", DataType::Boolean, false)))
        }
        fn evaluate(&self, _: &RecordBatch) -> datafusion::error::Result<ColumnarValue> {
            panic!("byte array offset overflow")
        }
        fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
            Vec::new()
        }
        fn with_new_children(
            self: Arc<Self>,
            _: Vec<Arc<dyn PhysicalExpr>>,
        ) -> datafusion::error::Result<Arc<dyn PhysicalExpr>> {
            Ok(self)
        }
        fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("panics()")
        }
    }

    /// A panic in a query's evaluation is caught at the query's step: an error that
    /// fails that query with the panic's message, instead of unwinding through the
    /// stream task; another query on the same records goes on.
    #[test]
    fn a_panic_in_evaluation_fails_only_its_query() {
        let mut catalog = Catalog::new();
        catalog
            .apply(
                "CREATE STREAM s (x BIGINT) WITH (connector = 'http');\n\
                 CREATE QUERY good AS SELECT x FROM s;\n\
                 CREATE QUERY bad AS SELECT x FROM s",
                &super::Connectors::default(),
            )
            .unwrap();
        let def = catalog.streams["s"].clone();
        let mut core = super::StreamCore::new(&def, 1, 0).unwrap();
        let mut good = Query::new(Arc::clone(&catalog.queries["good"].plan)).unwrap();
        // The same plan with a panicking filter in front.
        let p = &catalog.queries["bad"].plan;
        let mut plan = crate::engine::QueryPlan {
            stream: p.stream.clone(),
            input: p.input.clone(),
            input_schema: Arc::clone(&p.input_schema),
            time_index: p.time_index,
            pre: p.pre.clone(),
            aggregate: p.aggregate.clone(),
            post: p.post.clone(),
            output_schema: Arc::clone(&p.output_schema),
        };
        plan.pre.insert(0, StatelessOp::Filter(Arc::new(Panics)));
        let mut bad = Query::new(Arc::new(plan)).unwrap();
        let chunk = Chunk::new(b"{\"x\": 1}\n{\"x\": 2}".to_vec(), 0, 0);
        let (decoded, wm) = core.ingest(std::slice::from_ref(&chunk), 0).unwrap();
        let err = step_query(&mut bad, &decoded, wm, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "internal error: the query panicked while evaluating a batch: byte array offset overflow"
        );
        let out = step_query(&mut good, &decoded, wm, 0).unwrap();
        assert_eq!(out.rows(), 2);
        // The thread that caught it goes on stepping queries.
        let out = step_query(&mut good, &Decoded::default(), None, 0).unwrap();
        assert_eq!(out.rows(), 0);
    }
}
