//! `archive` sink: query results kept as files in an object store, batched like
//! Firehose (last stage of the data flow; read back by ad hoc SQL in
//! [`crate::adhoc`]).
//!
//! ```sql
//! CREATE SINK raw WITH (connector = 'archive');                  -- <data_dir>/archive/raw
//! CREATE SINK raw WITH (connector = 'archive', url = 's3://bucket/readings',
//!                       region = 'eu-west-1', flush_size_mb = '64', flush_interval = '5m');
//! ```
//!
//! **Where.** A local directory by default, `<data_dir>/archive/<sink name>` (or `path`),
//! or `url`: `s3://bucket/prefix` (S3 and compatible servers: `endpoint`, `path_style`,
//! `region`, static credentials, else the standard environment chain of object_store:
//! `AWS_*` variables, web identity, ECS and EC2 roles), `gs://bucket/prefix` and
//! `az://container/prefix` (configured from the `GOOGLE_*` / `AZURE_*` variables).
//!
//! **Buffering.** Rows are buffered per partition and written when the buffer holds
//! `flush_size_mb` (default 64) or `flush_interval` (default 60 s) has passed since its
//! first row, whichever comes first, and when the sink stops. A slow store pushes back:
//! `write` waits while a flush is retried.
//!
//! **Layout.** `<prefix>/<partition>/<sink>-<first event ms>-<content hash>.<ext>` where
//! the partition comes from `partition_format` (default `dt=%Y-%m-%d/hour=%H`, UTC)
//! applied to the `partition_by` column (default: the first timestamp column of the
//! rows, e.g. `window_start` or the stream's event time; with none, the time the sink
//! received the rows). The name is derived from the content, so a replay that writes
//! the same rows rewrites the same object instead of adding a duplicate. Each object
//! is written with one put: S3 makes it visible whole, the local store writes a
//! `…#n` staging file and renames it, so a reader never sees a partial object (a
//! staging file a crash leaves behind does not end in the format's extension and
//! is ignored).
//!
//! **Errors.** Rows that cannot be archived (no partition time, a schema that differs
//! from the archive's, an encoding failure) are written under `<prefix>/_errors/…` as
//! JSON lines `{"reason", "record"}` with the extension `.ndjson`, never dropped.
//! Failed puts are retried with backoff (the sink's health says `retrying` and why).
//!
//! Delivery is at-least-once up to the buffer: rows buffered when the process is
//! killed (not stopped) are lost unless the source replays them (Kinesis checkpoints,
//! a file).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::format::{Item, StrftimeItems};
use datafusion::arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, take_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit, TimestampMillisecondType};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use futures::future::BoxFuture;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Claim, Sink, SinkContext};
use crate::aws::AwsConnect;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::health::{Backoff, Health};
use crate::reach::Deferred;
use crate::render::{TimestampFormat, json_lines};
use crate::sources::resolve_path;
use crate::sql::Options;

/// File format of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Parquet with the given compression (default zstd).
    Parquet(ParquetCompression),
    /// JSON lines, gzip-compressed or not.
    Json { gzip: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetCompression {
    Zstd,
    Snappy,
    None,
}

impl Format {
    /// The extension data objects end with (readers list by it).
    pub fn extension(&self) -> &'static str {
        match self {
            Format::Parquet(_) => ".parquet",
            Format::Json { gzip: false } => ".jsonl",
            Format::Json { gzip: true } => ".jsonl.gz",
        }
    }
}

/// Where an archive lives: a store, the URL of its root as DataFusion registers it
/// (`file:///`, `s3://bucket`), and the prefix inside it.
#[derive(Debug, Clone)]
pub struct Location {
    pub store: Arc<dyn ObjectStore>,
    pub root_url: String,
    pub prefix: ObjPath,
}

impl Location {
    /// The archive's table URL (`s3://bucket/prefix/`), for a ListingTable.
    pub fn table_url(&self) -> String {
        let root = self.root_url.trim_end_matches('/');
        if self.prefix.as_ref().is_empty() {
            format!("{root}/")
        } else {
            format!("{root}/{}/", self.prefix)
        }
    }
}

