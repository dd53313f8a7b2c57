//! `dynamodb` sink: result rows as items of an Amazon DynamoDB table (last stage of
//! the data flow; the seed-004 Lambda's `warning_events` writes, without the Lambda).
//!
//! ```sql
//! CREATE SINK warning_events WITH (
//!   connector = 'dynamodb', table = 'warning_events', partition_key = 'deviceId',
//!   region = 'eu-west-1', ttl_attribute = 'expires_at', ttl = '7d'
//! );
//! ```
//!
//! Options: those of [`super::items`] (table, keys, attributes, TTL) and of
//! [`crate::aws`] (region, endpoint, credentials). The table must exist, keyed by the
//! same attributes.
//!
//! **Delivery.** Each `write` sends its items with BatchWriteItem, 25 per call (the
//! service's limit), and returns when all are written: items DynamoDB leaves
//! unprocessed (throttling, capacity) are sent again, only those, with backoff
//! (100 ms doubling to 5 s), as are whole calls that fail for a reason that may pass
//! (throttling, network, a table being created); the query waits meanwhile
//! (backpressure) and the sink's health says `retrying` with the reason. A request
//! DynamoDB refuses as invalid (a key of the wrong type, an item over 400 KB) fails
//! the sink: retrying cannot help. Items are whole-item puts, so a replay writes the
//! same item again (idempotent); within a batch a later row wins over an earlier one
//! with the same key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use datafusion::arrow::array::RecordBatch;
use futures::future::BoxFuture;
use serde_json::{Map, Value};

use super::items::ItemSpec;
use super::{Sink, SinkContext};
use crate::aws::{AwsConnect, describe_error, error_code, needs_operator};
use crate::error::{Error, Result};
use crate::health::{Backoff, Health};
use crate::sql::Options;

/// BatchWriteItem takes at most 25 writes.
const BATCH_ITEMS: usize = 25;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct DynamoDbSink {
    spec: ItemSpec,
    connect: AwsConnect,
    /// Made on the first write (resolving credentials is async and may need the
    /// network), so a sink can be created before AWS is reachable.
    client: Option<Client>,
    health: Arc<Health>,
}

impl DynamoDbSink {
    pub fn from_options(mut o: Options, ctx: &SinkContext) -> Result<Self> {
        let connect = AwsConnect::from_options(&mut o, ctx.file_root.as_ref(), &ctx.reach)?;
        let spec = ItemSpec::from_options(&mut o, "dynamodb")?;
        o.finish("sink connector 'dynamodb'")?;
        connect.refused.raise()?;
        Ok(DynamoDbSink {
            spec,
            connect,
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

    /// Writes up to 25 requests, retrying unprocessed ones until none is left.
    async fn write_batch(
        &mut self,
        client: &Client,
        mut requests: Vec<WriteRequest>,
    ) -> Result<()> {
        let mut backoff = Backoff::new(MAX_BACKOFF);
        while !requests.is_empty() {
            let sent = client
                .batch_write_item()
                .request_items(&self.spec.table, requests.clone())
                .send()
                .await;
            match sent {
                Ok(out) => {
                    self.health.connected();
                    let left = out
                        .unprocessed_items()
                        .and_then(|m| m.get(&self.spec.table))
                        .cloned()
                        .unwrap_or_default();
                    if left.is_empty() {
                        return Ok(());
                    }
                    let delay = backoff.next_delay();
                    let why = format!(
                        "DynamoDB left {} of {} items unprocessed (throughput); resending those in {delay:?}",
                        left.len(),
                        requests.len()
                    );
                    tracing::warn!(table = %self.spec.table, "dynamodb sink: {why}");
                    self.health.retrying(why);
                    requests = left;
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    let why = format!(
                        "DynamoDB BatchWriteItem on '{}' at {}: {}",
                        self.spec.table,
                        self.connect.describe(),
                        describe_error(&e)
                    );
                    if needs_operator(error_code(&e)) {
                        // The table, the items or the credentials must change first.
                        return Err(Error::external(why));
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!("dynamodb sink: {why}; retrying in {delay:?}");
                    self.health.retrying(why);
                    tokio::time::sleep(delay).await;
                }
            }
        }
        Ok(())
    }
}

/// A JSON value as a DynamoDB attribute value (numbers keep their text).
pub fn attribute(v: &Value) -> AttributeValue {
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(a) => AttributeValue::L(a.iter().map(attribute).collect()),
        Value::Object(m) => {
            AttributeValue::M(m.iter().map(|(k, v)| (k.clone(), attribute(v))).collect())
        }
    }
}

fn put_request(item: &Map<String, Value>) -> Result<WriteRequest> {
    let map: HashMap<String, AttributeValue> = item
        .iter()
        .map(|(k, v)| (k.clone(), attribute(v)))
        .collect();
    let put = PutRequest::builder()
        .set_item(Some(map))
        .build()
        .map_err(|e| Error::internal(format!("PutRequest: {e}")))?;
    Ok(WriteRequest::builder().put_request(put).build())
}

impl Sink for DynamoDbSink {
    fn write<'a>(&'a mut self, batch: &'a RecordBatch) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let items = self.spec.items(batch)?;
            if items.skipped > 0 {
                self.health.skipped(items.skipped, items.last_skip);
            }
            if items.items.is_empty() {
                return Ok(());
            }
            let client = self.client().await;
            for chunk in items.items.chunks(BATCH_ITEMS) {
                let requests = chunk.iter().map(put_request).collect::<Result<Vec<_>>>()?;
                self.write_batch(&client, requests).await?;
            }
            Ok(())
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        // Nothing is buffered: every write returns when DynamoDB has the items.
        Box::pin(async { Ok(()) })
    }

    fn health(&self) -> Option<Arc<Health>> {
        Some(Arc::clone(&self.health))
    }
}
