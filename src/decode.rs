//! JSON bytes → Arrow record batches in a stream's declared schema (decode stage,
//! between sources and the engine).
//!
//! Decoding is where the time goes (see ARCHITECTURE.md), so the fast path hands the
//! whole chunk to arrow-json's vectorized decoder, straight into the declared types,
//! once per record. Only when that fails does the slow path split the chunk into its
//! lines and decode each alone, to find the bad records; they go to the error output
//! with the reason and the raw payload, and the good ones still flow. A chunk can be
//! NDJSON (one record per line) or a JSON array of records.
//!
//! Columns with a JSON path (`temp DOUBLE PATH '$.reading.temp'`) are decoded as nested
//! structs and flattened, so nested fields cost no second parse.
//!
//! Metadata columns (`topic TEXT METADATA`) come not from the JSON but from what the
//! source knows of each record (MQTT topic and QoS, Kinesis shard and sequence
//! number): a source that has metadata sends NDJSON with exactly one record per line
//! (see [`append_records`]) and a [`ChunkMeta`] with one value per line.

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray, StructArray,
    TimestampMillisecondArray, make_array, new_null_array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::{concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

use crate::error::{Error, RecordError, RecordErrorKind, Result};

/// One declared column to decode.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeColumn {
    pub name: String,
    pub data_type: DataType,
    pub nullable: bool,
    /// Field names from the top of the record down to the value.
    pub path: Vec<String>,
    /// For a metadata column: the source's key (e.g. `topic`); `path` is then unused.
    pub metadata: Option<String>,
}

/// Rows per decoded batch: large enough to amortize per-batch costs (8K did best in
/// our measurements), small enough to keep latency and memory per batch low.
pub const BATCH_ROWS: usize = 8192;

/// A chunk of raw input: one or more JSON records from one source partition.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub data: Vec<u8>,
    pub partition: usize,
    pub arrival_ms: i64,
    /// Per-record metadata; when present, `data` holds one record per line, in order.
    pub meta: Option<Box<ChunkMeta>>,
    /// Records the source refused before decoding (an oversized message), reported on
    /// the error output like decode errors.
    pub rejected: Vec<RecordError>,
}

impl Chunk {
    pub fn new(data: Vec<u8>, partition: usize, arrival_ms: i64) -> Self {
        Chunk {
            data,
            partition,
            arrival_ms,
            ..Default::default()
        }
    }
}

/// Metadata of the records of a chunk, column by column: every column holds one value
/// per line of the chunk.
#[derive(Debug, Clone, Default)]
pub struct ChunkMeta {
    pub columns: Vec<(&'static str, MetaValues)>,
}

/// One metadata column's values.
#[derive(Debug, Clone)]
pub enum MetaValues {
    Text(Vec<Arc<str>>),
    Int(Vec<i64>),
    Bool(Vec<bool>),
    /// Epoch milliseconds.
    Time(Vec<i64>),
}

impl MetaValues {
    pub fn data_type(&self) -> DataType {
        match self {
            MetaValues::Text(_) => DataType::Utf8,
            MetaValues::Int(_) => DataType::Int64,
            MetaValues::Bool(_) => DataType::Boolean,
            MetaValues::Time(_) => DataType::Timestamp(TimeUnit::Millisecond, None),
        }
    }

    fn len(&self) -> usize {
        match self {
            MetaValues::Text(v) => v.len(),
            MetaValues::Int(v) | MetaValues::Time(v) => v.len(),
            MetaValues::Bool(v) => v.len(),
        }
    }