/// The Hive-style partition layout: `key=strftime` segments joined by `/`.
#[derive(Debug, Clone)]
pub struct PartitionFormat {
    pattern: String,
    /// Partition column names, in path order (`dt`, `hour`).
    pub columns: Vec<String>,
    /// The finest unit the pattern shows, in ms: rows are grouped by
    /// `time / unit` before formatting, so a batch formats each distinct bucket once.
    unit_ms: i64,
}

impl PartitionFormat {
    pub fn parse(pattern: &str) -> std::result::Result<Self, String> {
        let mut columns = Vec::new();
        for seg in pattern.split('/') {
            let Some((key, fmt)) = seg.split_once('=') else {
                return Err(format!(
                    "partition_format segment '{seg}' must read key=pattern, e.g. dt=%Y-%m-%d"
                ));
            };
            let ok_key = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                && !key.starts_with(|c: char| c.is_ascii_digit());
            if !ok_key {
                return Err(format!(
                    "partition key '{key}' must be a lowercase identifier (a column name)"
                ));
            }
            if fmt.is_empty() || StrftimeItems::new(fmt).any(|i| matches!(i, Item::Error)) {
                return Err(format!("'{fmt}' is not a valid strftime pattern"));
            }
            if columns.iter().any(|c| c == key) {
                return Err(format!("partition key '{key}' appears twice"));
            }
            columns.push(key.to_string());
        }
        let has = |specs: &[&str]| specs.iter().any(|s| pattern.contains(s));
        let unit_ms = if has(&["%S", "%s", "%T", "%f", "%.f", "%+", "%c", "%r", "%X"]) {
            1_000
        } else if has(&["%M", "%R"]) {
            60_000
        } else if has(&["%H", "%I", "%k", "%l", "%p", "%P"]) {
            3_600_000
        } else {
            86_400_000
        };
        Ok(PartitionFormat {
            pattern: pattern.to_string(),
            columns,
            unit_ms,
        })
    }

    fn format(&self, bucket: i64) -> String {
        match chrono::DateTime::from_timestamp_millis(bucket * self.unit_ms) {
            Some(t) => t.format(&self.pattern).to_string(),
            None => "out_of_range".to_string(),
        }
    }
}

/// An archive sink's settings: parsed once, used by the sink to write and by ad hoc
/// SQL to read.
#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    pub name: String,
    pub location: Location,
    /// What to show operators (`s3://bucket/prefix`, a directory).
    pub describe: String,
    /// Which store the prefix is in, for telling overlapping archives apart
    /// (`file`, `s3://bucket`, `s3://bucket at <endpoint>`, `gs://bucket`, …).
    pub store: String,
    /// Why SQL from the network may not write this store (see [`AwsConnect`]).
    pub refused: Deferred,
    pub format: Format,
    /// `timestamp_format` of JSON-lines archives (Parquet keeps timestamps typed).
    pub timestamps: TimestampFormat,
    pub flush_bytes: usize,
    pub flush_interval: Duration,
    pub partition_by: Option<String>,
    pub partitions: PartitionFormat,
}

