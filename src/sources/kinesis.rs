//! `kinesis` source: records of an Amazon Kinesis data stream (first stage of the data
//! flow; the "IoT rule → Kinesis → processing" hop of the seeds, read directly).
//!
//! ```sql
//! CREATE STREAM readings (
//!   deviceId TEXT, temperature DOUBLE, ts TIMESTAMP,
//!   shard_id TEXT METADATA,                 -- also partition_key, sequence_number,
//!   approximate_arrival_time TIMESTAMP METADATA,  -- KDA's APPROXIMATE_ARRIVAL_TIME
//!   WATERMARK FOR ts AS ts - INTERVAL '2' SECOND
//! ) WITH (
//!   connector = 'kinesis', stream = 'iot-readings', region = 'eu-west-1',
//!   start_position = 'TRIM_HORIZON'
//! );
//! ```
//!
//! **Shards.** The shard list is read at start and every `shard_discovery_interval`;
//! every open shard is polled by its own task with GetRecords. A shard that came from
//! a reshard (SplitShard, MergeShards, UpdateShardCount) starts only after its parents
//! are read to their end and those reads acknowledged, and then from its first record,
//! so the records of one partition key stay in order across a reshard.
//!
//! **Limits.** Kinesis allows 5 GetRecords calls per second and 2 MB/s per shard,
//! shared by every consumer of the stream. A shard task waits at least 200 ms between
//! calls, waits after a large read until the 2 MB/s budget allows the next one, polls
//! an idle shard every `poll_interval` only, and backs off (100 ms doubling to 10 s)
//! on ProvisionedThroughputExceeded and on any other failure, which shows in the
//! stream's health; a refused call still counts, so backoff only adds to the spacing.
//!
//! **Enhanced fan-out.** With `consumer_type = 'efo'` the source registers a stream
//! consumer named `consumer_name` (or takes the one of that name that exists) and waits
//! until it is ACTIVE; each shard is then read through SubscribeToShard, whose events
//! Kinesis pushes over HTTP/2 (2 MB/s per shard for this consumer alone, not shared).
//! A subscription lasts 5 minutes: when it ends (or fails) the shard subscribes again
//! after its last delivered record, at most once a second (the service's limit per
//! shard and consumer), with the same backoff on failures. Events are read only as
//! fast as the stream takes the chunks, so a slow query slows the subscription
//! (HTTP/2 flow control). A shard ends with its last event (one that names child
//! shards or carries no continuation sequence number), or, for servers that do not
//! send that event, when it is listed as closed and an event finds nothing left;
//! children start as in polling mode, after their parents. Checkpoints are the same.
//! HTTP/2 needs an `https://` endpoint (AWS's always is); `ca` trusts a private CA.
//!
//! **Checkpoints.** With a data directory (`sluice serve`), the last sequence number
//! of each shard whose chunk the stream's queries have processed (the chunk's
//! [`Input::ack`]) is written to `<data_dir>/kinesis/<consumer_name>.json`
//! (written to a temporary file, synced, renamed over the old one: a crash leaves the
//! old file or the new one, never half of one). A restart resumes every shard after
//! its checkpoint: nothing processed is lost; records read but not yet processed at
//! the stop are read again (at-least-once, like the MQTT source). Without a data
//! directory (`sluice run`) nothing is kept and each run starts at `start_position`.
//!
//! **Watermark.** Each shard is one partition of the stream's watermark, so a lagging
//! shard holds the watermark back instead of having its records declared late. At
//! start the source announces how many shards it reads (an empty chunk on the highest
//! partition) so the watermark waits for all of them. A child shard takes over its
//! parent's partition number; the second child of a split takes a free number or a
//! new one. After a merge, the adjacent parent's number is retired: with the stream's
//! `idle_timeout` it stops holding the watermark after that timeout, without one it
//! holds the watermark at the retired shard's last event time until a later split
//! reuses the number. Set `idle_timeout` on streams whose shards get merged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{
    ConsumerStatus, Shard, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Chunk, IngestReport, Input, Source, SourceContext};
use crate::aws::{AwsConnect, describe_error, error_code};
use crate::clock::now_ms;
use crate::decode::{ChunkMeta, MetaValues, append_records};
use crate::error::{Error, Result};
use crate::health::{Backoff, Health};
use crate::sql::Options;

/// What `METADATA` columns of a Kinesis stream may read.
pub const METADATA: [(&str, DataType); 4] = [
    ("partition_key", DataType::Utf8),
    ("sequence_number", DataType::Utf8),
    ("shard_id", DataType::Utf8),
    (
        "approximate_arrival_time",
        DataType::Timestamp(TimeUnit::Millisecond, None),
    ),
];

/// Kinesis allows 5 GetRecords calls per second per shard.
const MIN_CALL_SPACING: Duration = Duration::from_millis(200);
/// ... and 2 MB/s per shard.
const READ_BYTES_PER_SEC: f64 = 2.0 * 1024.0 * 1024.0;
/// Longest wait between two attempts after failures or throttling.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The stream, by name or by ARN (`arn:aws:kinesis:…`).
#[derive(Debug, Clone)]
enum StreamRef {
    Name(String),
    Arn(String),
}

impl StreamRef {
    fn label(&self) -> &str {
        match self {
            StreamRef::Name(n) => n,
            StreamRef::Arn(a) => a,
        }
    }
}

