//! `stdout` sink: query results printed as JSON lines (for `sluice run` and pipes),
//! rendered by [`crate::render`] (`timestamp_format` chooses RFC 3339 or epoch ms).
//!
//! ```sql
//! CREATE SINK console WITH (connector = 'stdout');
//! ```

use datafusion::arrow::array::RecordBatch;
use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;

use super::{Sink, take_timestamp_format};
use crate::error::Result;
use crate::render::{TimestampFormat, json_lines};
use crate::sql::Options;

pub struct StdoutSink {
    /// `timestamp_format`: `rfc3339` (default) or `epoch_ms`.
    timestamps: TimestampFormat,
    out: tokio::io::Stdout,
    buf: Vec<u8>,
}

impl StdoutSink {
    pub fn from_options(mut o: Options) -> Result<Self> {
        let timestamps = take_timestamp_format(&mut o)?;
        o.finish("sink connector 'stdout'")?;
        Ok(StdoutSink {
            timestamps,
            out: tokio::io::stdout(),
            buf: Vec::new(),
        })
    }
}

impl Sink for StdoutSink {
    fn write<'a>(&'a mut self, batch: &'a RecordBatch) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.buf.clear();
            json_lines(batch, self.timestamps, &mut self.buf)?;
            self.out.write_all(&self.buf).await?;
            // Flush per batch: a reader of a pipe sees each window as it closes.
            self.out.flush().await?;
            Ok(())
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { Ok(self.out.flush().await?) })
    }
}
