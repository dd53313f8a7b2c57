//! `kinesis` sink: every result row becomes one record of an Amazon Kinesis data
//! stream (last stage of the data flow; feeds another consumer, as the seeds' IoT
//! rule feeds Kinesis).
//!
//! ```sql
//! CREATE SINK alerts_out WITH (
//!   connector = 'kinesis', stream = 'alerts', region = 'eu-west-1',
//!   partition_key = 'device-{deviceId}'
//! );
//! ```
//!
//! A record's data is the row as one JSON object, as [`crate::render`] writes it
//! (`timestamp_format`: RFC 3339 or epoch ms), its partition key the `partition_key`
//! template with `{column}` replaced by the row's value as text (at most 256
//! characters; longer keys are cut, which only changes the shard they hash to). A row whose key columns are null, or whose record would exceed
//! Kinesis's 1 MiB, is skipped and counted in the sink's health.
//!
//! **Delivery.** Records go out with PutRecords, at most 500 records and 5 MiB per
//! call. Records Kinesis refuses one by one (ProvisionedThroughputExceeded,
//! InternalFailure) are sent again, only those, with backoff (100 ms doubling to 5 s),
//! as are calls that fail as a whole for a reason that may pass; `write` returns when
//! every record is in, so a slow stream slows the query (backpressure). At-least-once:
//! a call whose answer is lost is sent again, and a retried record may land after
//! records that came later in the same batch.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use datafusion::arrow::array::RecordBatch;
use futures::future::BoxFuture;

use super::template::Template;
use super::{Sink, SinkContext, take_timestamp_format};
use crate::aws::{AwsConnect, describe_error, error_code, needs_operator};
use crate::error::{Error, Result};
use crate::health::{Backoff, Health};
use crate::render::{TimestampFormat, json_lines};
use crate::sql::Options;

/// PutRecords limits: records per call, bytes per call, bytes per record (data and
/// partition key count).
const MAX_RECORDS: usize = 500;
const MAX_CALL_BYTES: usize = 5 << 20;
const MAX_RECORD_BYTES: usize = 1 << 20;
const MAX_KEY_CHARS: usize = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct KinesisSink {
    connect: AwsConnect,
    /// `stream`: name or ARN (required).
    stream: String,
    /// `partition_key`: template like `{deviceId}` or `site-{site}/{deviceId}`
    /// (required).
    key: Template,
    /// `timestamp_format`: how times are written in records and keys.
    timestamps: TimestampFormat,
    client: Option<Client>,
    health: Arc<Health>,
}

/// A record ready to send.
struct Entry {
    key: String,
    data: Vec<u8>,
}

impl KinesisSink {
    pub fn from_options(mut o: Options, ctx: &SinkContext) -> Result<Self> {
        let at = o.position;
        let connect = AwsConnect::from_options(&mut o, ctx.file_root.as_ref(), &ctx.reach)?;
        let stream = o.take("stream").ok_or_else(|| {
            Error::user_at(
                "the kinesis sink needs option 'stream': the stream's name or ARN",
                at,
            )
        })?;
        let key = o.take("partition_key").ok_or_else(|| {
            Error::user_at(
                "the kinesis sink needs option 'partition_key', a template like '{deviceId}' \
                 (records of one key go to one shard, in order)",
                at,
            )
        })?;
        let parts = Template::parse(&key.value, "partition key template")
            .map_err(|e| Error::user_at(e, key.position))?;
        let timestamps = take_timestamp_format(&mut o)?;
        o.finish("sink connector 'kinesis'")?;
        connect.refused.raise()?;
        Ok(KinesisSink {
            connect,
            stream: stream.value.trim().to_string(),
            key: parts,
            timestamps,
            client: None,
            health: Arc::new(Health::new()),
        })
    }

    async fn client(&mut self) -> Client {
        if let Some(c) = &self.client {
            return c.clone();
        }
        let c = Client::new(&self.connect.sdk_config().await);
        self.client = Some(c.clone());
        c
    }

