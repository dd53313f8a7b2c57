//! Embedded alert tables: DynamoDB's item model kept on local disk, for setups without
//! AWS (written by the `table` sink at the end of the data flow; read by the API's
//! `GET /tables/{name}/items` and, as Arrow batches, by ad hoc SQL).
//!
//! An item is a JSON object. Its partition key attribute (and, when the table has one,
//! its sort key attribute) say which item it is: writing an item with the same key
//! replaces the old one, as DynamoDB's PutItem does, so a replayed write changes
//! nothing. Items of one partition key are ordered by sort key (numbers before strings,
//! numbers by value, strings by bytes: times sort by time as `epoch_ms` numbers, see
//! `timestamp_format` in docs/sql.md).
//!
//! **On disk.** `<data_dir>/tables/<name>.log`: one line per written item, appended
//! and synced before a write returns; opening a table replays it. A crash in the middle
//! of an append leaves a last line without its newline: it is cut off at the next open
//! (that write had not returned, so its rows are written again on replay). When the log
//! holds many more lines than items it is compacted: the live items are written to a
//! temporary file, synced, and renamed over the log, so a reader or a crash sees the
//! old log or the new one, never half of one.
//!
//! One [`Table`] object per file exists in the process (see [`open`]), shared by the
//! sink that writes it and the API that reads it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::arrow::array::RecordBatch;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A key value: DynamoDB keys are numbers or strings.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue {
    Int(i64),
    Float(f64),
    Str(String),
}

impl KeyValue {
    /// The key of an attribute value; `None` for values that cannot be keys (null,
    /// booleans, lists, objects).
    pub fn from_json(v: &Value) -> Option<KeyValue> {
        match v {
            Value::String(s) => Some(KeyValue::Str(s.clone())),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Some(KeyValue::Int(i)),
                None => n.as_f64().map(KeyValue::Float),
            },
            _ => None,
        }
    }

    /// A key given as text (a query parameter): a number when it reads as one.
    pub fn parse(s: &str) -> KeyValue {
        if let Ok(i) = s.parse::<i64>() {
            KeyValue::Int(i)
        } else if let Ok(f) = s.parse::<f64>()
            && f.is_finite()
        {
            KeyValue::Float(f)
        } else {
            KeyValue::Str(s.to_string())
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self {
            KeyValue::Int(i) => Some(*i as f64),
            KeyValue::Float(f) => Some(*f),
            KeyValue::Str(_) => None,
        }
    }
}

impl Eq for KeyValue {}

impl Ord for KeyValue {
    fn cmp(&self, other: &Self) -> Ordering {
        use KeyValue::*;
        match (self, other) {
            (Int(a), Int(b)) => a.cmp(b),
            (Str(a), Str(b)) => a.cmp(b),
            (Str(_), _) => Ordering::Greater,
            (_, Str(_)) => Ordering::Less,
            (a, b) => a
                .as_f64()
                .unwrap_or_default()
                .total_cmp(&b.as_f64().unwrap_or_default()),
        }
    }
}

impl PartialOrd for KeyValue {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Which attributes make an item's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySchema {
    pub partition_key: String,
    pub sort_key: Option<String>,
}

/// A read: one partition (or all), a sort-key range (inclusive), at most `limit` items.
#[derive(Debug, Clone, Default)]
pub struct ItemQuery {
    pub pk: Option<KeyValue>,
    pub sk_from: Option<KeyValue>,
    pub sk_to: Option<KeyValue>,
    pub limit: Option<usize>,
}

/// The items of one table, by partition key then sort key (`Int(0)` when the table has
/// no sort key).
type Items = BTreeMap<KeyValue, BTreeMap<KeyValue, Map<String, Value>>>;

/// One embedded table: its items in memory, its log on disk.
pub struct Table {
    name: String,
    path: PathBuf,
    inner: Mutex<Inner>,
}

struct Inner {
    keys: Option<KeySchema>,
    items: Items,
    count: usize,
    /// Lines in the log, to decide when to compact it.
    log_lines: usize,
    /// `None` until the first write opens the log for appending.
    file: Option<std::fs::File>,
}

/// The first line of a log: the table's key schema.
fn header_line(k: &KeySchema) -> Value {
    serde_json::json!({"partition_key": k.partition_key, "sort_key": k.sort_key})
}

/// Opens (or creates on first write) the table `name` under `data_dir`: the same
/// object for every caller in this process.
pub fn open(data_dir: &Path, name: &str) -> Result<Arc<Table>> {
    check_name(name)?;
    let path = data_dir.join("tables").join(format!("{name}.log"));
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Arc<Table>>>> = OnceLock::new();
    let mut open = OPEN
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| Error::internal("table registry lock poisoned"))?;
    if let Some(t) = open.get(&path) {
        return Ok(Arc::clone(t));
    }
    let table = Arc::new(Table::load(name, path.clone())?);
    open.insert(path, Arc::clone(&table));
    Ok(table)
}