/// Where a shard without a checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    Latest,
    TrimHorizon,
    /// Epoch milliseconds.
    AtTimestamp(i64),
}

pub struct KinesisSource {
    connect: AwsConnect,
    /// `stream`: the stream's name or ARN (required).
    stream: StreamRef,
    /// `start_position`: `LATEST` (default), `TRIM_HORIZON` or `AT_TIMESTAMP` with
    /// `start_timestamp` (RFC 3339 or epoch milliseconds). Applies to the shards open
    /// at the first start; shards created later start at their first record.
    start: StartPosition,
    /// `<data_dir>/kinesis/<consumer_name>.json`; `consumer_name` defaults to the
    /// Sluice stream's name, so two Sluice streams reading one Kinesis stream keep
    /// separate checkpoints (an explicit shared name would make them fight over one).
    /// With enhanced fan-out it also names the registered stream consumer.
    checkpoint: Option<PathBuf>,
    /// `poll_interval`: how long an idle shard (nothing new) waits before the next
    /// call (default 1 s, AWS's advice for polling consumers).
    poll_interval: Duration,
    /// `max_records`: records per GetRecords call, 1 to 10000 (default 10000).
    max_records: i32,
    /// `shard_discovery_interval`: how often the shard list is read again (default
    /// 10 s); a shard that closes is noticed at once by its reader anyway.
    discovery_interval: Duration,
    /// `consumer_type = 'efo'`: read through enhanced fan-out as the registered
    /// consumer `consumer_name` (a name; `None` for polling, the default).
    efo: Option<String>,
    health: Arc<Health>,
}

impl KinesisSource {
    /// `name` is the Sluice stream's: the default consumer (checkpoint) name.
    pub fn from_options(name: &str, mut o: Options, ctx: &SourceContext) -> Result<Self> {
        let at = o.position;
        let connect = AwsConnect::from_options(&mut o, ctx.file_root.as_ref(), &ctx.reach)?;
        let stream_opt = o.take("stream").ok_or_else(|| {
            Error::user_at(
                "the kinesis source needs option 'stream': the stream's name or ARN",
                at,
            )
        })?;
        let s = stream_opt.value.trim();
        if s.is_empty() {
            return Err(Error::user_at(
                "option 'stream' is empty",
                stream_opt.position,
            ));
        }
        let stream = if s.starts_with("arn:") {
            StreamRef::Arn(s.to_string())
        } else {
            StreamRef::Name(s.to_string())
        };
        let ts = o.take("start_timestamp");
        let start = match o.take("start_position") {
            None => StartPosition::Latest,
            Some(p) => match p.value.trim().to_ascii_uppercase().as_str() {
                "LATEST" => StartPosition::Latest,
                "TRIM_HORIZON" => StartPosition::TrimHorizon,
                "AT_TIMESTAMP" => {
                    let ts = ts.as_ref().ok_or_else(|| {
                        Error::user_at(
                            "start_position = 'AT_TIMESTAMP' needs option 'start_timestamp' \
                             (RFC 3339, like '2026-01-01T00:00:00Z', or epoch milliseconds)",
                            p.position,
                        )
                    })?;
                    let ms = parse_timestamp(ts.value.trim()).ok_or_else(|| {
                        Error::user_at(
                            format!(
                                "option 'start_timestamp' is not a time: '{}' (write RFC 3339, \
                                 like '2026-01-01T00:00:00Z', or epoch milliseconds)",
                                ts.value
                            ),
                            ts.position,
                        )
                    })?;
                    StartPosition::AtTimestamp(ms)
                }
                other => {
                    return Err(Error::user_at(
                        format!(
                            "option 'start_position' must be LATEST, TRIM_HORIZON or \
                             AT_TIMESTAMP, got '{other}'"
                        ),
                        p.position,
                    ));
                }
            },
        };
        if let (Some(ts), false) = (&ts, matches!(start, StartPosition::AtTimestamp(_))) {
            return Err(Error::user_at(
                "option 'start_timestamp' needs start_position = 'AT_TIMESTAMP'",
                ts.position,
            ));
        }
        let consumer = o
            .take_string("consumer_name")
            // The Sluice stream's name: two streams reading one Kinesis stream keep
            // their own checkpoints without being told.
            .unwrap_or_else(|| name.to_string());
        let checkpoint = ctx.data_dir.as_ref().map(|d| {
            d.join("kinesis")
                .join(format!("{}.json", safe_name(&consumer)))
        });
        let poll_interval = o
            .take_duration("poll_interval")?
            .unwrap_or(Duration::from_secs(1));
        let max_records = match o.take("max_records") {
            None => 10_000,
            Some(v) => match v.value.trim().parse::<i32>() {
                Ok(n) if (1..=10_000).contains(&n) => n,
                _ => {
                    return Err(Error::user_at(
                        format!("option 'max_records' must be 1 to 10000, got '{}'", v.value),
                        v.position,
                    ));
                }
            },
        };
        let discovery_interval = o
            .take_duration("shard_discovery_interval")?
            .unwrap_or(Duration::from_secs(10))
            .max(Duration::from_millis(100));
        let efo = match o.take("consumer_type") {
            None => None,
            Some(t) => match t.value.trim().to_ascii_lowercase().as_str() {
                "polling" => None,
                // AWS's rule for consumer names: refused at CREATE, or registering
                // would fail with a ValidationException retried forever.
                "efo"
                    if consumer.len() > 128
                        || consumer.is_empty()
                        || !consumer
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) =>
                {
                    return Err(Error::user_at(
                        format!(
                            "enhanced fan-out registers a consumer named '{consumer}', but \
                             Kinesis allows 1 to 128 letters, digits, '_', '.' and '-': set \
                             option 'consumer_name'"
                        ),
                        t.position,
                    ));
                }
                "efo" => Some(consumer.clone()),
                other => {
                    return Err(Error::user_at(
                        format!(
                            "option 'consumer_type' must be 'polling' (GetRecords) or 'efo' \
                             (enhanced fan-out, SubscribeToShard), got '{other}'"
                        ),
                        t.position,
                    ));
                }
            },
        };
        o.finish("source connector 'kinesis'")?;
        connect.refused.raise()?;
        Ok(KinesisSource {
            connect,
            stream,
            start,
            checkpoint,
            poll_interval,
            max_records,
            discovery_interval,
            efo,
            health: Arc::new(Health::new()),
        })
    }
}

