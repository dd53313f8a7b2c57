//! Sources: where a stream's bytes come from (first stage of the data flow).
//!
//! A source produces [`Chunk`]s of raw JSON (one or more records each) into a bounded
//! channel; the stream's decode stage turns them into batches. A full channel makes the
//! source wait, so a slow query slows its source instead of buffering without bound.
//! A source stops when its input ends (it returns `Ok`) or when the receiver is dropped
//! (shutdown: its next send fails and it returns).
//!
//! One file per connector; [`build`] is the one place connectors are registered.

pub mod file;
pub mod http;
pub mod kinesis;
pub mod mqtt;
pub mod simulator;

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

pub use crate::decode::Chunk;
use crate::error::{Error, RecordError, Result};
use crate::health::Health;
use crate::reach::Reach;
use crate::sql::Options;

/// What a source hands the stream: a chunk, and optionally who waits to hear how it
/// went (HTTP ingest answers its client; MQTT acknowledges after processing).
#[derive(Debug)]
pub struct Input {
    pub chunk: Chunk,
    /// Answered after the stream's queries have processed the chunk.
    pub ack: Option<oneshot::Sender<IngestReport>>,
}

impl From<Chunk> for Input {
    fn from(chunk: Chunk) -> Self {
        Input { chunk, ack: None }
    }
}

/// How one acknowledged chunk went.
#[derive(Debug, Default, Clone)]
pub struct IngestReport {
    pub accepted: usize,
    pub rejected: Vec<RecordError>,
    /// The chunk could not be processed at all (not a record's fault): a source that
    /// acknowledges must not acknowledge it.
    pub failed: Option<String>,
}

/// The contract of every source connector.
pub trait Source: Send {
    /// How many independent partitions the source reads (the stream's watermark is the
    /// minimum over them).
    fn partitions(&self) -> usize {
        1
    }

    /// The connection's health, for sources that talk to a network service.
    fn health(&self) -> Option<Arc<Health>> {
        None
    }

    /// Produces chunks until the input ends or `out` is closed.
    fn run(self: Box<Self>, out: mpsc::Sender<Input>) -> BoxFuture<'static, Result<()>>;
}

/// What sources may touch on this host.
#[derive(Debug, Clone, Default)]
pub struct SourceContext {
    /// When set, file paths must lie under this directory (SQL from untrusted users).
    pub file_root: Option<PathBuf>,
    /// The server's data directory, for state a source keeps across restarts
    /// (checkpoints); `None` for `sluice run`, which keeps none.
    pub data_dir: Option<PathBuf>,
    /// The hosts the source may connect to (all, unless the SQL came over HTTP).
    pub reach: Reach,
}

/// The source connectors, by name.
pub const CONNECTORS: [&str; 5] = ["file", "http", "kinesis", "mqtt", "simulator"];

/// Builds a source from its connector name and options, rejecting unknown options.
/// Builds the source of stream `name` (checking its options); nothing connects until
/// it runs, so building is also how a CREATE STREAM is validated.
pub fn build(
    name: &str,
    connector: &str,
    options: &Options,
    ctx: &SourceContext,
) -> Result<Box<dyn Source>> {
    let mut options = options.clone();
    options.expand_env()?;
    match connector {
        "file" => Ok(Box::new(file::FileSource::from_options(options, ctx)?)),
        "http" => Ok(Box::new(http::HttpSource::from_options(options)?)),
        "kinesis" => Ok(Box::new(kinesis::KinesisSource::from_options(
            name, options, ctx,
        )?)),
        "mqtt" => Ok(Box::new(mqtt::MqttSource::from_options(options, ctx)?)),
        "simulator" => Ok(Box::new(simulator::Simulator::from_options(options)?)),
        other => Err(Error::user(format!(
            "unknown source connector '{other}'; available: {}",
            CONNECTORS.join(", ")
        ))),
    }
}

/// The metadata a connector provides to `METADATA` columns, with the type of each.
pub fn metadata_keys(connector: &str) -> Vec<(&'static str, DataType)> {
    match connector {
        "mqtt" => mqtt::METADATA
            .iter()
            .map(|(k, t)| (*k, t.clone()))
            .collect(),
        "kinesis" => kinesis::METADATA
            .iter()
            .map(|(k, t)| (*k, t.clone()))
            .collect(),
        _ => Vec::new(),
    }
}

/// Resolves a user-given path against the allowed root, if any.
pub(crate) fn resolve_path(path: &str, root: Option<&PathBuf>) -> Result<PathBuf> {
    let p = PathBuf::from(path);
    let Some(root) = root else {
        return Ok(p);
    };
    let joined = root.join(&p);
    let escapes = p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir));
    if escapes {
        return Err(Error::user(format!(
            "path '{path}' must be relative to the data directory and stay inside it"
        )));
    }
    Ok(joined)
}