impl ArchiveConfig {
    pub fn from_options(name: &str, o: &mut Options, ctx: &SinkContext) -> Result<Self> {
        let at = o.position;
        // An empty value counts as absent: `url = '${ARCHIVE_URL:-}'` means "local
        // unless the environment names a store".
        let url = o.take("url").filter(|v| !v.value.trim().is_empty());
        let path = o.take("path").filter(|v| !v.value.trim().is_empty());
        let mut refused = Deferred::default();
        let (location, describe, store) = match (url, path) {
            (Some(_), Some(p)) => {
                return Err(Error::user_at(
                    "give either 'url' or 'path', not both",
                    p.position,
                ));
            }
            (Some(u), None) => {
                remote(u.value.trim(), o, ctx, &mut refused).map_err(|e| e.or_at(u.position))?
            }
            (None, path) => {
                let dir = match (path, &ctx.data_dir) {
                    (Some(p), _) => resolve_path(p.value.trim(), ctx.file_root.as_ref())
                        .map_err(|e| e.or_at(p.position))?,
                    (None, Some(d)) => d.join("archive").join(name),
                    (None, None) => {
                        return Err(Error::user_at(
                            "the archive sink needs 'path' or 'url' when there is no data \
                             directory (`sluice run`); `sluice serve` defaults to \
                             <data_dir>/archive/<sink>",
                            at,
                        ));
                    }
                };
                local(&dir)?
            }
        };
        let format = match o.take("format") {
            None => None,
            Some(f) => match f.value.trim().to_ascii_lowercase().as_str() {
                "parquet" => Some(true),
                "json" | "jsonl" | "ndjson" => Some(false),
                other => {
                    return Err(Error::user_at(
                        format!("option 'format' must be 'parquet' or 'json', got '{other}'"),
                        f.position,
                    ));
                }
            },
        }
        .unwrap_or(true);
        let compression = o.take("compression");
        let format = match (format, compression) {
            (true, None) => Format::Parquet(ParquetCompression::Zstd),
            (false, None) => Format::Json { gzip: false },
            (parquet, Some(c)) => match (parquet, c.value.trim().to_ascii_lowercase().as_str()) {
                (true, "zstd") => Format::Parquet(ParquetCompression::Zstd),
                (true, "snappy") => Format::Parquet(ParquetCompression::Snappy),
                (true, "none" | "uncompressed") => Format::Parquet(ParquetCompression::None),
                (false, "gzip" | "gz") => Format::Json { gzip: true },
                (false, "none" | "uncompressed") => Format::Json { gzip: false },
                (_, other) => {
                    let valid = if parquet {
                        "'zstd', 'snappy' or 'none'"
                    } else {
                        "'gzip' or 'none'"
                    };
                    return Err(Error::user_at(
                        format!(
                            "option 'compression' must be {valid} for this format, got '{other}'"
                        ),
                        c.position,
                    ));
                }
            },
        };
        let timestamps = match format {
            Format::Json { .. } => super::take_timestamp_format(o)?,
            Format::Parquet(_) => match o.take(TimestampFormat::OPTION) {
                None => TimestampFormat::default(),
                Some(t) => {
                    return Err(Error::user_at(
                        "option 'timestamp_format' applies to format = 'json': Parquet keeps \
                         timestamps typed",
                        t.position,
                    ));
                }
            },
        };
        let flush_mb = match o.take("flush_size_mb") {
            None => 64.0,
            // The buffer is memory: bounded, like Firehose's (128 MiB), if more
            // generously.
            Some(v) => match v.value.trim().parse::<f64>() {
                Ok(mb) if mb > 0.0 && mb <= 1024.0 => mb,
                _ => {
                    return Err(Error::user_at(
                        format!(
                            "option 'flush_size_mb' must be a number more than 0 and at most \
                             1024, got '{}'",
                            v.value
                        ),
                        v.position,
                    ));
                }
            },
        };
        let flush_interval = o
            .take_duration("flush_interval")?
            .unwrap_or(Duration::from_secs(60));
        if flush_interval.is_zero() {
            return Err(Error::user_at(
                "option 'flush_interval' must be positive",
                at,
            ));
        }
        let partition_by = o.take_string("partition_by").map(|s| s.trim().to_string());
        let partitions = match o.take("partition_format") {
            None => PartitionFormat::parse("dt=%Y-%m-%d/hour=%H").expect("valid default"),
            Some(p) => {
                PartitionFormat::parse(p.value.trim()).map_err(|m| Error::user_at(m, p.position))?
            }
        };
        Ok(ArchiveConfig {
            name: name.to_string(),
            location,
            describe,
            store,
            refused,
            format,
            timestamps,
            flush_bytes: (flush_mb * 1024.0 * 1024.0) as usize,
            flush_interval,
            partition_by,
            partitions,
        })
    }
}

