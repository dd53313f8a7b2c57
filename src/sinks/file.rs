//! `file` sink: query results appended to a local file as JSON lines, rendered by
//! [`crate::render`] (`timestamp_format` chooses RFC 3339 or epoch ms).
//!
//! ```sql
//! CREATE SINK out WITH (connector = 'file', path = 'results.jsonl');
//! ```

use std::path::PathBuf;

use datafusion::arrow::array::RecordBatch;
use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;

use super::{Sink, SinkContext, take_timestamp_format};
use crate::error::{Error, Result};
use crate::render::{TimestampFormat, json_lines};
use crate::sources::resolve_path;
use crate::sql::Options;

pub struct FileSink {
    /// `path`: the file to write (required).
    path: PathBuf,
    /// `append`: keep what the file holds (default false: start it empty).
    append: bool,
    /// `timestamp_format`: `rfc3339` (default) or `epoch_ms`.
    timestamps: TimestampFormat,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    buf: Vec<u8>,
}

impl FileSink {
    pub fn from_options(mut o: Options, ctx: &SinkContext) -> Result<Self> {
        let path = o.require_string("path", "the file sink")?;
        let append = o.take_bool("append")?.unwrap_or(false);
        let timestamps = take_timestamp_format(&mut o)?;
        o.finish("sink connector 'file'")?;
        Ok(FileSink {
            path: resolve_path(&path, ctx.file_root.as_ref())?,
            append,
            timestamps,
            file: None,
            buf: Vec::new(),
        })
    }

    async fn open(&mut self) -> Result<&mut tokio::io::BufWriter<tokio::fs::File>> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await?;
            }
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(self.append)
                .truncate(!self.append)
                .open(&self.path)
                .await
                .map_err(|e| {
                    Error::external(format!("cannot open '{}': {e}", self.path.display()))
                })?;
            self.file = Some(tokio::io::BufWriter::new(f));
        }
        Ok(self.file.as_mut().expect("opened above"))
    }
}

impl Sink for FileSink {
    fn write<'a>(&'a mut self, batch: &'a RecordBatch) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            json_lines(batch, self.timestamps, &mut buf)?;
            self.open().await?.write_all(&buf).await?;
            self.buf = buf;
            Ok(())
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.open().await?.flush().await?;
            Ok(())
        })
    }
}