/// The name part of a stream ARN (`arn:aws:kinesis:region:account:stream/NAME`).
fn stream_name_of(s: &StreamRef) -> &str {
    match s {
        StreamRef::Name(n) => n,
        StreamRef::Arn(a) => a.rsplit('/').next().unwrap_or(a),
    }
}

/// A file name from a user's name: letters, digits, `-`, `_`, `.` kept, the rest `_`.
fn safe_name(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if n.is_empty() || n.starts_with('.') {
        format!("_{n}")
    } else {
        n
    }
}

/// RFC 3339 or epoch milliseconds.
fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    DateTime::from_str(s, aws_sdk_kinesis::primitives::DateTimeFormat::DateTime)
        .ok()
        .and_then(|d| d.to_millis().ok())
}

// ---------------------------------------------------------------------------------
// Checkpoints

/// What the checkpoint file keeps per shard.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ShardCheckpoint {
    /// The last sequence number whose record was processed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sequence: Option<String>,
    /// Where the shard started, for a restart before its first processed record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start: Option<StartPosition>,
    /// Read to its end (a closed shard) and every chunk processed.
    #[serde(default)]
    finished: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CheckpointFile {
    stream: String,
    shards: BTreeMap<String, ShardCheckpoint>,
}

/// The checkpoints of one source, shared by its shard tasks.
struct Checkpoints {
    path: Option<PathBuf>,
    file: CheckpointFile,
    /// Whether a checkpoint existed when the source started.
    resumed: bool,
}

impl Checkpoints {
    fn load(path: Option<PathBuf>, stream: &str) -> Result<Self> {
        let mut cp = Checkpoints {
            path,
            file: CheckpointFile {
                stream: stream.to_string(),
                shards: BTreeMap::new(),
            },
            resumed: false,
        };
        let Some(p) = &cp.path else {
            return Ok(cp);
        };
        match std::fs::read(p) {
            Ok(bytes) => {
                cp.file = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::external(format!(
                        "the Kinesis checkpoint '{}' is unreadable ({e}); an operator must \
                         fix or delete it (deleting restarts at start_position)",
                        p.display()
                    ))
                })?;
                cp.resumed = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::external(format!(
                    "cannot read the Kinesis checkpoint '{}': {e}",
                    p.display()
                )));
            }
        }
        Ok(cp)
    }

    fn get(&self, shard: &str) -> Option<&ShardCheckpoint> {
        self.file.shards.get(shard)
    }

    fn update(&mut self, shard: &str, f: impl FnOnce(&mut ShardCheckpoint)) -> Result<()> {
        f(self.file.shards.entry(shard.to_string()).or_default());
        self.save()
    }

    /// Write to a temporary file, sync, rename: readers and a restart after a crash
    /// see the old checkpoint or the new one, never a torn one.
    fn save(&self) -> Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(&self.file)
            .map_err(|e| Error::internal(format!("checkpoint encoding: {e}")))?;
        write_atomically(path, &bytes).map_err(|e| {
            Error::external(format!(
                "cannot write the Kinesis checkpoint '{}': {e}",
                path.display()
            ))
        })
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    // The rename itself is durable once the directory is synced.
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Running

/// What the shard tasks share.
struct Shared {
    client: Client,
    stream: StreamRef,
    max_records: i32,
    poll_interval: Duration,
    health: Arc<Health>,
    checkpoints: Mutex<Checkpoints>,
    /// The enhanced fan-out consumer's ARN; `None` when polling.
    consumer_arn: Option<String>,
    /// Shards the last listing showed closed (for EFO servers that never send a
    /// shard's last event).
    closed: Mutex<HashSet<String>>,
}

impl Shared {
    fn checkpoint(&self, shard: &str, f: impl FnOnce(&mut ShardCheckpoint)) -> Result<()> {
        let mut cp = self
            .checkpoints
            .lock()
            .map_err(|_| Error::internal("checkpoint lock poisoned"))?;
        cp.update(shard, f)
    }
}