/// A local directory: `(location, describe, store)`.
fn local(dir: &std::path::Path) -> Result<(Location, String, String)> {
    let abs = std::path::absolute(dir)
        .map_err(|e| Error::user(format!("archive path '{}': {e}", dir.display())))?;
    // `a/../b` is `b`: written out, so that two spellings of one directory are seen to
    // be one archive (links are not followed: a link is the operator's doing).
    let abs = lexically_normal(&abs);
    let prefix = ObjPath::from_absolute_path(&abs)
        .map_err(|e| Error::user(format!("archive path '{}': {e}", abs.display())))?;
    Ok((
        Location {
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            root_url: "file:///".to_string(),
            prefix,
        },
        abs.display().to_string(),
        "file".to_string(),
    ))
}

/// A path with `.` and `..` resolved by name alone.
fn lexically_normal(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// A store URL: `(location, describe, store)`.
fn remote(
    url: &str,
    o: &mut Options,
    ctx: &SinkContext,
    refused: &mut Deferred,
) -> Result<(Location, String, String)> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        Error::user(format!(
            "option 'url' must look like s3://bucket/prefix (or gs://, az://), got '{url}'"
        ))
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::user(format!(
            "option 'url' names no bucket: '{url}'"
        )));
    }
    let prefix = ObjPath::parse(prefix.trim_matches('/'))
        .map_err(|e| Error::user(format!("option 'url': bad prefix: {e}")))?;
    let root_url = format!("{scheme}://{bucket}");
    // One store whatever the scheme's spelling; an S3 bucket of the same name on
    // another endpoint is another store.
    let family = match scheme {
        "s3a" => "s3",
        "abfs" | "abfss" => "az",
        other => other,
    };
    let mut store_id = format!("{family}://{bucket}");
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" | "s3a" => {
            let aws = AwsConnect::from_options(o, ctx.file_root.as_ref(), &ctx.reach)?;
            *refused = aws.refused.clone();
            if aws.profile.is_some() {
                return Err(Error::user(
                    "the archive sink does not read AWS profiles: use AWS_* environment \
                     variables, a role, or access_key_id/secret_access_key",
                ));
            }
            let path_style = o.take_bool("path_style")?;
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_url(&root_url);
            if let Some(r) = &aws.region {
                b = b.with_region(r);
            }
            if let Some(e) = &aws.endpoint {
                store_id = format!("{store_id} at {e}");
                b = b
                    .with_endpoint(e)
                    .with_allow_http(e.starts_with("http://"))
                    // Emulators and most S3-compatible servers want path-style URLs.
                    .with_virtual_hosted_style_request(!path_style.unwrap_or(true));
            } else if let Some(p) = path_style {
                b = b.with_virtual_hosted_style_request(!p);
            }
            if let Some(pem) = &aws.ca_pem {
                // Checked by AwsConnect; the whole bundle is one PEM file.
                let ca = object_store::Certificate::from_pem_bundle(pem)
                    .map_err(|e| Error::user(format!("option 'ca': {e}")))?;
                let mut client = object_store::ClientOptions::new();
                for c in ca {
                    client = client.with_root_certificate(c);
                }
                b = b.with_client_options(client);
            }
            if let (Some(k), Some(s)) = (&aws.access_key_id, &aws.secret_access_key) {
                // The SQL's credentials whole: set key by key, a session token in the
                // server's environment (AWS_SESSION_TOKEN, read by from_env) would go
                // out with them, to whatever endpoint the SQL named.
                b = b.with_credentials(Arc::new(object_store::StaticCredentialProvider::new(
                    object_store::aws::AwsCredential {
                        key_id: k.clone(),
                        secret_key: s.clone(),
                        token: aws.session_token.clone(),
                    },
                )));
            }
            Arc::new(
                b.build()
                    .map_err(|e| Error::user(format!("S3 archive: {e}")))?,
            )
        }
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(&root_url)
                .build()
                .map_err(|e| Error::user(format!("GCS archive: {e}")))?,
        ),
        "az" | "abfs" | "abfss" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url)
                .build()
                .map_err(|e| Error::user(format!("Azure archive: {e}")))?,
        ),
        other => {
            return Err(Error::user(format!(
                "archive url scheme '{other}://' is not supported: use s3://, gs:// or az:// \
                 (or 'path' for a local directory)"
            )));
        }
    };
    Ok((
        Location {
            store,
            root_url,
            prefix,
        },
        url.to_string(),
        store_id,
    ))
}

