//! `table` sink: result rows as items of an embedded alert table (last stage of the
//! data flow; the seed-004 `warning_events` DynamoDB table, kept on local disk when
//! there is no AWS). See [`crate::tables`] for the storage and [`super::items`] for the
//! options, which are the `dynamodb` sink's.
//!
//! ```sql
//! CREATE SINK warning_events WITH (
//!   connector = 'table', table = 'warning_events', partition_key = 'deviceId'
//! );
//! ```
//!
//! **Delivery.** `write` returns once the batch's items are appended to the table's
//! log and synced, so a replayed batch (after a restart) rewrites the same items:
//! the table ends the same. Items are readable at once through
//! `GET /tables/{name}/items`. Needs the server's data directory (`sluice serve`).

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use futures::future::BoxFuture;

use super::items::ItemSpec;
use super::{Claim, Sink, SinkContext};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::sql::Options;
use crate::tables::{self, Table};

pub struct TableSink {
    spec: ItemSpec,
    table: Arc<Table>,
    health: Arc<Health>,
}

impl TableSink {
    pub fn from_options(mut o: Options, ctx: &SinkContext) -> Result<Self> {
        let at = o.position;
        let spec = ItemSpec::from_options(&mut o, "table")?;
        o.finish("sink connector 'table'")?;
        let dir = ctx.data_dir.as_ref().ok_or_else(|| {
            Error::user_at(
                "the table sink keeps its items in the server's data directory: run it with \
                 `sluice serve` (or use connector = 'dynamodb')",
                at,
            )
        })?;
        let table = tables::open(dir, &spec.table)?;
        table.bind(&spec.keys).map_err(|e| e.or_at(at))?;
        Ok(TableSink {
            spec,
            table,
            health: Arc::new(Health::idle()),
        })
    }
}

impl Sink for TableSink {
    fn write<'a>(&'a mut self, batch: &'a RecordBatch) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let items = self.spec.items(batch)?;
            if items.skipped > 0 {
                self.health.skipped(items.skipped, items.last_skip);
            }
            let table = Arc::clone(&self.table);
            // File writes and fsync block: keep them off the async workers.
            tokio::task::spawn_blocking(move || table.put_items(items.items))
                .await
                .map_err(|e| Error::internal(format!("table write task: {e}")))??;
            self.health.connected();
            Ok(())
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        // Every write is on disk when it returns.
        Box::pin(async { Ok(()) })
    }

    fn health(&self) -> Option<Arc<Health>> {
        Some(Arc::clone(&self.health))
    }

    fn claim(&self) -> Option<Claim> {
        Some(Claim::Table(self.spec.table.clone()))
    }
}