/// Reads the table's log afresh, bypassing the process's shared object: what a
/// restarted server would find on disk (for checks and tools; writes through it are
/// not seen by the shared object).
pub fn read_from_disk(data_dir: &Path, name: &str) -> Result<Table> {
    check_name(name)?;
    Table::load(name, data_dir.join("tables").join(format!("{name}.log")))
}

/// The tables under `data_dir`, by name.
pub fn names(data_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(data_dir.join("tables")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .filter(|n| check_name(n).is_ok())
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Whether the table `name` exists under `data_dir` (was ever written).
pub fn exists(data_dir: &Path, name: &str) -> bool {
    check_name(name).is_ok()
        && data_dir
            .join("tables")
            .join(format!("{name}.log"))
            .is_file()
}

/// Table names become file names: letters, digits, `_`, `-`, `.`, 1 to 255 of them
/// (DynamoDB's rule), not starting with a dot.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::user(format!(
            "invalid table name '{name}': use 1 to 255 letters, digits, '_', '-' or '.', not \
             starting with '.'"
        )))
    }
}

impl Table {
    fn load(name: &str, path: PathBuf) -> Result<Table> {
        let mut inner = Inner {
            keys: None,
            items: BTreeMap::new(),
            count: 0,
            log_lines: 0,
            file: None,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                // Only complete lines count: a torn last line is a write that never
                // returned.
                let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
                for (n, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
                    if line.is_empty() {
                        continue;
                    }
                    let v: Value = serde_json::from_slice(line).map_err(|e| {
                        Error::external(format!(
                            "table log '{}' line {}: {e}; an operator must repair or remove it",
                            path.display(),
                            n + 1
                        ))
                    })?;
                    inner.log_lines += 1;
                    match (&inner.keys, v) {
                        (None, Value::Object(h)) => {
                            let pk = h.get("partition_key").and_then(Value::as_str);
                            let Some(pk) = pk else {
                                return Err(Error::external(format!(
                                    "table log '{}' has no key schema on its first line",
                                    path.display()
                                )));
                            };
                            inner.keys = Some(KeySchema {
                                partition_key: pk.to_string(),
                                sort_key: h
                                    .get("sort_key")
                                    .and_then(Value::as_str)
                                    .map(str::to_string),
                            });
                        }
                        (Some(_), Value::Object(item)) => {
                            inner.put(item);
                        }
                        _ => {
                            return Err(Error::external(format!(
                                "table log '{}' line {} is not an object",
                                path.display(),
                                n + 1
                            )));
                        }
                    }
                }
                if complete < bytes.len() {
                    let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                    f.set_len(complete as u64)?;
                    f.sync_all()?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::external(format!(
                    "cannot read table log '{}': {e}",
                    path.display()
                )));
            }
        }
        Ok(Table {
            name: name.to_string(),
            path,
            inner: Mutex::new(inner),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| Error::internal("table lock poisoned"))
    }

    /// The key schema, once the table has one (from its first writer).
    pub fn keys(&self) -> Result<Option<KeySchema>> {
        Ok(self.lock()?.keys.clone())
    }

    /// Binds the table to a key schema: the first writer sets it; a later writer with
    /// a different one is refused (its items would be keyed differently).
    pub fn bind(&self, keys: &KeySchema) -> Result<()> {
        let mut inner = self.lock()?;
        match &inner.keys {
            Some(k) if k == keys => Ok(()),
            Some(k) => Err(Error::user(format!(
                "table '{}' is keyed by partition key '{}'{}; this sink says '{}'{}",
                self.name,
                k.partition_key,
                k.sort_key
                    .as_ref()
                    .map(|s| format!(" and sort key '{s}'"))
                    .unwrap_or_default(),
                keys.partition_key,
                keys.sort_key
                    .as_ref()
                    .map(|s| format!(" and sort key '{s}'"))
                    .unwrap_or_default(),
            ))),
            None => {
                inner.keys = Some(keys.clone());
                let mut line = serde_json::to_vec(&header_line(keys))
                    .map_err(|e| Error::internal(e.to_string()))?;
                line.push(b'\n');
                self.append(&mut inner, &line)?;
                inner.log_lines += 1;
                Ok(())
            }
        }
    }

    /// Writes items (each replaces the item with its key) and returns once they are
    /// on disk. Items without a usable key must have been filtered out by the caller.
    pub fn put_items(&self, items: Vec<Map<String, Value>>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock()?;
        let mut buf = Vec::with_capacity(items.len() * 128);
        for item in &items {
            serde_json::to_writer(&mut buf, item).map_err(|e| Error::internal(e.to_string()))?;
            buf.push(b'\n');
        }
        self.append(&mut inner, &buf)?;
        inner.log_lines += items.len();
        for item in items {
            inner.put(item);
        }
        // Compact when at least half the log is overwritten items.
        if inner.log_lines > 2 * inner.count + 1024 {
            self.compact(&mut inner)?;
        }
        Ok(())
    }