    /// Sends one call's records, then again those refused, until none is left.
    async fn put(&self, client: &Client, mut entries: Vec<Entry>) -> Result<()> {
        let mut backoff = Backoff::new(MAX_BACKOFF);
        while !entries.is_empty() {
            let mut req = client.put_records();
            req = if self.stream.starts_with("arn:") {
                req.stream_arn(&self.stream)
            } else {
                req.stream_name(&self.stream)
            };
            for e in &entries {
                req = req.records(
                    PutRecordsRequestEntry::builder()
                        .partition_key(&e.key)
                        .data(Blob::new(e.data.clone()))
                        .build()
                        .map_err(|e| Error::internal(format!("PutRecords entry: {e}")))?,
                );
            }
            match req.send().await {
                Ok(out) => {
                    self.health.connected();
                    if out.failed_record_count().unwrap_or(0) == 0 {
                        return Ok(());
                    }
                    let (failed, why) = refused(&entries, out.records());
                    let delay = backoff.next_delay();
                    let why = format!(
                        "Kinesis refused {} of {} records ({why}); resending those in {delay:?}",
                        failed.len(),
                        entries.len()
                    );
                    tracing::warn!(stream = %self.stream, "kinesis sink: {why}");
                    self.health.retrying(why);
                    let mut resend = vec![false; entries.len()];
                    for i in failed {
                        resend[i] = true;
                    }
                    let mut i = 0;
                    entries.retain(|_| {
                        i += 1;
                        resend[i - 1]
                    });
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    let why = format!(
                        "Kinesis PutRecords on '{}' at {}: {}",
                        self.stream,
                        self.connect.describe(),
                        describe_error(&e)
                    );
                    if needs_operator(error_code(&e)) {
                        return Err(Error::external(why));
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!("kinesis sink: {why}; retrying in {delay:?}");
                    self.health.retrying(why);
                    tokio::time::sleep(delay).await;
                }
            }
        }
        Ok(())
    }
}

/// The indexes of the records a PutRecords answer refused (an answer entry with an
/// error code, or no answer entry at all), and the first refusal's reason.
fn refused(
    entries: &[Entry],
    results: &[aws_sdk_kinesis::types::PutRecordsResultEntry],
) -> (Vec<usize>, String) {
    let mut why = String::new();
    let failed = (0..entries.len())
        .filter(|&i| match results.get(i) {
            Some(r) => match r.error_code() {
                Some(code) => {
                    if why.is_empty() {
                        why = format!("{code}: {}", r.error_message().unwrap_or_default());
                    }
                    true
                }
                None => false,
            },
            None => true,
        })
        .collect();
    (failed, why)
}

impl Sink for KinesisSink {
    fn write<'a>(&'a mut self, batch: &'a RecordBatch) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.key
                .check_columns(&batch.schema(), "kinesis sink: the partition key")?;
            let mut lines = Vec::new();
            json_lines(batch, self.timestamps, &mut lines)?;
            let keys = self
                .key
                .render(batch, self.timestamps, None, |v, out| out.push_str(v))?;
            let mut entries = Vec::new();
            let (mut skipped, mut last_skip) = (0u64, None);
            let rows = lines.split(|b| *b == b'\n').filter(|l| !l.is_empty());
            for (line, key) in rows.zip(keys) {
                let Some(key) = key.filter(|k| !k.is_empty()) else {
                    skipped += 1;
                    last_skip = Some("a column of the partition key is null".to_string());
                    continue;
                };
                // Kinesis takes keys of at most 256 characters; a cut key only changes
                // the shard it hashes to.
                let key: String = key.chars().take(MAX_KEY_CHARS).collect();
                if line.len() + key.len() > MAX_RECORD_BYTES {
                    skipped += 1;
                    last_skip = Some(format!(
                        "a row of {} bytes exceeds Kinesis's 1 MiB record limit",
                        line.len()
                    ));
                    continue;
                }
                entries.push(Entry {
                    key,
                    data: line.to_vec(),
                });
            }
            if skipped > 0 {
                self.health.skipped(skipped, last_skip);
            }
            if entries.is_empty() {
                return Ok(());
            }
            let client = self.client().await;
            // Calls of at most 500 records and 5 MiB.
            let mut call: Vec<Entry> = Vec::new();
            let mut bytes = 0;
            for e in entries {
                let size = e.data.len() + e.key.len();
                if call.len() == MAX_RECORDS || bytes + size > MAX_CALL_BYTES {
                    self.put(&client, std::mem::take(&mut call)).await?;
                    bytes = 0;
                }
                bytes += size;
                call.push(e);
            }
            self.put(&client, call).await
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        // Nothing is buffered: every write returns when Kinesis has the records.
        Box::pin(async { Ok(()) })
    }

    fn health(&self) -> Option<Arc<Health>> {
        Some(Arc::clone(&self.health))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kinesis::types::PutRecordsResultEntry;

    /// Only the records the answer marks as failed are sent again.
    #[test]
    fn picks_only_refused_records() {
        let entries: Vec<Entry> = (0..4)
            .map(|i| Entry {
                key: i.to_string(),
                data: vec![],
            })
            .collect();
        let ok = |s: &str| {
            PutRecordsResultEntry::builder()
                .sequence_number(s)
                .shard_id("shardId-0")
                .build()
        };
        let bad = PutRecordsResultEntry::builder()
            .error_code("ProvisionedThroughputExceededException")
            .error_message("Rate exceeded for shard")
            .build();
        let (failed, why) = refused(&entries, &[ok("1"), bad.clone(), ok("3"), bad]);
        assert_eq!(failed, vec![1, 3]);
        assert!(why.starts_with("ProvisionedThroughputExceededException"));
        // A short answer: the unanswered records count as refused.
        let (failed, _) = refused(&entries, &[ok("1")]);
        assert_eq!(failed, vec![1, 2, 3]);
    }
}
