//! `stdout` sink: query results printed as JSON lines (for `sluice run` and pipes).
//!
//! ```sql
//! CREATE SINK console WITH (connector = 'stdout');
//! ```

use datafusion::arrow::array::RecordBatch;
use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;

use super::{Sink, to_json_lines};
use crate::error::Result;
use crate::sql::Options;

pub struct StdoutSink {
    out: tokio::io::Stdout,
    buf: Vec<u8>,
}

impl StdoutSink {
    pub fn from_options(o: Options) -> Result<Self> {
        o.finish("sink connector 'stdout'")?;
        Ok(StdoutSink {
            out: tokio::io::stdout(),
            buf: Vec::new(),
        })
    }
}

impl Sink for StdoutSink {
    fn write<'a>(&'a mut self, batch: &'a RecordBatch) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.buf.clear();
            to_json_lines(batch, &mut self.buf)?;
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