    fn append(&self, inner: &mut Inner, bytes: &[u8]) -> Result<()> {
        if inner.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| {
                    Error::external(format!(
                        "cannot open table log '{}': {e}",
                        self.path.display()
                    ))
                })?;
            inner.file = Some(f);
        }
        let f = inner
            .file
            .as_mut()
            .ok_or_else(|| Error::internal("no log"))?;
        let before = f.metadata()?.len();
        let written = f.write_all(bytes).and_then(|_| f.sync_data());
        if let Err(e) = written {
            // Cut a torn line off now, so the next append does not land after it.
            let _ = f.set_len(before);
            inner.file = None;
            return Err(Error::external(format!(
                "cannot write table log '{}': {e}",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// Rewrites the log with only the live items.
    fn compact(&self, inner: &mut Inner) -> Result<()> {
        let Some(keys) = &inner.keys else {
            return Ok(());
        };
        let mut buf =
            serde_json::to_vec(&header_line(keys)).map_err(|e| Error::internal(e.to_string()))?;
        buf.push(b'\n');
        for item in inner.items.values().flat_map(|p| p.values()) {
            serde_json::to_writer(&mut buf, item).map_err(|e| Error::internal(e.to_string()))?;
            buf.push(b'\n');
        }
        crate::sources::kinesis::write_atomically(&self.path, &buf).map_err(|e| {
            Error::external(format!(
                "cannot compact table log '{}': {e}",
                self.path.display()
            ))
        })?;
        inner.file = None;
        inner.log_lines = inner.count + 1;
        Ok(())
    }

    /// Items matching `q`, in key order.
    pub fn query(&self, q: &ItemQuery) -> Result<Vec<Map<String, Value>>> {
        let inner = self.lock()?;
        let limit = q.limit.unwrap_or(usize::MAX);
        let in_range = |sk: &KeyValue| {
            q.sk_from.as_ref().is_none_or(|f| sk >= f) && q.sk_to.as_ref().is_none_or(|t| sk <= t)
        };
        let partitions: Box<dyn Iterator<Item = &BTreeMap<KeyValue, Map<String, Value>>> + '_> =
            match &q.pk {
                Some(pk) => Box::new(inner.items.get(pk).into_iter().chain(
                    // `pk=7` also finds the string key "7" (query strings carry no type).
                    match pk {
                        KeyValue::Int(_) | KeyValue::Float(_) => {
                            inner.items.get(&KeyValue::Str(pk_text(pk)))
                        }
                        KeyValue::Str(_) => None,
                    },
                )),
                None => Box::new(inner.items.values()),
            };
        Ok(partitions
            .flat_map(|p| p.iter())
            .filter(|(sk, _)| in_range(sk))
            .map(|(_, item)| item.clone())
            .take(limit)
            .collect())
    }

    /// How many items the table holds.
    pub fn len(&self) -> Result<usize> {
        Ok(self.lock()?.count)
    }

    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Every item as Arrow record batches, one column per attribute (the union of
    /// all items' attributes, types inferred from the values as arrow-json does;
    /// missing attributes are null). For registering the table with ad hoc SQL.
    pub fn to_record_batches(&self) -> Result<Vec<RecordBatch>> {
        let items = self.query(&ItemQuery::default())?;
        items_to_batches(&items)
    }
}

fn pk_text(k: &KeyValue) -> String {
    match k {
        KeyValue::Int(i) => i.to_string(),
        KeyValue::Float(f) => f.to_string(),
        KeyValue::Str(s) => s.clone(),
    }
}

impl Inner {
    /// Puts one item in memory, replacing the one with its key. Items whose key is
    /// missing are ignored (the writer checks keys before logging).
    fn put(&mut self, item: Map<String, Value>) {
        let Some(keys) = &self.keys else {
            return;
        };
        let Some(pk) = item.get(&keys.partition_key).and_then(KeyValue::from_json) else {
            return;
        };
        let sk = match &keys.sort_key {
            Some(s) => match item.get(s).and_then(KeyValue::from_json) {
                Some(k) => k,
                None => return,
            },
            None => KeyValue::Int(0),
        };
        if self.items.entry(pk).or_default().insert(sk, item).is_none() {
            self.count += 1;
        }
    }
}

/// JSON objects as Arrow batches (schema inferred over all of them).
pub fn items_to_batches(items: &[Map<String, Value>]) -> Result<Vec<RecordBatch>> {
    use arrow_json::reader::{ReaderBuilder, infer_json_schema_from_iterator};
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let schema = infer_json_schema_from_iterator(
        items
            .iter()
            .map(|m| Ok::<_, datafusion::arrow::error::ArrowError>(Value::Object(m.clone()))),
    )?;
    let mut decoder = ReaderBuilder::new(Arc::new(schema))
        .with_batch_size(8192)
        .build_decoder()?;
    let mut out = Vec::new();
    for chunk in items.chunks(8192) {
        decoder.serialize(chunk)?;
        if let Some(b) = decoder.flush()? {
            out.push(b);
        }
    }
    Ok(out)
}