/// A chunk of one shard waiting for its report before its last sequence number
/// becomes the shard's checkpoint; `None` marks the end of a closed shard.
type Pending = Option<(oneshot::Receiver<IngestReport>, String)>;

impl Source for KinesisSource {
    fn health(&self) -> Option<Arc<Health>> {
        Some(Arc::clone(&self.health))
    }

    fn run(self: Box<Self>, out: mpsc::Sender<Input>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let checkpoints =
                Checkpoints::load(self.checkpoint.clone(), stream_name_of(&self.stream))?;
            let config = self.connect.sdk_config().await;
            let client = Client::new(&config);
            let consumer_arn = match &self.efo {
                None => None,
                Some(name) => {
                    match register_consumer(&client, &self.stream, name, &self.health, &out).await {
                        Some(arn) => Some(arn),
                        // The stream went away while waiting.
                        None => return Ok(()),
                    }
                }
            };
            let shared = Arc::new(Shared {
                client,
                stream: self.stream.clone(),
                max_records: self.max_records,
                poll_interval: self.poll_interval,
                health: Arc::clone(&self.health),
                checkpoints: Mutex::new(checkpoints),
                consumer_arn,
                closed: Mutex::new(HashSet::new()),
            });
            let result = self.coordinate(&shared, &out).await;
            // Let acknowledgements already answered reach the checkpoint.
            tokio::time::sleep(Duration::from_millis(50)).await;
            result
        })
    }
}

impl KinesisSource {
    /// Discovers shards, starts a reader for each one whose parents are done, and
    /// hands partition numbers out, until the stream goes away.
    async fn coordinate(&self, shared: &Arc<Shared>, out: &mpsc::Sender<Input>) -> Result<()> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        // Partition numbers: of running shards, of finished ones (for their children),
        // and free ones.
        let mut partition_of: HashMap<String, usize> = HashMap::new();
        let mut free: Vec<usize> = Vec::new();
        let mut next_partition = 0usize;
        let mut announced = 0usize;
        let mut first_listing = true;
        let mut backoff = Backoff::new(MAX_BACKOFF);
        let outcome = loop {
            let shards = tokio::select! {
                r = list_shards(shared) => r,
                _ = out.closed() => break Ok(()),
            };
            let shards = match shards {
                Ok(s) => {
                    backoff.reset();
                    s
                }
                Err(e) => {
                    shared.health.retrying(&e);
                    let delay = backoff.next_delay();
                    tracing::warn!(stream = %self.stream.label(), "kinesis: {e}; retrying in {delay:?}");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => continue,
                        _ = out.closed() => break Ok(()),
                    }
                }
            };
            let known: HashMap<&str, &Shard> = shards.iter().map(|s| (s.shard_id(), s)).collect();
            if let Ok(mut closed) = shared.closed.lock() {
                closed.extend(
                    shards
                        .iter()
                        .filter(|s| {
                            s.sequence_number_range()
                                .and_then(|r| r.ending_sequence_number())
                                .is_some()
                        })
                        .map(|s| s.shard_id().to_string()),
                );
            }
            let resumed = shared
                .checkpoints
                .lock()
                .map(|c| c.resumed)
                .unwrap_or(false);
            for shard in &shards {
                let id = shard.shard_id();
                if running.contains_key(id) {
                    continue;
                }
                let cp = shared
                    .checkpoints
                    .lock()
                    .map_err(|_| Error::internal("checkpoint lock poisoned"))?
                    .get(id)
                    .cloned();
                if cp.as_ref().is_some_and(|c| c.finished) {
                    continue;
                }
                // Parents first: a parent that is still listed must be finished; one
                // no longer listed has aged out of the stream's retention.
                let parents_done = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .all(|p| {
                        !known.contains_key(p)
                            || shared
                                .checkpoints
                                .lock()
                                .map(|c| c.get(p).is_some_and(|c| c.finished))
                                .unwrap_or(false)
                    });
                if !parents_done {
                    continue;
                }
                let closed = shard
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_some();
                let start = match cp {
                    Some(ShardCheckpoint {
                        sequence: Some(seq),
                        ..
                    }) => ShardStart::After(seq),
                    Some(ShardCheckpoint { start: Some(s), .. }) => ShardStart::At(s),
                    // A shard born after the first start: every one of its records is
                    // new to us.
                    _ if resumed || !first_listing => ShardStart::At(StartPosition::TrimHorizon),
                    // LATEST on a closed shard at the first start: nothing will come.
                    _ if closed && self.start == StartPosition::Latest => {
                        shared.checkpoint(id, |c| c.finished = true)?;
                        continue;
                    }
                    _ => ShardStart::At(self.start),
                };
                // Remember where a fresh shard started, so a restart before its first
                // processed record does not skip what arrived meanwhile (LATEST is
                // kept as the time it was taken).
                if let ShardStart::At(s) = &start {
                    let kept = match s {
                        StartPosition::Latest => StartPosition::AtTimestamp(now_ms()),
                        other => *other,
                    };
                    shared.checkpoint(id, |c| c.start = Some(kept))?;
                }
                let inherited = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                    .into_iter()
                    .flatten()
                    .find_map(|p| {
                        let n = *partition_of.get(p)?;
                        free.iter().position(|f| *f == n).map(|i| free.remove(i))
                    });
                let partition = inherited.or_else(|| free.pop()).unwrap_or_else(|| {
                    next_partition += 1;
                    next_partition - 1
                });
                partition_of.insert(id.to_string(), partition);
                tracing::info!(stream = %self.stream.label(), shard = id, partition, "kinesis: reading shard ({start:?})");
                running.insert(
                    id.to_string(),
                    spawn_shard(
                        Arc::clone(shared),
                        id.to_string(),
                        partition,
                        start,
                        out.clone(),
                        done_tx.clone(),
                    ),
                );
            }
            first_listing = false;
            shared.health.connected();
            // Tell the watermark how many partitions there are, so it waits for all.
            if next_partition > announced {
                announced = next_partition;
                let chunk = Chunk::new(Vec::new(), announced - 1, now_ms());
                if out.send(Input::from(chunk)).await.is_err() {
                    break Ok(());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.discovery_interval) => {}
                Some(done) = done_rx.recv() => {
                    // A shard is finished: its children may start now.
                    running.remove(&done);
                    if let Some(p) = partition_of.get(&done) {
                        free.push(*p);
                    }
                }
                _ = out.closed() => break Ok(()),
            }
        };
        for (_, task) in running {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
        outcome
    }
}