pub struct ArchiveSink {
    config: Arc<ArchiveConfig>,
    health: Arc<Health>,
    writer: Option<(mpsc::Sender<Msg>, JoinHandle<Result<()>>)>,
}

enum Msg {
    Batch(RecordBatch),
    Flush(oneshot::Sender<Result<()>>),
}

impl ArchiveSink {
    pub fn from_options(name: &str, mut o: Options, ctx: &SinkContext) -> Result<Self> {
        let config = ArchiveConfig::from_options(name, &mut o, ctx)?;
        o.finish("sink connector 'archive'")?;
        // Refusals of an S3 endpoint, raised once every option was read.
        config.refused.raise()?;
        Ok(ArchiveSink {
            config: Arc::new(config),
            health: Arc::new(Health::idle()),
            writer: None,
        })
    }

    /// The writer task owns the buffers so the interval flush happens even when no
    /// rows arrive; it starts at the first write, so building a sink (to validate a
    /// CREATE SINK) starts nothing.
    fn sender(&mut self) -> &mpsc::Sender<Msg> {
        let (config, health) = (&self.config, &self.health);
        &self
            .writer
            .get_or_insert_with(|| {
                // Two batches in flight: enough to overlap, little enough that a stuck
                // store stops the query quickly.
                let (tx, rx) = mpsc::channel(2);
                let w = Writer::new(Arc::clone(config), Arc::clone(health));
                (tx, tokio::spawn(w.run(rx)))
            })
            .0
    }

    /// The writer ended: its error (it only ends early on one).
    async fn writer_error(&mut self) -> Error {
        match self.writer.take() {
            Some((_, task)) => match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => Error::internal("archive writer ended early"),
                Err(e) => Error::internal(format!("archive writer: {e}")),
            },
            None => Error::internal("archive writer missing"),
        }
    }
}

impl Sink for ArchiveSink {
    fn write<'a>(&'a mut self, batch: &'a RecordBatch) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if batch.num_rows() == 0 {
                return Ok(());
            }
            if self.sender().send(Msg::Batch(batch.clone())).await.is_err() {
                return Err(self.writer_error().await);
            }
            Ok(())
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            if self.writer.is_none() {
                return Ok(());
            }
            let (ack, done) = oneshot::channel();
            if self.sender().send(Msg::Flush(ack)).await.is_err() {
                return Err(self.writer_error().await);
            }
            match done.await {
                Ok(r) => r,
                Err(_) => Err(self.writer_error().await),
            }
        })
    }

    fn health(&self) -> Option<Arc<Health>> {
        Some(Arc::clone(&self.health))
    }

    fn claim(&self) -> Option<Claim> {
        Some(Claim::Prefix {
            store: self.config.store.clone(),
            prefix: self
                .config
                .location
                .prefix
                .parts()
                .map(|p| p.as_ref().to_string())
                .collect(),
            describe: self.config.describe.clone(),
        })
    }
}

/// Rows of one partition waiting for the next flush.
#[derive(Default)]
struct Part {
    /// Parquet: the batches; JSON: encoded lines in `lines`.
    batches: Vec<RecordBatch>,
    lines: Vec<u8>,
    /// Smallest partition time (ms) of its rows: the object name starts with it.
    first_ms: i64,
}

struct Writer {
    config: Arc<ArchiveConfig>,
    health: Arc<Health>,
    /// The archive's schema: fixed by the first batch.
    schema: Option<SchemaRef>,
    parts: BTreeMap<String, Part>,
    /// `{"reason", "record"}` lines by partition (of the time they were met).
    errors: BTreeMap<String, Part>,
    bytes: usize,
}

