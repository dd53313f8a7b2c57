//! The catalog: streams, sinks and queries by name, and the applications they came
//! in (control plane, between the SQL layer and the runtime).
//!
//! Applying statements is all-or-nothing (see [`apply`] for CREATE, CREATE OR
//! REPLACE, DROP and whole applications). Connector options are checked here too
//! (through [`ConnectorCheck`], which the runtime implements), so a typo in a sink
//! option fails the submission, not the first write.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use crate::decode::DecodeColumn;
use crate::engine::QueryPlan;
use crate::error::{Error, Position, Result, name_hint};
use crate::sinks::Claim;
use crate::sql::planner::{ARRIVAL_TIME, Planner, StreamInfo};
use crate::sql::{self, ObjectKind, Options};

mod apply;
pub use apply::Change;

/// Default largest record a stream accepts (bytes); larger ones go to the error output.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1 << 20;

/// Default of `max_future`: a record more than an hour ahead of the wall clock has a
/// wrong clock or a wrong unit (a microsecond epoch read as milliseconds).
pub const DEFAULT_MAX_FUTURE_MS: i64 = 3_600_000;

/// Validates connector options; implemented where the connectors are known.
pub trait ConnectorCheck {
    /// `name` is the stream's or the sink's: some connectors derive a location (a
    /// checkpoint file, an archive directory) from it.
    fn check_source(&self, name: &str, connector: &str, options: &Options) -> Result<()>;
    /// Also returns the storage the sink would own, which no other sink may share.
    fn check_sink(&self, name: &str, connector: &str, options: &Options) -> Result<Option<Claim>>;
    /// Whether these checks are those of SQL that came over HTTP (what is created
    /// under them remembers it, so a restart checks it the same way again).
    fn is_network(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone)]
pub struct StreamDef {
    pub name: String,
    pub sql: String,
    pub columns: Vec<DecodeColumn>,
    /// Event-time column; `None` means processing time (`arrival_time`).
    pub event_time: Option<String>,
    pub watermark_delay_ms: i64,
    pub idle_timeout_ms: Option<i64>,
    pub max_record_bytes: usize,
    /// Records whose event time is more than this far ahead of the wall clock go to
    /// the error output (kind `future`); `None`: no bound (`max_future = 'off'`).
    pub max_future_ms: Option<i64>,
    /// Sink receiving this stream's malformed and late records (default: the log).
    pub error_sink: Option<String>,
    pub connector: String,
    /// The connector's own options.
    pub options: Options,
    pub info: Arc<StreamInfo>,
    /// Created by SQL that came over HTTP: restored under the same rules.
    pub from_network: bool,
    /// The application it belongs to, if any.
    pub app: Option<String>,
    /// Its definition's normal form (see `apply`), to tell a changed one.
    pub fingerprint: String,
}

impl StreamDef {
    /// The decoder for this stream's records: its declared columns, then
    /// `arrival_time`; the event-time column (if any) must never be null.
    pub fn decoder(&self) -> Result<crate::decode::JsonDecoder> {
        let time_index = self.event_time.as_ref().map(|_| self.info.time_index);
        crate::decode::JsonDecoder::new(
            self.columns.clone(),
            ARRIVAL_TIME,
            time_index,
            self.max_record_bytes,
        )
    }
}

#[derive(Debug, Clone)]
pub struct SinkDef {
    pub name: String,
    pub sql: String,
    pub connector: String,
    pub options: Options,
    /// Created by SQL that came over HTTP: restored under the same rules.
    pub from_network: bool,
    /// The application it belongs to, if any.
    pub app: Option<String>,
    /// Its definition's normal form (see `apply`), to tell a changed one.
    pub fingerprint: String,
    /// The storage it owns (an archive's prefix, an embedded table), if any.
    pub claim: Option<Claim>,
}

#[derive(Debug, Clone)]
pub struct QueryDef {
    pub name: String,
    pub sql: String,
    pub sink: Option<String>,
    /// The query part, normalized (how an unnamed query applied again is recognized,
    /// whatever name it was given).
    pub query_text: String,
    pub plan: Arc<QueryPlan>,
    /// The application it belongs to, if any.
    pub app: Option<String>,
    /// Its definition's normal form (see `apply`), to tell a changed one.
    pub fingerprint: String,
}