/// Where one shard's reader begins.
#[derive(Debug, Clone)]
enum ShardStart {
    At(StartPosition),
    After(String),
}

/// All shards of the stream, following pages.
async fn list_shards(shared: &Shared) -> Result<Vec<Shard>> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut req = shared.client.list_shards();
        req = match (&token, &shared.stream) {
            // With a token, the stream must not be named again.
            (Some(t), _) => req.next_token(t),
            (None, StreamRef::Name(n)) => req.stream_name(n),
            (None, StreamRef::Arn(a)) => req.stream_arn(a),
        };
        let resp = req.send().await.map_err(|e| {
            Error::external(format!(
                "Kinesis ListShards on '{}': {}",
                shared.stream.label(),
                describe_error(&e)
            ))
        })?;
        shards.extend(resp.shards().iter().cloned());
        match resp.next_token() {
            Some(t) => token = Some(t.to_string()),
            None => return Ok(shards),
        }
    }
}

/// Starts a shard's reader and its acknowledger.
fn spawn_shard(
    shared: Arc<Shared>,
    shard: String,
    partition: usize,
    start: ShardStart,
    out: mpsc::Sender<Input>,
    done: mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    // Unbounded: it holds one entry per chunk in flight, and the chunks themselves
    // are bounded by the stream's input channel.
    let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<Pending>();
    let acker_shared = Arc::clone(&shared);
    let acker_shard = shard.clone();
    // Checkpoints advance in order, once each chunk's report comes back; a chunk the
    // stream never answered (shutdown) or could not process stops them, so a restart
    // reads it again.
    let acker = tokio::spawn(async move {
        while let Some(p) = ack_rx.recv().await {
            match p {
                Some((report, seq)) => match report.await {
                    Ok(r) if r.failed.is_none() => {
                        if let Err(e) = acker_shared.checkpoint(&acker_shard, |c| {
                            c.sequence = Some(seq);
                        }) {
                            acker_shared.health.retrying(&e);
                            tracing::error!("kinesis: {e}");
                            return;
                        }
                    }
                    _ => return,
                },
                None => {
                    if acker_shared
                        .checkpoint(&acker_shard, |c| c.finished = true)
                        .is_ok()
                    {
                        let _ = done.send(acker_shard);
                    }
                    return;
                }
            }
        }
    });
    tokio::spawn(async move {
        if shared.consumer_arn.is_some() {
            subscribe_shard(&shared, &shard, partition, start, &out, &ack_tx).await;
        } else {
            read_shard(&shared, &shard, partition, start, &out, &ack_tx).await;
        }
        drop(ack_tx);
        let _ = acker.await;
    })
}

