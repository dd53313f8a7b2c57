//! `file` source: JSON lines from a local file, read at full speed or replayed at a
//! rate (records per second), for replays, tests and benchmarks.
//!
//! ```sql
//! CREATE STREAM r (…) WITH (connector = 'file', path = 'readings.jsonl', rate = '1000');
//! ```

use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{Chunk, Input, Source, SourceContext, resolve_path};
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::sql::Options;

/// Bytes read per chunk at full speed: big enough for whole decode batches.
const READ_BYTES: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct FileSource {
    /// `path`: the file to read (required).
    path: PathBuf,
    /// `rate`: records per second to replay at; unset reads as fast as possible.
    rate: Option<u64>,
}

impl FileSource {
    pub fn from_options(mut o: Options, ctx: &SourceContext) -> Result<Self> {
        let path = o.require_string("path", "the file source")?;
        let rate = o.take_u64("rate")?.filter(|&r| r > 0);
        o.finish("source connector 'file'")?;
        Ok(FileSource {
            path: resolve_path(&path, ctx.file_root.as_ref())?,
            rate,
        })
    }
}

impl Source for FileSource {
    fn run(self: Box<Self>, out: mpsc::Sender<Input>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let mut file = tokio::fs::File::open(&self.path).await.map_err(|e| {
                Error::external(format!("cannot open '{}': {e}", self.path.display()))
            })?;
            match self.rate {
                None => read_fast(&mut file, &out).await,
                Some(rate) => read_paced(file, rate, &out).await,
            }
        })
    }
}

async fn read_fast(file: &mut tokio::fs::File, out: &mpsc::Sender<Input>) -> Result<()> {
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; READ_BYTES];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        carry.extend_from_slice(&buf[..n]);
        // Send whole lines; keep the tail for the next read.
        if let Some(last_nl) = carry.iter().rposition(|&b| b == b'\n') {
            let rest = carry.split_off(last_nl + 1);
            let data = std::mem::replace(&mut carry, rest);
            let chunk = Chunk::new(data, 0, now_ms());
            if out.send(chunk.into()).await.is_err() {
                return Ok(());
            }
        }
    }
    if !carry.is_empty() {
        let _ = out.send(Input::from(Chunk::new(carry, 0, now_ms()))).await;
    }
    Ok(())
}

async fn read_paced(file: tokio::fs::File, rate: u64, out: &mpsc::Sender<Input>) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    // Ten sends a second keeps pacing smooth without a send per record.
    let per_tick = (rate / 10).max(1) as usize;
    let tick = Duration::from_millis(if rate >= 10 { 100 } else { 1000 / rate.max(1) });
    let mut lines = tokio::io::BufReader::new(file).lines();
    let mut interval = tokio::time::interval(tick);
    loop {
        interval.tick().await;
        let mut data = Vec::new();
        for _ in 0..per_tick {
            match lines.next_line().await? {
                Some(l) => {
                    data.extend_from_slice(l.as_bytes());
                    data.push(b'\n');
                }
                None => break,
            }
        }
        if data.is_empty() {
            return Ok(());
        }
        if out
            .send(Input::from(Chunk::new(data, 0, now_ms())))
            .await
            .is_err()
        {
            return Ok(());
        }
    }
}