/// An application: one SQL file, submitted (or loaded from `--queries`) under a
/// name; its objects carry that name.
#[derive(Debug, Clone)]
pub struct AppDef {
    pub name: String,
    /// Its text as last applied.
    pub sql: String,
}

#[derive(Clone, Default)]
pub struct Catalog {
    planner: Planner,
    pub streams: BTreeMap<String, StreamDef>,
    pub sinks: BTreeMap<String, SinkDef>,
    pub queries: BTreeMap<String, QueryDef>,
    pub applications: BTreeMap<String, AppDef>,
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    fn stream_def(
        &self,
        s: sql::CreateStream,
        text: String,
        connectors: &dyn ConnectorCheck,
    ) -> Result<StreamDef> {
        let mut options = s.options;
        let connector = options.require_string("connector", "CREATE STREAM")?;
        if let Some(format) = options.take("format")
            && !format.value.eq_ignore_ascii_case("json")
        {
            return Err(Error::user_at(
                format!(
                    "format '{}' is not supported; streams read 'json' (objects, arrays or NDJSON)",
                    format.value
                ),
                format.position,
            ));
        }
        let option_time = options.take("event_time");
        let option_delay = options.take_duration("watermark_delay")?;
        let idle_timeout_ms = options
            .take_duration("idle_timeout")?
            .map(|d| d.as_millis() as i64);
        let max_record_bytes = options
            .take_u64("max_record_bytes")?
            .map(|n| n as usize)
            .unwrap_or(DEFAULT_MAX_RECORD_BYTES);
        let max_future_ms = match options.take("max_future") {
            None => Some(DEFAULT_MAX_FUTURE_MS),
            Some(v) if v.value.trim().eq_ignore_ascii_case("off") => None,
            Some(v) => Some(
                crate::sql::options::parse_duration(&v.value)
                    .map(|d| d.as_millis() as i64)
                    .ok_or_else(|| {
                        Error::user_at(
                            format!(
                                "option 'max_future' must be a duration such as '1h' or '10m', \
                                 or 'off', got '{}'",
                                v.value
                            ),
                            v.position,
                        )
                    })?,
            ),
        };
        let error_sink = options.take("errors");
        if let Some(e) = &error_sink
            && !self.sinks.contains_key(&e.value)
        {
            let hint = name_hint(&e.value, self.sinks.keys().map(String::as_str));
            let advice = if hint.is_empty() {
                "; create the sink first".to_string()
            } else {
                hint
            };
            return Err(Error::user_at(
                format!("errors = '{}' names no sink{advice}", e.value),
                e.position,
            ));
        }
        let error_sink = error_sink.map(|e| e.value);

        let mut columns = Vec::with_capacity(s.columns.len());
        for c in &s.columns {
            if c.name == ARRIVAL_TIME || c.name == "window_start" || c.name == "window_end" {
                return Err(Error::user_at(
                    format!(
                        "column name '{}' is reserved; read that JSON field under another name with \
                         PATH, e.g. {}_ TIMESTAMP PATH '{}'",
                        c.name, c.name, c.name
                    ),
                    c.position,
                ));
            }
            let data_type = self.planner.resolve_type(&c.sql_type, c.position)?;
            if let Some(key) = &c.metadata {
                check_metadata(&connector, key, &data_type, c.position)?;
            }
            columns.push(DecodeColumn {
                name: c.name.clone(),
                data_type,
                nullable: c.nullable,
                path: c.path.clone(),
                metadata: c.metadata.clone(),
            });
        }

        let (event_time, delay_ms, at) = match (&s.watermark, option_time) {
            (Some(_), Some(o)) => {
                return Err(Error::user_at(
                    "event time is declared twice: use either WATERMARK FOR or the event_time option",
                    o.position,
                ));
            }
            (Some(w), None) => {
                if option_delay.is_some() {
                    return Err(Error::user_at(
                        "watermark_delay conflicts with WATERMARK FOR",
                        w.position,
                    ));
                }
                let delay = match &w.delay {
                    None => 0,
                    Some(e) => self.planner.interval_ms(e, w.position)?,
                };
                (Some(w.column.clone()), delay, w.position)
            }
            (None, Some(o)) => (
                Some(o.value.clone()),
                option_delay.map(|d| d.as_millis() as i64).unwrap_or(0),
                o.position,
            ),
            (None, None) => {
                if option_delay.is_some() {
                    return Err(Error::user_at(
                        "watermark_delay needs event_time",
                        s.position,
                    ));
                }
                (None, 0, s.position)
            }
        };
        let time_index = match &event_time {
            None => columns.len(),
            Some(t) => {
                let i = columns.iter().position(|c| &c.name == t).ok_or_else(|| {
                    Error::user_at(
                        format!(
                            "event-time column '{t}' is not a column of stream '{}'",
                            s.name
                        ),
                        at,
                    )
                })?;
                if !matches!(
                    columns[i].data_type,
                    DataType::Timestamp(TimeUnit::Millisecond, _)
                ) {
                    return Err(Error::user_at(
                        format!(
                            "event-time column '{t}' must be TIMESTAMP (milliseconds; JSON numbers are epoch \
                             milliseconds, strings RFC 3339), not {}",
                            sql::sql_type(&columns[i].data_type)
                        ),
                        at,
                    ));
                }
                // Event time must always be present: windows need it.
                columns[i].data_type = DataType::Timestamp(TimeUnit::Millisecond, None);
                i
            }
        };
        let mut fields: Vec<Field> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(&c.name, c.data_type.clone(), c.nullable && i != time_index))
            .collect();
        fields.push(Field::new(
            ARRIVAL_TIME,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ));
        let info = Arc::new(StreamInfo {
            name: s.name.clone(),
            schema: Arc::new(Schema::new(fields)),
            declared: columns.iter().map(|c| c.name.clone()).collect(),
            time_index,
            topic_column: columns
                .iter()
                .find(|c| c.metadata.as_deref() == Some("topic"))
                .map(|c| c.name.clone()),
        });
        connectors
            .check_source(&s.name, &connector, &options)
            .map_err(|e| e.or_at(s.position))?;
        options.take("connector");
        Ok(StreamDef {
            name: s.name,
            sql: text,
            columns,
            event_time,
            watermark_delay_ms: delay_ms,
            idle_timeout_ms,
            max_record_bytes,
            max_future_ms,
            error_sink,
            connector,
            options,
            info,
            from_network: connectors.is_network(),
            app: None,
            fingerprint: String::new(),
        })
    }

    /// The names of every stream, sink or query.
    pub fn names(&self, kind: ObjectKind) -> Vec<&str> {
        match kind {
            ObjectKind::Stream => self.streams.keys().map(String::as_str).collect(),
            ObjectKind::Sink => self.sinks.keys().map(String::as_str).collect(),
            ObjectKind::Query => self.queries.keys().map(String::as_str).collect(),
        }
    }

    pub fn stream(&self, name: &str) -> Option<&StreamDef> {
        self.streams.get(name)
    }

    /// The queries reading a stream.
    pub fn queries_on<'a>(&'a self, stream: &'a str) -> impl Iterator<Item = &'a QueryDef> + 'a {
        self.queries
            .values()
            .filter(move |q| q.plan.stream == stream)
    }
}

