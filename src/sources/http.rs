//! `http` source: records posted to `POST /streams/{name}/records` (a JSON array or
//! NDJSON body). The API hands each body to the running stream as one acknowledged
//! chunk and answers with how many records were accepted and rejected, and why.
//!
//! ```sql
//! CREATE STREAM readings (…) WITH (connector = 'http');
//! ```
//!
//! The source itself produces nothing: it only keeps the stream open until shutdown.

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use super::{Input, Source};
use crate::error::Result;
use crate::sql::Options;

#[derive(Debug, Clone)]
pub struct HttpSource;

impl HttpSource {
    pub fn from_options(o: Options) -> Result<Self> {
        o.finish("source connector 'http'")?;
        Ok(HttpSource)
    }
}

impl Source for HttpSource {
    fn run(self: Box<Self>, out: mpsc::Sender<Input>) -> BoxFuture<'static, Result<()>> {
        // The API sends into the stream's own channel; this task only has to keep the
        // channel open, and returns when the stream stops.
        Box::pin(async move {
            out.closed().await;
            Ok(())
        })
    }
}