    /// The values of the given lines (all lines when `None`) as an Arrow array.
    fn to_array(&self, lines: Option<&[u32]>) -> ArrayRef {
        fn pick<T: Clone>(v: &[T], lines: Option<&[u32]>) -> Vec<T> {
            match lines {
                None => v.to_vec(),
                Some(ix) => ix.iter().map(|&i| v[i as usize].clone()).collect(),
            }
        }
        match self {
            MetaValues::Text(v) => Arc::new(StringArray::from_iter_values(
                pick(v, lines).iter().map(|s| s.as_ref()),
            )),
            MetaValues::Int(v) => Arc::new(Int64Array::from(pick(v, lines))),
            MetaValues::Bool(v) => Arc::new(BooleanArray::from(pick(v, lines))),
            MetaValues::Time(v) => Arc::new(TimestampMillisecondArray::from(pick(v, lines))),
        }
    }
}

impl ChunkMeta {
    /// Lines described (the length of every column).
    pub fn len(&self) -> usize {
        self.columns.first().map(|(_, v)| v.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Appends the records of one message to `out` as NDJSON, one record per line, and
/// returns how many lines it added. A message may be one JSON object, an array of
/// them, or NDJSON; records that span lines are re-encoded onto one. A message that
/// is not valid JSON is appended as one line (newlines turned to spaces) so the
/// decoder reports it whole, with its reason, on the error output.
pub fn append_records(payload: &[u8], out: &mut Vec<u8>) -> usize {
    let t = payload.trim_ascii();
    if t.is_empty() {
        return 0;
    }
    // The common case, one object on one line, is copied as it is.
    if t[0] == b'{' && !t.contains(&b'\n') {
        out.extend_from_slice(t);
        out.push(b'\n');
        return 1;
    }
    let start = out.len();
    let mut n = 0;
    let mut ok = true;
    if t[0] == b'[' {
        match serde_json::from_slice::<Vec<serde_json::Value>>(t) {
            Ok(values) => {
                for v in values {
                    if serde_json::to_writer(&mut *out, &v).is_err() {
                        ok = false;
                        break;
                    }
                    out.push(b'\n');
                    n += 1;
                }
            }
            Err(_) => ok = false,
        }
    } else {
        for v in serde_json::Deserializer::from_slice(t).into_iter::<serde_json::Value>() {
            match v {
                Ok(v) if serde_json::to_writer(&mut *out, &v).is_ok() => {
                    out.push(b'\n');
                    n += 1;
                }
                _ => {
                    ok = false;
                    break;
                }
            }
        }
    }
    if ok {
        return n;
    }
    out.truncate(start);
    out.extend(
        t.iter()
            .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
    );
    out.push(b'\n');
    1
}

/// The output of decoding: batches in the stream's schema, and the records that failed.
#[derive(Debug, Default)]
pub struct Decoded {
    pub batches: Vec<RecordBatch>,
    /// Per batch: for each partition that contributed, the largest value of the time
    /// column (for the watermark).
    pub partition_max: Vec<(usize, i64)>,
    pub errors: Vec<RecordError>,
}

/// Where a chunk's records came from, passed down the decode paths.
#[derive(Debug, Clone, Copy)]
struct Src<'a> {
    arrival_ms: i64,
    meta: Option<&'a ChunkMeta>,
}

#[derive(Debug)]
pub struct JsonDecoder {
    columns: Vec<DecodeColumn>,
    /// Nested schema arrow-json decodes into.
    decode_schema: SchemaRef,
    /// Flat output: the declared columns, then `arrival_time`.
    schema: SchemaRef,
    /// Index of the column whose values drive the watermark, if it is a declared one.
    time_index: Option<usize>,
    max_record_bytes: usize,
    /// The arrow-json decoder, kept between chunks so its buffers (the tape: ~1.5 MB
    /// for 8K records) are reused rather than allocated, page-faulted in and freed for
    /// every chunk, which cost as much as a third of decode time. Taken out while in
    /// use; put back only after a decode that succeeded, which leaves it empty.
    reusable: Mutex<Option<arrow_json::reader::Decoder>>,
}

impl JsonDecoder {
    /// `time_index` names the event-time column, which must never be null.
    pub fn new(
        columns: Vec<DecodeColumn>,
        arrival_column: &str,
        time_index: Option<usize>,
        max_record_bytes: usize,
    ) -> Result<Self> {
        let json_columns: Vec<DecodeColumn> = columns
            .iter()
            .filter(|c| c.metadata.is_none())
            .cloned()
            .collect();
        let decode_schema = Arc::new(Schema::new(nest(&json_columns, 0)?));
        let mut fields: Vec<Field> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Field::new(
                    &c.name,
                    c.data_type.clone(),
                    c.nullable && Some(i) != time_index,
                )
            })
            .collect();
        fields.push(Field::new(
            arrival_column,
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ));
        Ok(JsonDecoder {
            columns,
            decode_schema,
            schema: Arc::new(Schema::new(fields)),
            time_index,
            max_record_bytes,
            reusable: Mutex::new(None),
        })
    }