/// Accepts any connector and option: for offline checks of SQL alone.
#[derive(Debug, Default)]
pub struct AnyConnector;

impl ConnectorCheck for AnyConnector {
    fn check_source(&self, _: &str, _: &str, _: &Options) -> Result<()> {
        Ok(())
    }
    fn check_sink(&self, _: &str, _: &str, _: &Options) -> Result<Option<Claim>> {
        Ok(None)
    }
}

#[allow(dead_code)]
fn _position(_: Position) {}

/// A metadata column must name a key its connector provides, in a type the value
/// converts to.
fn check_metadata(connector: &str, key: &str, to: &DataType, at: Position) -> Result<()> {
    let keys = crate::sources::metadata_keys(connector);
    let Some((_, from)) = keys.iter().find(|(k, _)| *k == key) else {
        let offered = if keys.is_empty() {
            format!("connector '{connector}' provides no metadata")
        } else {
            format!(
                "connector '{connector}' provides: {}",
                keys.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
            )
        };
        return Err(Error::user_at(
            format!("unknown metadata key '{key}': {offered}"),
            at,
        ));
    };
    if !datafusion::arrow::compute::can_cast_types(from, to) {
        return Err(Error::user_at(
            format!(
                "metadata '{key}' is {} and cannot be read as {}",
                sql::sql_type(from),
                sql::sql_type(to)
            ),
            at,
        ));
    }
    Ok(())
}
