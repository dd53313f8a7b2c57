//! Sinks: where query results go (last stage of the data flow).
//!
//! A sink receives the batches of every query that inserts into it, one at a time, and
//! is flushed when those queries stop. `write` returning slowly is how a sink pushes
//! back: its queries wait, and their sources with them.
//!
//! One file per connector; [`build`] is the one place connectors are registered.

pub mod archive;
pub mod dynamodb;
pub mod file;
pub mod items;
pub mod kinesis;
pub mod mqtt;
pub mod redis;
pub mod stdout;
pub mod table;
pub mod template;

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use futures::future::BoxFuture;

use crate::error::{Error, Result};
use crate::health::Health;
use crate::reach::Reach;
use crate::render::TimestampFormat;
use crate::sql::Options;

/// The contract of every sink connector.
pub trait Sink: Send {
    /// Writes one batch. Returning `Ok` means the rows are handed on (written, or
    /// buffered to be written by `flush`).
    fn write<'a>(&'a mut self, batch: &'a RecordBatch) -> BoxFuture<'a, Result<()>>;

    /// Makes everything written so far durable or visible; called at shutdown.
    fn flush(&mut self) -> BoxFuture<'_, Result<()>>;

    /// The connection's health, for sinks that talk to a network service.
    fn health(&self) -> Option<Arc<Health>> {
        None
    }

    /// The storage this sink writes that no other sink may write too (checked by
    /// the catalog at CREATE SINK); `None` for sinks that own none.
    fn claim(&self) -> Option<Claim> {
        None
    }
}

/// Storage a sink owns. Two archives under one prefix would each take the other's
/// objects for their own (ad hoc SQL reads everything under an archive's prefix), so
/// one sink could put rows into another's table; two table sinks on one embedded
/// table would mix their items. Many queries may still write one sink: `INSERT INTO`
/// it from each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Objects under `prefix` (path segments) of the store `store` (`file`,
    /// `s3://bucket`, `s3://bucket at <endpoint>`, `gs://bucket`, `az://container`).
    Prefix {
        store: String,
        prefix: Vec<String>,
        /// The location as the user knows it (a directory, a URL).
        describe: String,
    },
    /// An embedded table, by name.
    Table(String),
}

impl Claim {
    /// How `self` stands to `other`: `None` when they are apart, else the words for
    /// it ("the same location as", "inside", "containing").
    pub fn overlap(&self, other: &Claim) -> Option<&'static str> {
        match (self, other) {
            (
                Claim::Prefix {
                    store: a,
                    prefix: p,
                    ..
                },
                Claim::Prefix {
                    store: b,
                    prefix: q,
                    ..
                },
            ) if a == b => {
                if p == q {
                    Some("the same location as")
                } else if p.starts_with(q) {
                    Some("inside")
                } else if q.starts_with(p) {
                    Some("containing")
                } else {
                    None
                }
            }
            (Claim::Table(a), Claim::Table(b)) if a == b => Some("the same table as"),
            _ => None,
        }
    }

    /// What the sink writes, for messages.
    pub fn describe(&self) -> String {
        match self {
            Claim::Prefix { describe, .. } => format!("the archive at {describe}"),
            Claim::Table(t) => format!("the embedded table '{t}'"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct SinkContext {
    /// When set, file paths must lie under this directory (SQL from untrusted users).
    pub file_root: Option<PathBuf>,
    /// The server's data directory, for what a sink stores locally (archives,
    /// embedded tables); `None` for `sluice run`.
    pub data_dir: Option<PathBuf>,
    /// The hosts the sink may connect to (all, unless the SQL came over HTTP).
    pub reach: Reach,
}

pub const CONNECTORS: [&str; 8] = [
    "archive", "dynamodb", "file", "kinesis", "mqtt", "redis", "stdout", "table",
];

/// Builds the sink `name` (checking its options); nothing is connected or spawned
/// until the first write, so building is also how a CREATE SINK is validated.
pub fn build(
    name: &str,
    connector: &str,
    options: &Options,
    ctx: &SinkContext,
) -> Result<Box<dyn Sink>> {
    let mut options = options.clone();
    options.expand_env()?;
    match connector {
        "archive" => Ok(Box::new(archive::ArchiveSink::from_options(
            name, options, ctx,
        )?)),
        "dynamodb" => Ok(Box::new(dynamodb::DynamoDbSink::from_options(
            options, ctx,
        )?)),
        "file" => Ok(Box::new(file::FileSink::from_options(options, ctx)?)),
        "kinesis" => Ok(Box::new(kinesis::KinesisSink::from_options(options, ctx)?)),
        "mqtt" => Ok(Box::new(mqtt::MqttSink::from_options(options, ctx)?)),
        "redis" => Ok(Box::new(redis::RedisSink::reaching(options, &ctx.reach)?)),
        "stdout" => Ok(Box::new(stdout::StdoutSink::from_options(options)?)),
        "table" => Ok(Box::new(table::TableSink::from_options(options, ctx)?)),
        other => Err(Error::user(format!(
            "unknown sink connector '{other}'; available: {}",
            CONNECTORS.join(", ")
        ))),
    }
}

/// Takes the `timestamp_format` option of a sink that writes timestamps as text
/// (`rfc3339`, the default, or `epoch_ms`); sinks that do not take it reject it by
/// name, like any unknown option.
pub fn take_timestamp_format(o: &mut Options) -> Result<TimestampFormat> {
    match o.take(TimestampFormat::OPTION) {
        None => Ok(TimestampFormat::default()),
        Some(v) => TimestampFormat::parse(&v.value).map_err(|e| Error::user_at(e, v.position)),
    }
}