    /// The schema of decoded batches.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decodes chunks into batches of at most [`BATCH_ROWS`] rows.
    pub fn decode(&self, chunks: &[Chunk]) -> Result<Decoded> {
        let mut out = Decoded::default();
        let mut pending: Vec<RecordBatch> = Vec::new();
        for chunk in chunks {
            let batch = self.decode_chunk(chunk, &mut out.errors)?;
            if let Some(b) = batch {
                if let Some(t) = self.time_index {
                    let times = b
                        .column(t)
                        .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
                    if let Some(max) = datafusion::arrow::compute::max(times) {
                        match out
                            .partition_max
                            .iter_mut()
                            .find(|(p, _)| *p == chunk.partition)
                        {
                            Some((_, m)) => *m = (*m).max(max),
                            None => out.partition_max.push((chunk.partition, max)),
                        }
                    }
                } else if !out.partition_max.iter().any(|(p, _)| *p == chunk.partition) {
                    out.partition_max.push((chunk.partition, chunk.arrival_ms));
                }
                pending.push(b);
            }
        }
        // Small chunks (one MQTT message each) are merged into full batches; large ones
        // pass through as they are.
        let mut acc: Vec<RecordBatch> = Vec::new();
        let mut rows = 0;
        for b in pending {
            if b.num_rows() >= BATCH_ROWS / 2 {
                out.batches.push(b);
                continue;
            }
            rows += b.num_rows();
            acc.push(b);
            if rows >= BATCH_ROWS {
                out.batches.push(concat_batches(&self.schema, &acc)?);
                acc.clear();
                rows = 0;
            }
        }
        if !acc.is_empty() {
            out.batches.push(concat_batches(&self.schema, &acc)?);
        }
        Ok(out)
    }

    fn decode_chunk(
        &self,
        chunk: &Chunk,
        errors: &mut Vec<RecordError>,
    ) -> Result<Option<RecordBatch>> {
        errors.extend(chunk.rejected.iter().cloned());
        let src = Src {
            arrival_ms: chunk.arrival_ms,
            meta: chunk.meta.as_deref(),
        };
        let data = chunk.data.as_slice();
        let trimmed = data.trim_ascii_start();
        if trimmed.is_empty() {
            return Ok(None);
        }
        if trimmed[0] == b'[' {
            if src.meta.is_some() {
                return Err(Error::internal(
                    "a chunk with metadata must hold one record per line (see append_records)",
                ));
            }
            return self.decode_array(trimmed, src, errors);
        }
        // Records over the size limit are found only when the chunk could hold one.
        let oversized = data.len() > self.max_record_bytes
            && data
                .split(|&b| b == b'\n')
                .any(|l| l.len() > self.max_record_bytes);
        if oversized {
            return self.decode_slow(data, src, errors);
        }
        self.decode_slow_or_fast(data, src, errors)
    }