/// Polls one shard until it ends (closed and drained) or the stream goes away.
async fn read_shard(
    shared: &Shared,
    shard: &str,
    partition: usize,
    start: ShardStart,
    out: &mpsc::Sender<Input>,
    acks: &mpsc::UnboundedSender<Pending>,
) {
    let shard_arc: Arc<str> = Arc::from(shard);
    let mut backoff = Backoff::new(MAX_BACKOFF);
    // The position after the last record handed to the stream: where a new iterator
    // starts when the old one expires (iterators live 5 minutes).
    let mut position = start;
    let mut iterator: Option<String> = None;
    let mut next_call = Instant::now();
    loop {
        let wait = next_call.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = out.closed() => return,
            }
        }
        let it = match &iterator {
            Some(it) => it.clone(),
            None => match get_iterator(shared, shard, &position).await {
                Ok(Some(it)) => {
                    iterator = Some(it.clone());
                    it
                }
                // The shard is closed and nothing is left after our position.
                Ok(None) => {
                    let _ = acks.send(None);
                    return;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    shared.health.retrying(&e);
                    tracing::warn!(shard, "kinesis: {e}; retrying in {delay:?}");
                    next_call = Instant::now() + delay;
                    continue;
                }
            },
        };
        let called = Instant::now();
        let resp = shared
            .client
            .get_records()
            .shard_iterator(it)
            .limit(shared.max_records)
            .send()
            .await;
        next_call = called + MIN_CALL_SPACING;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let code = error_code(&e).unwrap_or_default().to_string();
                let why = describe_error(&e);
                if code == "ExpiredIteratorException" {
                    // Ask for a new iterator at our position, right away.
                    iterator = None;
                    continue;
                }
                let delay = backoff.next_delay();
                let what = if code == "ProvisionedThroughputExceededException" {
                    "throttled by Kinesis (ProvisionedThroughputExceeded: other consumers \
                     share the shard's 5 reads/s and 2 MB/s)"
                        .to_string()
                } else {
                    format!("Kinesis GetRecords on shard {shard}: {why}")
                };
                shared.health.retrying(&what);
                tracing::warn!(shard, "kinesis: {what}; retrying in {delay:?}");
                // A refused call still counts against the shard's 5 calls per second:
                // the backoff adds to the spacing, it never shortens it.
                next_call = next_call.max(Instant::now() + delay);
                continue;
            }
        };
        backoff.reset();
        shared.health.connected();
        let records = resp.records();
        if let Some(last) = records.last() {
            let (chunk, bytes) = chunk_of(records, partition, &shard_arc);
            let last_seq = last.sequence_number().to_string();
            if !deliver(chunk, &last_seq, out, acks).await {
                return;
            }
            position = ShardStart::After(last_seq);
            // Stay within 2 MB/s: a read of b bytes uses b / 2 MB of a second.
            let budget = Duration::from_secs_f64(bytes as f64 / READ_BYTES_PER_SEC);
            next_call = next_call.max(called + budget);
        }
        match resp.next_shard_iterator() {
            Some(next) => iterator = Some(next.to_string()),
            None => {
                // Closed and read to its end: the acknowledger marks it finished
                // after the last chunk's report.
                let _ = acks.send(None);
                return;
            }
        }
        let caught_up = records.is_empty() || resp.millis_behind_latest() == Some(0);
        if caught_up {
            next_call = next_call.max(called + shared.poll_interval);
        }
    }
}

/// One chunk of a shard's records with their metadata columns, and the bytes read.
fn chunk_of(
    records: &[aws_sdk_kinesis::types::Record],
    partition: usize,
    shard: &Arc<str>,
) -> (Chunk, usize) {
    let mut chunk = Chunk::new(Vec::new(), partition, now_ms());
    let (mut keys, mut seqs, mut shards, mut arrivals) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0usize;
    for r in records {
        let data = r.data().as_ref();
        bytes += data.len();
        let n = append_records(data, &mut chunk.data);
        if n == 0 {
            continue;
        }
        let key: Arc<str> = Arc::from(r.partition_key());
        let seq: Arc<str> = Arc::from(r.sequence_number());
        let arrival = r
            .approximate_arrival_timestamp()
            .and_then(|t| t.to_millis().ok())
            .unwrap_or(chunk.arrival_ms);
        for _ in 0..n {
            keys.push(Arc::clone(&key));
            seqs.push(Arc::clone(&seq));
            shards.push(Arc::clone(shard));
            arrivals.push(arrival);
        }
    }
    chunk.meta = Some(Box::new(ChunkMeta {
        columns: vec![
            ("partition_key", MetaValues::Text(keys)),
            ("sequence_number", MetaValues::Text(seqs)),
            ("shard_id", MetaValues::Text(shards)),
            ("approximate_arrival_time", MetaValues::Time(arrivals)),
        ],
    }));
    (chunk, bytes)
}

/// Hands a chunk to the stream, its last sequence number to the acknowledger first
/// (so checkpoints advance in order); `false` when the stream is gone.
async fn deliver(
    chunk: Chunk,
    last_seq: &str,
    out: &mpsc::Sender<Input>,
    acks: &mpsc::UnboundedSender<Pending>,
) -> bool {
    let (tx, rx) = oneshot::channel();
    if acks.send(Some((rx, last_seq.to_string()))).is_err() {
        return false;
    }
    out.send(Input {
        chunk,
        ack: Some(tx),
    })
    .await
    .is_ok()
}

// ---------------------------------------------------------------------------------
// Enhanced fan-out

/// SubscribeToShard may be called once per second per shard and consumer.
const SUBSCRIBE_SPACING: Duration = Duration::from_secs(1);

