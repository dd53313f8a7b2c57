//! Result rows as key-value items (last stage of the data flow): the options and the
//! row → item mapping shared by the `dynamodb` sink and the embedded `table` sink, so
//! the same query writes the same items to either.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `table` | required | the table's name |
//! | `partition_key` | required | the column whose value is the item's partition key (string or number) |
//! | `sort_key` | none | the column whose value is the item's sort key |
//! | `attributes` | every column | columns to store, comma-separated (`col` or `col AS name`); the key columns are always stored |
//! | `ttl_attribute` + `ttl` | none | an attribute holding the item's expiry, epoch seconds = write time + `ttl` (DynamoDB's TTL format) |
//! | `timestamp_format` | `rfc3339` | times as RFC 3339 text, or `epoch_ms` numbers |
//!
//! An item is the row as [`crate::render`] writes it as JSON (nulls left out).
//!
//! A row whose key column is null (or not a string or number) cannot be an item: it
//! is skipped and counted in the sink's health, like a Redis command missing a value.

use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::render::{TimestampFormat, json_objects};
use crate::sql::Options;
use crate::tables::{KeySchema, KeyValue, check_name};

#[derive(Debug, Clone)]
pub struct ItemSpec {
    pub table: String,
    pub keys: KeySchema,
    /// `(column, attribute)` pairs; `None`: every column under its own name.
    pub attributes: Option<Vec<(String, String)>>,
    pub ttl: Option<(String, Duration)>,
    pub timestamps: TimestampFormat,
}

/// Items made from one batch, and the rows that could not be items.
#[derive(Debug, Default)]
pub struct Items {
    pub items: Vec<Map<String, Value>>,
    pub skipped: u64,
    pub last_skip: Option<String>,
}