    /// The whole chunk in one vectorized pass.
    fn decode_fast(
        &self,
        data: &[u8],
    ) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
        let cached = self.reusable.lock().ok().and_then(|mut slot| slot.take());
        let mut decoder = match cached {
            Some(d) => d,
            None => arrow_json::ReaderBuilder::new(Arc::clone(&self.decode_schema))
                .with_batch_size(BATCH_ROWS)
                .build_decoder()?,
        };
        let result = self.decode_with(&mut decoder, data);
        // A failed decode may leave records in the decoder: it is dropped, not reused.
        if result.is_ok()
            && let Ok(mut slot) = self.reusable.lock()
        {
            *slot = Some(decoder);
        }
        result
    }

    /// Decodes all of `data`; on success `decoder` is left empty.
    fn decode_with(
        &self,
        decoder: &mut arrow_json::reader::Decoder,
        data: &[u8],
    ) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
        let mut batches = Vec::new();
        let mut offset = 0;
        while offset < data.len() {
            let n = decoder.decode(&data[offset..])?;
            offset += n;
            if n == 0 || decoder.len() >= BATCH_ROWS {
                if let Some(b) = decoder.flush()? {
                    batches.push(b);
                }
                if n == 0 {
                    break;
                }
            }
        }
        if decoder.has_partial_record() {
            return Err(datafusion::arrow::error::ArrowError::JsonError(
                "the record ends in the middle".into(),
            ));
        }
        if let Some(b) = decoder.flush()? {
            batches.push(b);
        }
        if batches.len() == 1 {
            return Ok(batches.pop().expect("one"));
        }
        concat_batches(&self.decode_schema, &batches)
    }

    /// Record by record, to separate bad records from good ones.
    fn decode_slow(
        &self,
        data: &[u8],
        src: Src,
        errors: &mut Vec<RecordError>,
    ) -> Result<Option<RecordBatch>> {
        let arrival_ms = src.arrival_ms;
        let mut good: Vec<u8> = Vec::with_capacity(data.len());
        // Which lines the good records came from, for their metadata.
        let mut good_lines: Vec<u32> = Vec::new();
        let mut line_no: u32 = 0;
        for line in data.split(|&b| b == b'\n') {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            line_no += 1;
            if line.len() > self.max_record_bytes {
                errors.push(record_error(
                    RecordErrorKind::Oversized,
                    format!(
                        "record of {} bytes exceeds the stream's max_record_bytes ({})",
                        line.len(),
                        self.max_record_bytes
                    ),
                    line,
                    arrival_ms,
                ));
                continue;
            }
            match self.decode_fast(line) {
                Ok(b) if b.num_rows() == 1 => {
                    good.extend_from_slice(line);
                    good.push(b'\n');
                    good_lines.push(line_no - 1);
                }
                Ok(b) => errors.push(record_error(
                    RecordErrorKind::Malformed,
                    format!("expected one JSON object per line, found {}", b.num_rows()),
                    line,
                    arrival_ms,
                )),
                Err(e) => errors.push(classify(e, line, arrival_ms)),
            }
        }
        if good.is_empty() {
            return Ok(None);
        }
        let nested = self.decode_fast(&good).map_err(|e| {
            Error::internal(format!("records that decoded alone failed together: {e}"))
        })?;
        self.finish(nested, &good, src, Some(&good_lines), errors)
    }

    /// A JSON array of records: re-encoded as lines (arrays come from message sources
    /// carrying a few records each, so this is not the bulk path).
    fn decode_array(
        &self,
        data: &[u8],
        src: Src,
        errors: &mut Vec<RecordError>,
    ) -> Result<Option<RecordBatch>> {
        let arrival_ms = src.arrival_ms;
        let values: Vec<serde_json::Value> = match serde_json::from_slice(data) {
            Ok(v) => v,
            Err(e) => {
                errors.push(record_error(
                    RecordErrorKind::Malformed,
                    format!("invalid JSON array: {e}"),
                    data,
                    arrival_ms,
                ));
                return Ok(None);
            }
        };
        let mut lines = Vec::with_capacity(data.len());
        for v in values {
            serde_json::to_writer(&mut lines, &v).map_err(|e| Error::internal(e.to_string()))?;
            lines.push(b'\n');
        }
        self.decode_slow_or_fast(&lines, src, errors)
    }

    fn decode_slow_or_fast(
        &self,
        data: &[u8],
        src: Src,
        errors: &mut Vec<RecordError>,
    ) -> Result<Option<RecordBatch>> {
        match self.decode_fast(data) {
            // With metadata, rows must map one to one onto lines (a line holding two
            // objects would shift them): otherwise the slow path sorts it out.
            Ok(nested) if src.meta.is_none_or(|m| m.len() == nested.num_rows()) => {
                self.finish(nested, data, src, None, errors)
            }
            _ => self.decode_slow(data, src, errors),
        }
    }

    /// Flattens nested columns, checks required columns, appends `arrival_time`.
    /// `lines`: which lines of the chunk the rows came from, when not all of them.
    fn finish(
        &self,
        nested: RecordBatch,
        raw: &[u8],
        src: Src,
        lines: Option<&[u32]>,
        errors: &mut Vec<RecordError>,
    ) -> Result<Option<RecordBatch>> {
        let arrival_ms = src.arrival_ms;
        let n = nested.num_rows();
        if n == 0 {
            return Ok(None);
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.columns.len() + 1);
        for c in &self.columns {
            let column = match &c.metadata {
                None => extract(&nested, &c.path)?,
                Some(key) => match src
                    .meta
                    .and_then(|m| m.columns.iter().find(|(k, _)| k == key))
                {
                    None => new_null_array(&c.data_type, n),
                    Some((_, values)) => {
                        datafusion::arrow::compute::cast(&values.to_array(lines), &c.data_type)?
                    }
                },
            };
            columns.push(column);
        }
        // Required columns (NOT NULL, and the event-time column) must have a value.
        let mut missing: Option<Vec<Option<String>>> = None;
        for (i, c) in self.columns.iter().enumerate() {
            let required = !c.nullable || Some(i) == self.time_index;
            if !required || columns[i].null_count() == 0 {
                continue;
            }
            let m = missing.get_or_insert_with(|| vec![None; n]);
            for (row, slot) in m.iter_mut().enumerate() {
                if columns[i].is_null(row) && slot.is_none() {
                    *slot = Some(format!(
                        "required field '{}' is missing or null",
                        c.path.join(".")
                    ));
                }
            }
        }
        columns.push(Arc::new(TimestampMillisecondArray::from_value(
            arrival_ms, n,
        )));
        let batch = RecordBatch::try_new(Arc::clone(&self.schema_nullable()), columns)?;
        let Some(missing) = missing else {
            return Ok(Some(self.retype(batch)?));
        };
        // Rows map to the chunk's non-empty lines, in order.
        let lines: Vec<&[u8]> = raw
            .split(|&b| b == b'\n')
            .map(|l| l.trim_ascii())
            .filter(|l| !l.is_empty())
            .collect();
        let keep: Vec<bool> = missing.iter().map(Option::is_none).collect();
        for (row, reason) in missing.into_iter().enumerate() {
            if let Some(reason) = reason {
                let payload = lines.get(row).copied().unwrap_or_default();
                errors.push(record_error(
                    RecordErrorKind::Schema,
                    reason,
                    payload,
                    arrival_ms,
                ));
            }
        }
        let kept = filter_record_batch(&batch, &keep.into())?;
        if kept.num_rows() == 0 {
            return Ok(None);
        }
        Ok(Some(self.retype(kept)?))
    }

    /// The output schema with every column nullable (before the required-field check).
    fn schema_nullable(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// Re-labels a checked batch with the declared nullability.
    fn retype(&self, b: RecordBatch) -> Result<RecordBatch> {
        Ok(RecordBatch::try_new(
            Arc::clone(&self.schema),
            b.columns().to_vec(),
        )?)
    }
}