impl Writer {
    fn new(config: Arc<ArchiveConfig>, health: Arc<Health>) -> Self {
        Writer {
            config,
            health,
            schema: None,
            parts: BTreeMap::new(),
            errors: BTreeMap::new(),
            bytes: 0,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Result<()> {
        // The interval runs from the first row buffered, as Firehose's does.
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            let timer = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Batch(b)) => {
                        self.add(b)?;
                        if self.bytes >= self.config.flush_bytes {
                            self.flush().await?;
                            deadline = None;
                        } else if deadline.is_none() {
                            deadline = Some(tokio::time::Instant::now() + self.config.flush_interval);
                        }
                    }
                    Some(Msg::Flush(ack)) => {
                        let r = self.flush().await;
                        deadline = None;
                        let failed = r.is_err();
                        let _ = ack.send(r);
                        if failed {
                            return Ok(());
                        }
                    }
                    // The sink was dropped (its queries stopped): write what is left.
                    None => return self.flush().await,
                },
                () = timer => {
                    self.flush().await?;
                    deadline = None;
                }
            }
        }
    }

    /// Splits a batch by partition and buffers it.
    fn add(&mut self, batch: RecordBatch) -> Result<()> {
        let schema = self.schema.get_or_insert_with(|| batch.schema()).clone();
        if !same_fields(&schema, &batch.schema()) {
            let reason = format!(
                "the rows' schema ({}) differs from the archive's ({}), fixed by its first rows",
                describe_fields(&batch.schema()),
                describe_fields(&schema)
            );
            return self.add_errors(&batch, &reason);
        }
        let times = match partition_times(&batch, self.config.partition_by.as_deref()) {
            Ok(t) => t,
            // A partition_by that does not fit the rows: they are kept, with the reason.
            Err(e) => return self.add_errors(&batch, &e.to_string()),
        };
        let Some(times) = times else {
            // No event time in the rows: the time they reached the sink.
            let key = self
                .config
                .partitions
                .format(now_ms().div_euclid(self.config.partitions.unit_ms));
            return self.buffer(key, now_ms(), batch);
        };
        let unit = self.config.partitions.unit_ms;
        // Rows usually share a few buckets: index rows per bucket, format each once.
        let mut buckets: HashMap<i64, usize> = HashMap::new();
        let mut groups: Vec<(i64, Vec<u32>)> = Vec::new();
        let mut nulls: Vec<u32> = Vec::new();
        for (row, t) in times.iter().enumerate() {
            let Some(t) = t else {
                nulls.push(row as u32);
                continue;
            };
            let b = t.div_euclid(unit);
            let g = *buckets.entry(b).or_insert_with(|| {
                groups.push((b, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(row as u32);
        }
        if !nulls.is_empty() {
            let rows = take_record_batch(&batch, &UInt32Array::from(nulls))?;
            let column = self
                .config
                .partition_by
                .as_deref()
                .unwrap_or("(first timestamp)");
            self.add_errors(&rows, &format!("partition column {column} is null"))?;
        }
        let single = groups.len() == 1 && groups[0].1.len() == batch.num_rows();
        for (b, rows) in groups {
            let first = rows
                .iter()
                .filter_map(|&r| times.value_at(r as usize))
                .min()
                .unwrap_or(b * unit);
            let part = if single {
                batch.clone()
            } else {
                take_record_batch(&batch, &UInt32Array::from(rows))?
            };
            let key = self.config.partitions.format(b);
            self.buffer(key, first, part)?;
        }
        Ok(())
    }

    fn buffer(&mut self, key: String, first_ms: i64, batch: RecordBatch) -> Result<()> {
        let json = matches!(self.config.format, Format::Json { .. });
        let part = self.parts.entry(key).or_insert_with(|| Part {
            first_ms,
            ..Default::default()
        });
        part.first_ms = part.first_ms.min(first_ms);
        let added = if json {
            let before = part.lines.len();
            json_lines(&batch, self.config.timestamps, &mut part.lines)?;
            part.lines.len() - before
        } else {
            let n = batch.get_array_memory_size();
            part.batches.push(batch);
            n
        };
        self.bytes += added;
        Ok(())
    }

    fn add_errors(&mut self, batch: &RecordBatch, reason: &str) -> Result<()> {
        let mut lines = Vec::new();
        json_lines(batch, self.config.timestamps, &mut lines)?;
        let now = now_ms();
        let key = self
            .config
            .partitions
            .format(now.div_euclid(self.config.partitions.unit_ms));
        let part = self.errors.entry(key).or_insert_with(|| Part {
            first_ms: now,
            ..Default::default()
        });
        let reason = serde_json::to_string(reason).expect("a string serializes");
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let before = part.lines.len();
            part.lines.extend_from_slice(b"{\"reason\":");
            part.lines.extend_from_slice(reason.as_bytes());
            part.lines.extend_from_slice(b",\"record\":");
            part.lines.extend_from_slice(line);
            part.lines.extend_from_slice(b"}\n");
            self.bytes += part.lines.len() - before;
        }
        // Counted as skipped in the sink's health: an operator sees them without
        // listing the store.
        self.health.skipped(
            batch.num_rows() as u64,
            Some(format!("to _errors/: {reason}")),
        );
        tracing::warn!(sink = %self.config.name, "rows go to the archive's _errors/: {reason}");
        Ok(())
    }

    /// Writes every buffered partition as one object each; retries failed puts until
    /// they succeed, so nothing buffered is dropped.
    async fn flush(&mut self) -> Result<()> {
        let parts = std::mem::take(&mut self.parts);
        let errors = std::mem::take(&mut self.errors);
        self.bytes = 0;
        let base = self.config.location.prefix.clone();
        for (key, part) in parts {
            let format = self.config.format;
            let schema = self.schema.clone();
            // Encoding a large buffer takes a while: keep it off the async workers.
            let encoded = tokio::task::spawn_blocking(move || encode(format, schema, part))
                .await
                .map_err(|e| Error::internal(format!("archive encoder: {e}")))?;
            match encoded {
                Ok((bytes, first_ms)) => {
                    let path = object_path(
                        &base,
                        &key,
                        &self.config.name,
                        first_ms,
                        &bytes,
                        format.extension(),
                    );
                    self.put(&path, bytes).await?;
                }
                Err((e, part)) => {
                    // Rows the format cannot hold go to the error prefix as JSON.
                    let reason = format!("cannot encode as {:?}: {e}", self.config.format);
                    for b in &part.batches {
                        self.add_errors(b, &reason)?;
                    }
                }
            }
        }
        let errors = errors.into_iter().chain(std::mem::take(&mut self.errors));
        for (key, part) in errors {
            let err_base = base.clone().join("_errors");
            let path = object_path(
                &err_base,
                &key,
                &self.config.name,
                part.first_ms,
                &part.lines,
                ".ndjson",
            );
            self.put(&path, part.lines).await?;
        }
        // Rows moved to the error prefix during this flush were written with it.
        self.bytes = 0;
        Ok(())
    }

    async fn put(&self, path: &ObjPath, bytes: Vec<u8>) -> Result<()> {
        let payload = PutPayload::from(bytes);
        let mut backoff = Backoff::new(Duration::from_secs(30));
        loop {
            match self.config.location.store.put(path, payload.clone()).await {
                Ok(_) => {
                    self.health.connected();
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(sink = %self.config.name, "archive put {path} failed, retrying: {e}");
                    self.health.retrying(format!("put {path}: {e}"));
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

/// `<base>/<partition>/<sink>-<first ms>-<hash>.<ext>`: the same rows give the same
/// name, so a replay overwrites.
fn object_path(
    base: &ObjPath,
    partition: &str,
    sink: &str,
    first_ms: i64,
    bytes: &[u8],
    ext: &str,
) -> ObjPath {
    let hash = blake3::hash(bytes).to_hex();
    let mut path = base.clone();
    for seg in partition.split('/') {
        path = path.join(seg);
    }
    path.join(format!("{sink}-{first_ms:013}-{}{ext}", &hash[..16]))
}

type Encoded = std::result::Result<(Vec<u8>, i64), (Error, Part)>;

fn encode(format: Format, schema: Option<SchemaRef>, part: Part) -> Encoded {
    let first = part.first_ms;
    match format {
        Format::Json { gzip: false } => Ok((part.lines, first)),
        Format::Json { gzip: true } => {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(part.lines.len() / 4),
                flate2::Compression::default(),
            );
            match gz.write_all(&part.lines).and_then(|()| gz.finish()) {
                Ok(bytes) => Ok((bytes, first)),
                Err(e) => Err((Error::internal(format!("gzip: {e}")), part)),
            }
        }
        Format::Parquet(c) => {
            let Some(schema) = schema else {
                return Err((Error::internal("no schema"), part));
            };
            let compression = match c {
                ParquetCompression::Zstd => {
                    Compression::ZSTD(ZstdLevel::try_new(3).expect("valid zstd level"))
                }
                ParquetCompression::Snappy => Compression::SNAPPY,
                ParquetCompression::None => Compression::UNCOMPRESSED,
            };
            let props = WriterProperties::builder()
                .set_compression(compression)
                .build();
            let write = || -> Result<Vec<u8>> {
                let mut w = ArrowWriter::try_new(Vec::new(), schema, Some(props))
                    .map_err(|e| Error::user(e.to_string()))?;
                for b in &part.batches {
                    w.write(b).map_err(|e| Error::user(e.to_string()))?;
                }
                w.into_inner().map_err(|e| Error::user(e.to_string()))
            };
            match write() {
                Ok(bytes) => Ok((bytes, first)),
                Err(e) => Err((e, part)),
            }
        }
    }
}

/// The partition time of each row (ms), from `column` or the first timestamp
/// column; `None` when the rows have no timestamp column and none was named.
fn partition_times(batch: &RecordBatch, column: Option<&str>) -> Result<Option<Times>> {
    let schema = batch.schema();
    let index = match column {
        Some(c) => Some(schema.index_of(c).map_err(|_| {
            Error::user(format!(
                "partition_by column '{c}' is not among the rows' columns ({})",
                describe_fields(&schema)
            ))
        })?),
        None => schema
            .fields()
            .iter()
            .position(|f| matches!(f.data_type(), DataType::Timestamp(..))),
    };
    let Some(index) = index else {
        return Ok(None);
    };
    let col = batch.column(index);
    let ms = cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None)).map_err(|e| {
        Error::user(format!(
            "partition_by column '{}' must be a timestamp: {e}",
            schema.field(index).name()
        ))
    })?;
    Ok(Some(Times(ms)))
}

struct Times(Arc<dyn Array>);

impl Times {
    fn value_at(&self, row: usize) -> Option<i64> {
        let a = self.0.as_primitive::<TimestampMillisecondType>();
        a.is_valid(row).then(|| a.value(row))
    }

    fn iter(&self) -> impl Iterator<Item = Option<i64>> + '_ {
        self.0.as_primitive::<TimestampMillisecondType>().iter()
    }
}

fn same_fields(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

fn describe_fields(s: &SchemaRef) -> String {
    s.fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_formats_parse_and_find_their_unit() {
        let p = PartitionFormat::parse("dt=%Y-%m-%d/hour=%H").unwrap();
        assert_eq!(p.columns, ["dt", "hour"]);
        assert_eq!(p.unit_ms, 3_600_000);
        // 2026-11-21T13:45:00Z
        let t = 1_795_268_700_000_i64;
        assert_eq!(p.format(t.div_euclid(p.unit_ms)), "dt=2026-11-21/hour=13");
        assert_eq!(
            PartitionFormat::parse("day=%F").unwrap().unit_ms,
            86_400_000
        );
        assert_eq!(PartitionFormat::parse("m=%H%M").unwrap().unit_ms, 60_000);
        for bad in ["%Y", "dt=", "DT=%Y", "dt=%Y/dt=%m", "dt=%Q"] {
            assert!(PartitionFormat::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn object_names_depend_on_content_only() {
        let base = ObjPath::from("a/b");
        let p1 = object_path(&base, "dt=x/hour=01", "raw", 5, b"rows", ".parquet");
        let p2 = object_path(&base, "dt=x/hour=01", "raw", 5, b"rows", ".parquet");
        let p3 = object_path(&base, "dt=x/hour=01", "raw", 5, b"rowz", ".parquet");
        assert_eq!(p1, p2);
        assert_ne!(p1, p3);
        assert!(
            p1.as_ref()
                .starts_with("a/b/dt=x/hour=01/raw-0000000000005-")
        );
    }
}