/// The ARN of the stream consumer `name`, registered if it does not exist yet, once it
/// is ACTIVE; retried with backoff (the stream may not exist yet, the consumer may be
/// being deleted). `None` when the stream's input closed meanwhile.
async fn register_consumer(
    client: &Client,
    stream: &StreamRef,
    name: &str,
    health: &Health,
    out: &mpsc::Sender<Input>,
) -> Option<String> {
    let mut backoff = Backoff::new(MAX_BACKOFF);
    loop {
        let attempt = async {
            let stream_arn = match stream {
                StreamRef::Arn(a) => a.clone(),
                StreamRef::Name(n) => client
                    .describe_stream_summary()
                    .stream_name(n)
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "Kinesis DescribeStreamSummary on '{n}': {}",
                            describe_error(&e)
                        )
                    })?
                    .stream_description_summary()
                    .map(|s| s.stream_arn().to_string())
                    .ok_or_else(|| format!("Kinesis described stream '{n}' without its ARN"))?,
            };
            let described = client
                .describe_stream_consumer()
                .stream_arn(&stream_arn)
                .consumer_name(name)
                .send()
                .await;
            let (arn, status) = match described {
                Ok(d) => {
                    let c = d.consumer_description().ok_or_else(|| {
                        format!("Kinesis described consumer '{name}' without a description")
                    })?;
                    (c.consumer_arn().to_string(), c.consumer_status().clone())
                }
                Err(e) if error_code(&e) == Some("ResourceNotFoundException") => {
                    let r = client
                        .register_stream_consumer()
                        .stream_arn(&stream_arn)
                        .consumer_name(name)
                        .send()
                        .await
                        .map_err(|e| {
                            format!(
                                "Kinesis RegisterStreamConsumer '{name}' on '{stream_arn}': {}",
                                describe_error(&e)
                            )
                        })?;
                    let c = r.consumer().ok_or_else(|| {
                        format!("Kinesis registered consumer '{name}' without describing it")
                    })?;
                    tracing::info!(
                        consumer = name,
                        "kinesis: registered the enhanced fan-out consumer"
                    );
                    (c.consumer_arn().to_string(), c.consumer_status().clone())
                }
                Err(e) => {
                    return Err(format!(
                        "Kinesis DescribeStreamConsumer '{name}' on '{stream_arn}': {}",
                        describe_error(&e)
                    ));
                }
            };
            Ok::<_, String>((arn, status))
        };
        let delay = match attempt.await {
            Ok((arn, ConsumerStatus::Active)) => return Some(arn),
            // Registering (or being deleted by someone): not an error, ask again soon.
            Ok((_, status)) => {
                tracing::info!(consumer = name, "kinesis: consumer is {status:?}, waiting");
                Duration::from_millis(500)
            }
            Err(why) => {
                let delay = backoff.next_delay();
                tracing::warn!("kinesis: {why}; retrying in {delay:?}");
                health.retrying(why);
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = out.closed() => return None,
        }
    }
}

/// Reads one shard through SubscribeToShard until it ends or the stream goes away.
async fn subscribe_shard(
    shared: &Shared,
    shard: &str,
    partition: usize,
    start: ShardStart,
    out: &mpsc::Sender<Input>,
    acks: &mpsc::UnboundedSender<Pending>,
) {
    let Some(consumer) = shared.consumer_arn.as_deref() else {
        return;
    };
    let shard_arc: Arc<str> = Arc::from(shard);
    let mut backoff = Backoff::new(MAX_BACKOFF);
    // After the last record handed to the stream: where the next subscription starts.
    let mut position = start;
    let mut next_call = Instant::now();
    loop {
        let wait = next_call.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = out.closed() => return,
            }
        }
        let called = Instant::now();
        next_call = called + SUBSCRIBE_SPACING;
        let sub = tokio::select! {
            r = shared
                .client
                .subscribe_to_shard()
                .consumer_arn(consumer)
                .shard_id(shard)
                .starting_position(starting_position(&position))
                .send() => r,
            _ = out.closed() => return,
        };
        let mut events = match sub {
            Ok(s) => s.event_stream,
            Err(e) => {
                // ResourceInUse: the previous subscription of this shard is still
                // being torn down; LimitExceeded: more than one call a second.
                let why = format!(
                    "Kinesis SubscribeToShard on shard {shard}: {}",
                    describe_error(&e)
                );
                let delay = backoff.next_delay();
                shared.health.retrying(&why);
                tracing::warn!(shard, "kinesis: {why}; retrying in {delay:?}");
                next_call = next_call.max(Instant::now() + delay);
                continue;
            }
        };
        loop {
            // The next event only once the previous chunk is in the stream's channel:
            // not reading is what slows the sender down (HTTP/2 flow control).
            let event = tokio::select! {
                e = events.recv() => e,
                _ = out.closed() => return,
            };
            let event = match event {
                Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(e))) => e,
                // An event type this SDK does not know: nothing to read in it.
                Ok(Some(_)) => continue,
                // The subscription's 5 minutes are over: subscribe again.
                Ok(None) => break,
                Err(e) => {
                    let why = format!(
                        "Kinesis SubscribeToShard event stream of shard {shard}: {}",
                        describe_error(&e)
                    );
                    let delay = backoff.next_delay();
                    shared.health.retrying(&why);
                    tracing::warn!(shard, "kinesis: {why}; subscribing again in {delay:?}");
                    next_call = next_call.max(Instant::now() + delay);
                    break;
                }
            };
            backoff.reset();
            shared.health.connected();
            let records = event.records();
            if let Some(last) = records.last() {
                let (chunk, _) = chunk_of(records, partition, &shard_arc);
                let last_seq = last.sequence_number().to_string();
                if !deliver(chunk, &last_seq, out, acks).await {
                    return;
                }
                position = ShardStart::After(last_seq);
            }
            // The shard's last event names its children (or has no continuation);
            // a server that never sends it has the shard listed as closed and finds
            // nothing more in it.
            let ended = !event.child_shards().is_empty()
                || event.continuation_sequence_number().is_empty()
                || (records.is_empty()
                    && event.millis_behind_latest() == 0
                    && shared
                        .closed
                        .lock()
                        .map(|c| c.contains(shard))
                        .unwrap_or(false));
            if ended {
                // The acknowledger marks it finished after the last chunk's report.
                let _ = acks.send(None);
                return;
            }
        }
    }
}