fn record_error(
    kind: RecordErrorKind,
    reason: String,
    payload: &[u8],
    arrival_ms: i64,
) -> RecordError {
    RecordError {
        kind,
        reason,
        payload: String::from_utf8_lossy(payload).into_owned(),
        arrival_ms,
    }
}

/// Sorts arrow-json's message into "not JSON" versus "JSON of the wrong shape".
fn classify(e: datafusion::arrow::error::ArrowError, line: &[u8], arrival_ms: i64) -> RecordError {
    let msg = match &e {
        datafusion::arrow::error::ArrowError::JsonError(m) => m.clone(),
        other => other.to_string(),
    };
    let kind = if serde_json::from_slice::<serde_json::Value>(line).is_err() {
        RecordErrorKind::Malformed
    } else {
        RecordErrorKind::Schema
    };
    let reason = match kind {
        RecordErrorKind::Malformed => format!("invalid JSON: {msg}"),
        _ => format!("does not match the stream's columns: {msg}"),
    };
    record_error(kind, reason, line, arrival_ms)
}

/// Builds the nested decode schema from the columns' paths at `depth`.
fn nest(columns: &[DecodeColumn], depth: usize) -> Result<Vec<Field>> {
    let mut fields: Vec<Field> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for c in columns {
        let key = c.path[depth].as_str();
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let same: Vec<DecodeColumn> = columns
            .iter()
            .filter(|o| o.path[depth] == key)
            .cloned()
            .collect();
        let leaves: Vec<&DecodeColumn> =
            same.iter().filter(|o| o.path.len() == depth + 1).collect();
        let inner: Vec<DecodeColumn> = same
            .iter()
            .filter(|o| o.path.len() > depth + 1)
            .cloned()
            .collect();
        if !leaves.is_empty() && !inner.is_empty() {
            return Err(Error::user(format!(
                "JSON field '{}' is used both as a value and as an object",
                c.path[..=depth].join(".")
            )));
        }
        if let Some(first) = leaves.first() {
            if leaves.iter().any(|l| l.data_type != first.data_type) {
                return Err(Error::user(format!(
                    "JSON field '{}' is read twice with different types",
                    c.path.join(".")
                )));
            }
            fields.push(Field::new(key, first.data_type.clone(), true));
        } else {
            fields.push(Field::new(
                key,
                DataType::Struct(Fields::from(nest(&inner, depth + 1)?)),
                true,
            ));
        }
    }
    Ok(fields)
}