impl ItemSpec {
    /// Takes `table`, `partition_key`, `sort_key`, `attributes`, `ttl_attribute`, `ttl`,
    /// `timestamp_format`.
    pub fn from_options(o: &mut Options, connector: &str) -> Result<Self> {
        let at = o.position;
        let need = |o: &mut Options, key: &'static str, example: &str| {
            o.take(key).ok_or_else(|| {
                Error::user_at(
                    format!("the {connector} sink needs option '{key}' ({example})"),
                    at,
                )
            })
        };
        let table = need(o, "table", "the table's name, e.g. 'warning_events'")?;
        check_name(table.value.trim()).map_err(|e| e.or_at(table.position))?;
        let pk = need(
            o,
            "partition_key",
            "the column of the item's partition key, e.g. 'deviceId'",
        )?;
        let sk = o.take_string("sort_key").map(|s| s.trim().to_string());
        let attributes = match o.take("attributes") {
            None => None,
            Some(a) => {
                let mut list = Vec::new();
                for part in a.value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                    let mut words = part.split_whitespace();
                    let col = words.next().unwrap_or_default().to_string();
                    let name = match (words.next(), words.next(), words.next()) {
                        (None, _, _) => col.clone(),
                        (Some(k), Some(n), None) if k.eq_ignore_ascii_case("as") => n.to_string(),
                        _ => {
                            return Err(Error::user_at(
                                format!(
                                    "option 'attributes': '{part}' must be 'column' or 'column AS name'"
                                ),
                                a.position,
                            ));
                        }
                    };
                    list.push((col, name));
                }
                if list.is_empty() {
                    return Err(Error::user_at(
                        "option 'attributes' names no column",
                        a.position,
                    ));
                }
                Some(list)
            }
        };
        let ttl_attr = o.take("ttl_attribute");
        let ttl = o.take_duration("ttl")?;
        let ttl = match (ttl_attr, ttl) {
            (Some(a), Some(d)) => Some((a.value.trim().to_string(), d)),
            (None, None) => None,
            (Some(a), None) => {
                return Err(Error::user_at(
                    "option 'ttl_attribute' needs option 'ttl' (how long items live, e.g. '7d')",
                    a.position,
                ));
            }
            (None, Some(_)) => {
                return Err(Error::user_at(
                    "option 'ttl' needs option 'ttl_attribute' (the attribute DynamoDB's TTL reads)",
                    at,
                ));
            }
        };
        let timestamps = super::take_timestamp_format(o)?;
        Ok(ItemSpec {
            table: table.value.trim().to_string(),
            keys: KeySchema {
                partition_key: pk.value.trim().to_string(),
                sort_key: sk,
            },
            attributes,
            ttl,
            timestamps,
        })
    }

    /// Checks that the key (and listed) columns exist in a query's output.
    pub fn check_schema(&self, batch: &RecordBatch) -> Result<()> {
        let schema = batch.schema();
        let has = |c: &str| schema.column_with_name(c).is_some();
        let mut needed: Vec<&str> = vec![&self.keys.partition_key];
        needed.extend(self.keys.sort_key.as_deref());
        if let Some(a) = &self.attributes {
            needed.extend(a.iter().map(|(c, _)| c.as_str()));
        }
        for c in needed {
            if !has(c) {
                return Err(Error::user(format!(
                    "table '{}': the query has no column '{c}' (it has {})",
                    self.table,
                    schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The batch's rows as items (as [`crate::render`] writes rows, like every other
    /// sink). Within a batch a later row wins over an earlier one with the same key,
    /// as if each were written in turn.
    pub fn items(&self, batch: &RecordBatch) -> Result<Items> {
        self.check_schema(batch)?;
        let now_s = (crate::clock::now_ms() / 1000).max(0) as u64;
        let mut out = Items::default();
        for row in json_objects(batch, self.timestamps)? {
            let key_ok = |col: &str| row.get(col).and_then(KeyValue::from_json).is_some();
            let missing = std::iter::once(&self.keys.partition_key)
                .chain(self.keys.sort_key.as_ref())
                .find(|c| !key_ok(c.as_str()));
            if let Some(c) = missing {
                out.skipped += 1;
                out.last_skip = Some(format!(
                    "a row's key column '{c}' is null or not a string or number"
                ));
                continue;
            }
            let mut item = match &self.attributes {
                None => row,
                Some(list) => {
                    let mut m = Map::new();
                    for k in
                        std::iter::once(&self.keys.partition_key).chain(self.keys.sort_key.as_ref())
                    {
                        if let Some(v) = row.get(k) {
                            m.insert(k.clone(), v.clone());
                        }
                    }
                    for (col, name) in list {
                        if let Some(v) = row.get(col) {
                            m.insert(name.clone(), v.clone());
                        }
                    }
                    m
                }
            };
            if let Some((attr, d)) = &self.ttl {
                item.insert(attr.clone(), Value::from(now_s + d.as_secs()));
            }
            out.items.push(item);
        }
        dedupe_last(&mut out.items, &self.keys);
        Ok(out)
    }
}

/// Keeps the last item of each key, in order of those last occurrences (DynamoDB
/// refuses a batch with two writes of one key).
pub fn dedupe_last(items: &mut Vec<Map<String, Value>>, keys: &KeySchema) {
    let key = |m: &Map<String, Value>| {
        (
            m.get(&keys.partition_key).and_then(KeyValue::from_json),
            keys.sort_key
                .as_ref()
                .and_then(|s| m.get(s))
                .and_then(KeyValue::from_json),
        )
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut kept: Vec<Map<String, Value>> = Vec::with_capacity(items.len());
    for item in items.drain(..).rev() {
        if seen.insert(key(&item)) {
            kept.push(item);
        }
    }
    kept.reverse();
    *items = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn later_rows_win() {
        let keys = KeySchema {
            partition_key: "d".into(),
            sort_key: None,
        };
        let mut items: Vec<Map<String, Value>> = [
            json!({"d": "a", "t": 1}),
            json!({"d": "b", "t": 2}),
            json!({"d": "a", "t": 3}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
        dedupe_last(&mut items, &keys);
        assert_eq!(
            items,
            vec![
                json!({"d": "b", "t": 2}).as_object().unwrap().clone(),
                json!({"d": "a", "t": 3}).as_object().unwrap().clone(),
            ]
        );
    }
}
