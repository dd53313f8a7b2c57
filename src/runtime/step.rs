//! Step mode: the runtime's core driven synchronously, for tests and benchmarks.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;

use super::{Connectors, StreamCore, step_query};
use crate::catalog::Catalog;
use crate::decode::{Chunk, Decoded};
use crate::engine::Query;
use crate::engine::watermark::{Clock, ManualClock};
use crate::error::{Error, RecordError, Result};

/// Synchronous driver for tests and benchmarks: push JSON, move the clock, read
/// outputs. Uses the same decoder, watermark tracker and queries as [`run`].
pub struct Step {
    pub catalog: Catalog,
    pub clock: ManualClock,
    connectors: Connectors,
    streams: BTreeMap<String, StreamCore>,
    queries: BTreeMap<String, Vec<(String, Query)>>,
    outputs: BTreeMap<String, Vec<RecordBatch>>,
    errors: BTreeMap<String, Vec<RecordError>>,
}

impl Step {
    pub fn new(now_ms: i64) -> Self {
        Step {
            catalog: Catalog::new(),
            clock: ManualClock::new(now_ms),
            connectors: Connectors::default(),
            streams: BTreeMap::new(),
            queries: BTreeMap::new(),
            outputs: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    /// Applies SQL statements, then starts new queries, forgets dropped ones and
    /// starts replaced ones (and those reading a replaced stream) afresh.
    pub fn apply(&mut self, sql: &str) -> Result<Vec<crate::catalog::Change>> {
        use crate::catalog::Change;
        use crate::sql::ObjectKind;
        let changes = self.catalog.apply(sql, &self.connectors)?;
        let now = self.clock.now_ms();
        let replaced = |kind: ObjectKind, name: &str| {
            changes
                .iter()
                .any(|c| matches!(c, Change::Replaced(k, n) if *k == kind && n == name))
        };
        self.streams.retain(|name, _| {
            self.catalog.streams.contains_key(name) && !replaced(ObjectKind::Stream, name)
        });
        for (name, def) in &self.catalog.streams {
            if !self.streams.contains_key(name) {
                self.streams
                    .insert(name.clone(), StreamCore::new(def, 1, now)?);
            }
        }
        for (stream, list) in self.queries.iter_mut() {
            list.retain(|(q, _)| {
                self.catalog.queries.contains_key(q)
                    && !replaced(ObjectKind::Query, q)
                    && !replaced(ObjectKind::Stream, stream)
            });
        }
        for (name, def) in &self.catalog.queries {
            let list = self.queries.entry(def.plan.stream.clone()).or_default();
            if !list.iter().any(|(n, _)| n == name) {
                list.push((name.clone(), Query::new(Arc::clone(&def.plan))?));
            }
        }
        Ok(changes)
    }

    /// Pushes raw JSON (NDJSON or an array) into a stream's partition 0.
    pub fn push(&mut self, stream: &str, data: &str) -> Result<()> {
        self.push_partition(stream, 0, data.as_bytes().to_vec())
    }

    pub fn push_partition(&mut self, stream: &str, partition: usize, data: Vec<u8>) -> Result<()> {
        let now = self.clock.now_ms();
        let core = self
            .streams
            .get_mut(stream)
            .ok_or_else(|| Error::user(format!("unknown stream '{stream}'")))?;
        let chunk = Chunk::new(data, partition, now);
        let (decoded, wm) = core.ingest(std::slice::from_ref(&chunk), now)?;
        self.drive(stream, &decoded, wm, now)
    }

    /// Declares how many partitions a stream's source has (before pushing).
    pub fn set_partitions(&mut self, stream: &str, n: usize) -> Result<()> {
        let def = self
            .catalog
            .stream(stream)
            .ok_or_else(|| Error::user(format!("unknown stream '{stream}'")))?
            .clone();
        self.streams.insert(
            stream.to_string(),
            StreamCore::new(&def, n, self.clock.now_ms())?,
        );
        Ok(())
    }

    /// Recomputes a stream's watermark at the clock's time (idle advance).
    pub fn tick(&mut self, stream: &str) -> Result<()> {
        let now = self.clock.now_ms();
        let core = self
            .streams
            .get_mut(stream)
            .ok_or_else(|| Error::user(format!("unknown stream '{stream}'")))?;
        let wm = core.tick(now);
        self.drive(stream, &Decoded::default(), wm, now)
    }

    /// Ends a stream's input: every open window closes.
    pub fn finish(&mut self, stream: &str) -> Result<()> {
        let now = self.clock.now_ms();
        let core = self
            .streams
            .get_mut(stream)
            .ok_or_else(|| Error::user(format!("unknown stream '{stream}'")))?;
        let wm = core.finish();
        self.drive(stream, &Decoded::default(), Some(wm), now)
    }

    fn drive(&mut self, stream: &str, decoded: &Decoded, wm: Option<i64>, now: i64) -> Result<()> {
        let Some(queries) = self.queries.get_mut(stream) else {
            return Ok(());
        };
        for (name, q) in queries.iter_mut() {
            let e = step_query(q, decoded, wm, now)?;
            self.outputs
                .entry(name.clone())
                .or_default()
                .extend(e.batches);
            self.errors
                .entry(name.clone())
                .or_default()
                .extend(e.errors);
        }
        Ok(())
    }

    /// Takes the results a query emitted since the last call.
    pub fn take_output(&mut self, query: &str) -> Vec<RecordBatch> {
        self.outputs.remove(query).unwrap_or_default()
    }

    pub fn take_errors(&mut self, query: &str) -> Vec<RecordError> {
        self.errors.remove(query).unwrap_or_default()
    }

    pub fn query(&self, name: &str) -> Option<&Query> {
        self.queries
            .values()
            .flatten()
            .find(|(n, _)| n == name)
            .map(|(_, q)| q)
    }

    pub fn watermark(&self, stream: &str) -> Option<i64> {
        self.streams.get(stream).and_then(|s| s.tracker.current())
    }
}