/// Follows `path` through struct columns; a null parent makes the value null.
fn extract(batch: &RecordBatch, path: &[String]) -> Result<ArrayRef> {
    let mut current: ArrayRef = batch
        .column_by_name(&path[0])
        .cloned()
        .ok_or_else(|| Error::internal(format!("decoded batch lacks '{}'", path[0])))?;
    for name in &path[1..] {
        let parent: &StructArray = current.as_struct();
        let child = parent
            .column_by_name(name)
            .cloned()
            .ok_or_else(|| Error::internal(format!("decoded struct lacks '{name}'")))?;
        let nulls = NullBuffer::union(parent.nulls(), child.nulls());
        let data = child.to_data().into_builder().nulls(nulls).build()?;
        current = make_array(data);
    }
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::util::pretty::pretty_format_batches;

    fn decoder() -> JsonDecoder {
        let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
        JsonDecoder::new(
            vec![
                DecodeColumn {
                    name: "id".into(),
                    data_type: DataType::Int64,
                    nullable: false,
                    path: vec!["id".into()],
                    metadata: None,
                },
                DecodeColumn {
                    name: "temp".into(),
                    data_type: DataType::Float64,
                    nullable: true,
                    path: vec!["r".into(), "temp".into()],
                    metadata: None,
                },
                DecodeColumn {
                    name: "ts".into(),
                    data_type: ts,
                    nullable: true,
                    path: vec!["ts".into()],
                    metadata: None,
                },
            ],
            "arrival_time",
            Some(2),
            1024,
        )
        .unwrap()
    }

    fn chunk(s: &str) -> Chunk {
        Chunk {
            meta: None,
            rejected: Vec::new(),
            data: s.as_bytes().to_vec(),
            partition: 0,
            arrival_ms: 7,
        }
    }

    #[test]
    fn nested_paths_flatten_and_bad_records_are_isolated() {
        let d = decoder();
        let out = d
            .decode(&[chunk(concat!(
                "{\"id\": 1, \"r\": {\"temp\": 20.5}, \"ts\": 1000}\n",
                "{\"id\": \"x\", \"ts\": 1000}\n",
                "not json\n",
                "{\"r\": null, \"id\": 2, \"ts\": \"1970-01-01T00:00:02Z\"}\n",
                "{\"id\": 3}\n",
            ))])
            .unwrap();
        assert_eq!(out.batches.len(), 1);
        let text = pretty_format_batches(&out.batches).unwrap().to_string();
        assert!(text.contains("| 1  | 20.5 | 1970-01-01T00:00:01"), "{text}");
        assert!(text.contains("| 2  |      | 1970-01-01T00:00:02"), "{text}");
        let kinds: Vec<_> = out
            .errors
            .iter()
            .map(|e| (e.kind, e.payload.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (RecordErrorKind::Schema, "{\"id\": \"x\", \"ts\": 1000}"),
                (RecordErrorKind::Malformed, "not json"),
                (RecordErrorKind::Schema, "{\"id\": 3}"),
            ]
        );
        assert!(out.errors[2].reason.contains("'ts'"), "{:?}", out.errors[2]);
        assert_eq!(out.partition_max, vec![(0, 2000)]);
    }

    #[test]
    fn the_reused_decoder_keeps_nothing_from_a_failed_chunk() {
        let d = decoder();
        let ids = |b: &RecordBatch| -> Vec<i64> {
            let id = b.column_by_name("id").unwrap();
            id.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                .values()
                .to_vec()
        };
        assert_eq!(
            ids(&d.decode_fast(b"{\"id\": 1, \"ts\": 5}\n").unwrap()),
            vec![1]
        );
        // Fails in arrow-json's flush, with rows on its tape; then mid-record.
        assert!(
            d.decode_fast(b"{\"id\": 2, \"ts\": 5}\n{\"id\": \"x\", \"ts\": 6}\n")
                .is_err()
        );
        assert_eq!(
            ids(&d.decode_fast(b"{\"id\": 3, \"ts\": 7}\n").unwrap()),
            vec![3]
        );
        assert!(
            d.decode_fast(b"{\"id\": 4, \"ts\": 5}\n{\"id\": 5, \"ts\"")
                .is_err()
        );
        assert_eq!(
            ids(&d
                .decode_fast(b"{\"id\": 6, \"ts\": 7}\n{\"id\": 7, \"ts\": 8}")
                .unwrap()),
            vec![6, 7]
        );
    }

    #[test]
    fn arrays_and_oversized_records() {
        let d = decoder();
        let out = d
            .decode(&[chunk("[{\"id\": 1, \"ts\": 5}, {\"id\": 2, \"ts\": 6}]")])
            .unwrap();
        assert_eq!(out.batches[0].num_rows(), 2);
        let big = format!(
            "{{\"id\": 1, \"ts\": 5, \"pad\": \"{}\"}}\n{{\"id\": 2, \"ts\": 6}}",
            "x".repeat(2000)
        );
        let out = d.decode(&[chunk(&big)]).unwrap();
        assert_eq!(out.batches[0].num_rows(), 1);
        assert_eq!(out.errors[0].kind, RecordErrorKind::Oversized);
    }
}