/// SubscribeToShard's starting position for a shard's reader position.
fn starting_position(position: &ShardStart) -> StartingPosition {
    let b = StartingPosition::builder();
    let b = match position {
        ShardStart::After(seq) => b
            .r#type(ShardIteratorType::AfterSequenceNumber)
            .sequence_number(seq),
        ShardStart::At(StartPosition::Latest) => b.r#type(ShardIteratorType::Latest),
        ShardStart::At(StartPosition::TrimHorizon) => b.r#type(ShardIteratorType::TrimHorizon),
        ShardStart::At(StartPosition::AtTimestamp(ms)) => b
            .r#type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from_millis(*ms)),
    };
    b.build()
        .expect("`type`, the one member the builder requires, is set on every path")
}

/// A shard iterator at `position`; `None` when the shard is closed and has nothing
/// after it.
async fn get_iterator(
    shared: &Shared,
    shard: &str,
    position: &ShardStart,
) -> Result<Option<String>> {
    let mut req = shared.client.get_shard_iterator().shard_id(shard);
    req = match &shared.stream {
        StreamRef::Name(n) => req.stream_name(n),
        StreamRef::Arn(a) => req.stream_arn(a),
    };
    req = match position {
        ShardStart::After(seq) => req
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq),
        ShardStart::At(StartPosition::Latest) => req.shard_iterator_type(ShardIteratorType::Latest),
        ShardStart::At(StartPosition::TrimHorizon) => {
            req.shard_iterator_type(ShardIteratorType::TrimHorizon)
        }
        ShardStart::At(StartPosition::AtTimestamp(ms)) => req
            .shard_iterator_type(ShardIteratorType::AtTimestamp)
            .timestamp(DateTime::from_millis(*ms)),
    };
    let resp = req.send().await.map_err(|e| {
        Error::external(format!(
            "Kinesis GetShardIterator on shard {shard}: {}",
            describe_error(&e)
        ))
    })?;
    Ok(resp.shard_iterator().map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_times() {
        assert_eq!(safe_name("iot/readings"), "iot_readings");
        assert_eq!(safe_name("../x"), "_.._x");
        assert_eq!(
            stream_name_of(&StreamRef::Arn(
                "arn:aws:kinesis:eu-west-1:123:stream/iot".into()
            )),
            "iot"
        );
        assert_eq!(parse_timestamp("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(
            parse_timestamp("2026-01-01T00:00:00Z"),
            Some(1_767_225_600_000)
        );
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    fn source(pairs: &[(&str, &str)]) -> Result<KinesisSource> {
        let mut o = Options::new(crate::error::Position::default());
        for (k, v) in pairs {
            o.insert(k, v.to_string(), crate::error::Position::default())?;
        }
        KinesisSource::from_options("readings", o, &SourceContext::default())
    }

    /// Checkpoints are named by the Sluice stream unless `consumer_name` says
    /// otherwise: two streams over one Kinesis stream do not share one.
    #[test]
    fn checkpoint_files_follow_the_sluice_stream() {
        let ctx = SourceContext {
            data_dir: Some(PathBuf::from("/data")),
            ..Default::default()
        };
        let build = |name: &str, pairs: &[(&str, &str)]| {
            let mut o = Options::new(crate::error::Position::default());
            for (k, v) in pairs {
                o.insert(k, v.to_string(), crate::error::Position::default())
                    .unwrap();
            }
            KinesisSource::from_options(name, o, &ctx)
                .unwrap()
                .checkpoint
        };
        let a = build("hot_readings", &[("stream", "iot")]);
        let b = build("all_readings", &[("stream", "iot")]);
        assert_eq!(a, Some(PathBuf::from("/data/kinesis/hot_readings.json")));
        assert_eq!(b, Some(PathBuf::from("/data/kinesis/all_readings.json")));
        let c = build("x", &[("stream", "iot"), ("consumer_name", "shared")]);
        assert_eq!(c, Some(PathBuf::from("/data/kinesis/shared.json")));
    }

    /// `consumer_type`: polling by default, `efo` registers `consumer_name` (the
    /// Sluice stream's name when not given), anything else is the user's mistake.
    #[test]
    fn consumer_types() {
        let s = source(&[("stream", "iot")]).unwrap();
        assert_eq!(s.efo, None);
        let s = source(&[("stream", "iot"), ("consumer_type", "EFO")]).unwrap();
        assert_eq!(s.efo.as_deref(), Some("readings"));
        let s = source(&[
            ("stream", "arn:aws:kinesis:eu-west-1:1:stream/iot"),
            ("consumer_type", "efo"),
            ("consumer_name", "dashboards"),
        ])
        .unwrap();
        assert_eq!(s.efo.as_deref(), Some("dashboards"));
        let e = source(&[("stream", "iot"), ("consumer_type", "fanout")])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("'polling'") && e.contains("'efo'"), "{e}");
        let e = source(&[
            ("stream", "iot"),
            ("consumer_type", "efo"),
            ("consumer_name", "my consumer"),
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("'my consumer'"), "{e}");
        let e = source(&[("stream", "iot"), ("ca", "/nonexistent/ca.pem")])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("option 'ca'"), "{e}");
    }
}
