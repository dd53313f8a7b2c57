//! Arrow values as text and rows as JSON, one way everywhere (below sinks, api, runtime
//! and adhoc, and used by all of them: every sink that writes text, the WebSocket
//! rows, `sluice run`'s printed results, error-output payloads, ad hoc JSON and CSV).
//!
//! It imports no other layer: it knows Arrow arrays and the [`TimestampFormat`] a
//! sink asks for, nothing about queries, connectors or the API.
//!
//! **The rules** (docs/sql.md, "How values are written", says the same to users):
//!
//! | type | JSON | text (a Redis value, a CSV field, a topic level) |
//! |---|---|---|
//! | timestamp | `"2026-01-01T10:15:00.250Z"`: RFC 3339 in UTC, the fraction only when not zero, 3, 6 or 9 digits as the value needs; with `epoch_ms`, the number of milliseconds | the same, unquoted |
//! | timestamp with a time zone | converted to UTC, as above | |
//! | float | as JavaScript prints it: `88`, `21.5`, `1e+21`; NaN and ±infinity are `null` | `NaN`, `Infinity`, `-Infinity` |
//! | integer, decimal | a number (`3`, `12.50`) | the same |
//! | boolean | `true` / `false` | the same |
//! | string | a JSON string | as it is |
//! | date | `"2026-01-01"` | the same, unquoted |
//! | binary | base64 (standard alphabet, padded) | the same |
//! | struct, map | an object (null members left out) | its JSON |
//! | list | an array (null items are `null`) | its JSON |
//! | other (time of day, durations, intervals…) | Arrow's display, as a string | the same, unquoted |
//!
//! A row is a JSON object of its columns in order, nulls (and NaN) left out.
//!
//! Timestamps are formatted here rather than by chrono so that every value has a
//! form, however far from today (years beyond 9999 are `+10000-…`, as chrono and
//! ISO 8601's expanded years write them): a sink never drops a value it cannot print.

use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal32Type, Decimal64Type, Decimal128Type, Decimal256Type,
    Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// How a timestamp is written: the `timestamp_format` option of sinks that write text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampFormat {
    /// `2026-01-01T10:15:00.250Z`.
    #[default]
    Rfc3339,
    /// Milliseconds since the epoch (`1767262500250`), as the seeds' Lambdas stored
    /// `Date.now()`.
    EpochMs,
}

impl TimestampFormat {
    /// The option's name, for sinks taking it.
    pub const OPTION: &'static str = "timestamp_format";

    /// Reads the option's value; the error is the user's, to be given a position.
    pub fn parse(value: &str) -> std::result::Result<Self, String> {
        match value.trim().to_ascii_lowercase().as_str() {
            "rfc3339" => Ok(TimestampFormat::Rfc3339),
            "epoch_ms" => Ok(TimestampFormat::EpochMs),
            other => Err(format!(
                "option 'timestamp_format' must be 'rfc3339' or 'epoch_ms', got '{other}'"
            )),
        }
    }
}

/// One column made ready to render, row by row (built once per batch).
pub struct Values {
    array: ArrayRef,
    nulls: Option<NullBuffer>,
    kind: Kind,
    ts: TimestampFormat,
}

enum Kind {
    Null,
    Bool,
    Int,
    Float,
    Decimal,
    Str,
    Binary,
    Timestamp(TimeUnit),
    Date32,
    Date64,
    /// Fields as `"name":` (already JSON-escaped) and their values.
    Struct(Vec<(String, Values)>),
    /// List, LargeList, FixedSizeList: the child values.
    List(Box<Values>),
    Map {
        keys: Box<Values>,
        values: Box<Values>,
    },
    /// Anything else: Arrow's display of each row, made at once.
    Display(Vec<Option<String>>),
}

impl Values {
    /// Prepares `array` to be rendered with timestamps as `ts` says.
    pub fn new(array: &ArrayRef, ts: TimestampFormat) -> Result<Values> {
        let dt = array.data_type();
        // Dictionaries and run-end encodings render as the values they stand for.
        let plain = match dt {
            DataType::Dictionary(_, value) => Some(value.as_ref().clone()),
            DataType::RunEndEncoded(_, value) => Some(value.data_type().clone()),
            _ => None,
        };
        if let Some(plain) = plain {
            return Values::new(&cast(array.as_ref(), &plain)?, ts);
        }
        let kind = match dt {
            DataType::Null => Kind::Null,
            DataType::Boolean => Kind::Bool,
            d if d.is_integer() => Kind::Int,
            DataType::Float16 | DataType::Float32 | DataType::Float64 => Kind::Float,
            DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..) => Kind::Decimal,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Str,
            DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView
            | DataType::FixedSizeBinary(_) => Kind::Binary,
            DataType::Timestamp(unit, _) => Kind::Timestamp(*unit),
            DataType::Date32 => Kind::Date32,
            DataType::Date64 => Kind::Date64,
            DataType::Struct(fields) => {
                let s = array.as_struct();
                let mut members = Vec::with_capacity(fields.len());
                for (f, child) in fields.iter().zip(s.columns()) {
                    let mut key = String::new();
                    json_string(f.name(), &mut key);
                    key.push(':');
                    members.push((key, Values::new(child, ts)?));
                }
                Kind::Struct(members)
            }
            DataType::List(_) => {
                Kind::List(Box::new(Values::new(array.as_list::<i32>().values(), ts)?))
            }
            DataType::LargeList(_) => {
                Kind::List(Box::new(Values::new(array.as_list::<i64>().values(), ts)?))
            }
            DataType::FixedSizeList(..) => Kind::List(Box::new(Values::new(
                array.as_fixed_size_list().values(),
                ts,
            )?)),
            DataType::Map(..) => {
                let m = array.as_map();
                Kind::Map {
                    keys: Box::new(Values::new(m.keys(), ts)?),
                    values: Box::new(Values::new(m.values(), ts)?),
                }
            }
            _ => {
                let f = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
                let nulls = array.logical_nulls();
                Kind::Display(
                    (0..array.len())
                        .map(|i| {
                            nulls
                                .as_ref()
                                .is_none_or(|n| n.is_valid(i))
                                .then(|| f.value(i).to_string())
                        })
                        .collect(),
                )
            }
        };
        Ok(Values {
            nulls: array.logical_nulls(),
            array: array.clone(),
            kind,
            ts,
        })
    }

    /// True when the value at `row` is null.
    pub fn is_null(&self, row: usize) -> bool {
        matches!(self.kind, Kind::Null) || self.nulls.as_ref().is_some_and(|n| n.is_null(row))
    }

    /// True when the value at `row` is a float that is not a number.
    pub fn is_nan(&self, row: usize) -> bool {
        matches!(self.kind, Kind::Float) && !self.is_null(row) && self.float(row).is_nan()
    }

    /// True when the value is `null` in JSON: a null, or a float NaN or infinite
    /// (JSON has no such numbers). Objects leave such members out.
    pub fn json_null(&self, row: usize) -> bool {
        self.is_null(row) || (matches!(self.kind, Kind::Float) && !self.float(row).is_finite())
    }

    /// Appends the value at `row` as JSON (`null` when [`Values::json_null`]).
    pub fn write_json(&self, row: usize, out: &mut String) {
        if self.json_null(row) {
            out.push_str("null");
            return;
        }
        match &self.kind {
            Kind::Str => json_string(self.str(row), out),
            Kind::Timestamp(_) if self.ts == TimestampFormat::EpochMs => {
                self.write_text(row, out);
            }
            // Plain ASCII (digits, `-:.TZ+`, the base64 alphabet): quoted as it is.
            Kind::Binary | Kind::Timestamp(_) | Kind::Date32 | Kind::Date64 => {
                out.push('"');
                self.write_text(row, out);
                out.push('"');
            }
            Kind::Display(text) => json_string(text[row].as_deref().unwrap_or_default(), out),
            Kind::Struct(members) => write_object(members, row, out),
            Kind::List(items) => {
                out.push('[');
                for (n, i) in self.list_range(row).enumerate() {
                    if n > 0 {
                        out.push(',');
                    }
                    items.write_json(i, out);
                }
                out.push(']');
            }
            Kind::Map { keys, values } => {
                out.push('{');
                let mut first = true;
                let mut key = String::new();
                for i in self.list_range(row) {
                    if values.json_null(i) {
                        continue;
                    }
                    if !first {
                        out.push(',');
                    }
                    first = false;
                    key.clear();
                    keys.write_text(i, &mut key);
                    json_string(&key, out);
                    out.push(':');
                    values.write_json(i, out);
                }
                out.push('}');
            }
            // Numbers, booleans and epoch-ms timestamps: their text is their JSON.
            _ => {
                self.write_text(row, out);
            }
        }
    }

    /// Appends the value at `row` as text; false (nothing written) when it is null.
    pub fn write_text(&self, row: usize, out: &mut String) -> bool {
        if self.is_null(row) {
            return false;
        }
        let a = self.array.as_ref();
        match &self.kind {
            Kind::Null => return false,
            Kind::Bool => out.push_str(if a.as_boolean().value(row) {
                "true"
            } else {
                "false"
            }),
            Kind::Int => write_int(a, row, out),
            Kind::Float => match a.data_type() {
                DataType::Float32 => js_float(a.as_primitive::<Float32Type>().value(row), out),
                DataType::Float16 => {
                    js_float(f32::from(a.as_primitive::<Float16Type>().value(row)), out)
                }
                _ => js_float(a.as_primitive::<Float64Type>().value(row), out),
            },
            Kind::Decimal => out.push_str(&match a.data_type() {
                DataType::Decimal32(..) => a.as_primitive::<Decimal32Type>().value_as_string(row),
                DataType::Decimal64(..) => a.as_primitive::<Decimal64Type>().value_as_string(row),
                DataType::Decimal128(..) => a.as_primitive::<Decimal128Type>().value_as_string(row),
                _ => a.as_primitive::<Decimal256Type>().value_as_string(row),
            }),
            Kind::Str => out.push_str(self.str(row)),
            Kind::Binary => {
                let bytes: &[u8] = match a.data_type() {
                    DataType::Binary => a.as_binary::<i32>().value(row),
                    DataType::LargeBinary => a.as_binary::<i64>().value(row),
                    DataType::BinaryView => a.as_binary_view().value(row),
                    _ => a.as_fixed_size_binary().value(row),
                };
                BASE64.encode_string(bytes, out);
            }
            Kind::Timestamp(unit) => {
                let v = match unit {
                    TimeUnit::Second => a.as_primitive::<TimestampSecondType>().value(row),
                    TimeUnit::Millisecond => {
                        a.as_primitive::<TimestampMillisecondType>().value(row)
                    }
                    TimeUnit::Microsecond => {
                        a.as_primitive::<TimestampMicrosecondType>().value(row)
                    }
                    TimeUnit::Nanosecond => a.as_primitive::<TimestampNanosecondType>().value(row),
                };
                write_timestamp(v, *unit, self.ts, out);
            }
            Kind::Date32 => {
                let days = i64::from(a.as_primitive::<Date32Type>().value(row));
                write_date(days, out);
            }
            Kind::Date64 => {
                let ms = a.as_primitive::<Date64Type>().value(row);
                write_date(ms.div_euclid(MS_PER_DAY), out);
            }
            Kind::Display(text) => out.push_str(text[row].as_deref().unwrap_or_default()),
            Kind::Struct(_) | Kind::List(_) | Kind::Map { .. } => self.write_json(row, out),
        }
        true
    }

    fn float(&self, row: usize) -> f64 {
        let a = self.array.as_ref();
        match a.data_type() {
            DataType::Float16 => a.as_primitive::<Float16Type>().value(row).to_f64(),
            DataType::Float32 => f64::from(a.as_primitive::<Float32Type>().value(row)),
            _ => a.as_primitive::<Float64Type>().value(row),
        }
    }

    fn str(&self, row: usize) -> &str {
        let a = self.array.as_ref();
        match a.data_type() {
            DataType::LargeUtf8 => a.as_string::<i64>().value(row),
            DataType::Utf8View => a.as_string_view().value(row),
            _ => a.as_string::<i32>().value(row),
        }
    }

    /// The child rows of a list or map row.
    fn list_range(&self, row: usize) -> std::ops::Range<usize> {
        let a = self.array.as_ref();
        match a.data_type() {
            DataType::List(_) => {
                let o = a.as_list::<i32>().value_offsets();
                o[row] as usize..o[row + 1] as usize
            }
            DataType::LargeList(_) => {
                let o = a.as_list::<i64>().value_offsets();
                o[row] as usize..o[row + 1] as usize
            }
            DataType::FixedSizeList(_, n) => {
                let l = a.as_fixed_size_list();
                let start = l.value_offset(row) as usize;
                start..start + *n as usize
            }
            DataType::Map(..) => {
                let o = a.as_map().value_offsets();
                o[row] as usize..o[row + 1] as usize
            }
            _ => 0..0,
        }
    }
}

/// A batch made ready to render as JSON objects, one per row.
pub struct Rows {
    /// Each column as `"name":` (JSON-escaped) and its values.
    columns: Vec<(String, Values)>,
}

impl Rows {
    pub fn new(batch: &RecordBatch, ts: TimestampFormat) -> Result<Rows> {
        let mut columns = Vec::with_capacity(batch.num_columns());
        for (f, array) in batch.schema().fields().iter().zip(batch.columns()) {
            let mut key = String::new();
            json_string(f.name(), &mut key);
            key.push(':');
            columns.push((key, Values::new(array, ts)?));
        }
        Ok(Rows { columns })
    }

    /// Appends row `row` as a JSON object, its null (and NaN) columns left out.
    pub fn write(&self, row: usize, out: &mut String) {
        write_object(&self.columns, row, out);
    }
}

/// Appends the members (`"name":` and values) of one row as a JSON object, leaving
/// out those that are `null` in JSON: a row's columns, a struct's fields.
fn write_object(members: &[(String, Values)], row: usize, out: &mut String) {
    out.push('{');
    let mut first = true;
    for (key, v) in members {
        if v.json_null(row) {
            continue;
        }
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(key);
        v.write_json(row, out);
    }
    out.push('}');
}

/// Appends the batch as JSON lines: one object per row, each ending in `\n`.
pub fn json_lines(batch: &RecordBatch, ts: TimestampFormat, out: &mut Vec<u8>) -> Result<()> {
    let rows = Rows::new(batch, ts)?;
    let mut s = String::with_capacity(batch.num_rows() * 64);
    for row in 0..batch.num_rows() {
        rows.write(row, &mut s);
        s.push('\n');
    }
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Appends the batch as one JSON array of row objects (`[]` when it has no rows).
pub fn json_array(batch: &RecordBatch, ts: TimestampFormat, out: &mut Vec<u8>) -> Result<()> {
    let rows = Rows::new(batch, ts)?;
    let mut s = String::with_capacity(2 + batch.num_rows() * 64);
    s.push('[');
    for row in 0..batch.num_rows() {
        if row > 0 {
            s.push(',');
        }
        rows.write(row, &mut s);
    }
    s.push(']');
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// The batch's rows as JSON objects (for sinks that handle rows as maps: the item
/// tables). Numbers pass through `serde_json`, so a decimal of more than about 17
/// significant digits is rounded to the nearest double there.
pub fn json_objects(batch: &RecordBatch, ts: TimestampFormat) -> Result<Vec<Map<String, Value>>> {
    let rows = Rows::new(batch, ts)?;
    let mut s = String::new();
    (0..batch.num_rows())
        .map(|row| {
            s.clear();
            rows.write(row, &mut s);
            match serde_json::from_str(&s) {
                Ok(Value::Object(m)) => Ok(m),
                Ok(_) => Err(Error::internal("a row did not render as a JSON object")),
                Err(e) => Err(Error::internal(format!("a row's JSON does not parse: {e}"))),
            }
        })
        .collect()
}

/// One row as a JSON object, with RFC 3339 timestamps (error-output payloads).
pub fn row_json(batch: &RecordBatch, row: usize) -> Result<String> {
    let mut s = String::new();
    Rows::new(&batch.slice(row, 1), TimestampFormat::Rfc3339)?.write(0, &mut s);
    Ok(s)
}

/// Every value of a column as text (`None` for nulls).
pub fn text_column(array: &ArrayRef, ts: TimestampFormat) -> Result<Vec<Option<String>>> {
    let v = Values::new(array, ts)?;
    let mut buf = String::new();
    Ok((0..array.len())
        .map(|row| {
            buf.clear();
            v.write_text(row, &mut buf).then(|| buf.clone())
        })
        .collect())
}

/// Epoch milliseconds as RFC 3339 text (`2026-01-01T10:15:00.250Z`), for messages and
/// API fields such as a watermark.
pub fn timestamp_ms(ms: i64) -> String {
    let mut s = String::new();
    write_timestamp(ms, TimeUnit::Millisecond, TimestampFormat::Rfc3339, &mut s);
    s
}

const MS_PER_DAY: i64 = 86_400_000;
const SECS_PER_DAY: i64 = 86_400;

/// Appends a timestamp of `unit`s since the epoch.
fn write_timestamp(v: i64, unit: TimeUnit, ts: TimestampFormat, out: &mut String) {
    let (secs, nanos) = match unit {
        TimeUnit::Second => (v, 0),
        TimeUnit::Millisecond => (v.div_euclid(1_000), v.rem_euclid(1_000) * 1_000_000),
        TimeUnit::Microsecond => (v.div_euclid(1_000_000), v.rem_euclid(1_000_000) * 1_000),
        TimeUnit::Nanosecond => (v.div_euclid(1_000_000_000), v.rem_euclid(1_000_000_000)),
    };
    if ts == TimestampFormat::EpochMs {
        // Floored to the millisecond, like the seconds above.
        let ms = match unit {
            TimeUnit::Second => v.saturating_mul(1_000),
            TimeUnit::Millisecond => v,
            TimeUnit::Microsecond => v.div_euclid(1_000),
            TimeUnit::Nanosecond => v.div_euclid(1_000_000),
        };
        let _ = write!(out, "{ms}");
        return;
    }
    let days = secs.div_euclid(SECS_PER_DAY);
    let s = secs.rem_euclid(SECS_PER_DAY);
    write_date(days, out);
    let _ = write!(out, "T{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    if nanos != 0 {
        // As many digits as the value needs: milli-, micro- or nanoseconds.
        let _ = if nanos % 1_000_000 == 0 {
            write!(out, ".{:03}", nanos / 1_000_000)
        } else if nanos % 1_000 == 0 {
            write!(out, ".{:06}", nanos / 1_000)
        } else {
            write!(out, ".{nanos:09}")
        };
    }
    out.push('Z');
}

/// Appends the date `days` after 1970-01-01 as `YYYY-MM-DD` (proleptic Gregorian;
/// years outside 0–9999 signed, as ISO 8601's expanded form).
fn write_date(days: i64, out: &mut String) {
    // Howard Hinnant's days-to-civil algorithm, in eras of 400 years from 0000-03-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = match year {
        0..=9999 => write!(out, "{year:04}-{month:02}-{day:02}"),
        y if y < 0 => write!(out, "-{:04}-{month:02}-{day:02}", -y),
        y => write!(out, "+{y}-{month:02}-{day:02}"),
    };
}

fn write_int(a: &dyn Array, row: usize, out: &mut String) {
    let _ = match a.data_type() {
        DataType::Int8 => write!(out, "{}", a.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => write!(out, "{}", a.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => write!(out, "{}", a.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => write!(out, "{}", a.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => write!(out, "{}", a.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => write!(out, "{}", a.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => write!(out, "{}", a.as_primitive::<UInt32Type>().value(row)),
        _ => write!(out, "{}", a.as_primitive::<UInt64Type>().value(row)),
    };
}

/// A float as JavaScript's `Number.prototype.toString` writes it: the shortest digits
/// that read back as the same value (of its own width: an f32 keeps its own shortest
/// form, 0.1f32 is `0.1`), plain from 1e-6 up to 1e21, else `d.ddde±x`; whole numbers
/// without a fraction (`88`), NaN and infinities by name.
fn js_float<F: Into<f64> + Copy + std::fmt::LowerExp>(v: F, out: &mut String) {
    let x: f64 = v.into();
    if x.is_nan() {
        out.push_str("NaN");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    if x == 0.0 {
        // JavaScript prints -0 as 0 too.
        out.push('0');
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `-1.2345e-7`.
    let mut sci = StackText::default();
    let _ = write!(sci, "{v:e}");
    let text = sci.as_str();
    let (negative, text) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (mantissa, exponent) = text.split_once('e').unwrap_or((text, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let mut digits = [0u8; 24];
    let mut k = 0;
    for b in mantissa.bytes().filter(u8::is_ascii_digit) {
        if k < digits.len() {
            digits[k] = b;
            k += 1;
        }
    }
    let digits = std::str::from_utf8(&digits[..k]).unwrap_or("0");
    let k = k as i32;
    // The value is 0.digits × 10^n.
    let n = exponent + 1;
    if negative {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = n - 1;
        let _ = write!(out, "e{}{}", if e < 0 { '-' } else { '+' }, e.abs());
    }
}

/// A few bytes of formatted text on the stack (a float's `{:e}` form).
#[derive(Default)]
struct StackText {
    /// `-1.2345678901234567e-308` is 24 bytes, the longest an f64 needs.
    bytes: [u8; 32],
    len: usize,
}

impl StackText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.bytes.len() {
            return Err(std::fmt::Error);
        }
        self.bytes[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Appends `s` as a JSON string.
pub fn json_string(s: &str, out: &mut String) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        BinaryArray, BooleanArray, Date32Array, Date64Array, Decimal128Array, DictionaryArray,
        Float32Array, Float64Array, Int64Array, ListArray, MapBuilder, StringArray, StringBuilder,
        StructArray, TimestampMicrosecondArray, TimestampMillisecondArray,
        TimestampNanosecondArray, TimestampSecondArray, UInt64Array,
    };
    use datafusion::arrow::datatypes::{Field, Schema};

    use super::*;

    fn texts(array: ArrayRef, ts: TimestampFormat) -> Vec<Option<String>> {
        text_column(&array, ts).unwrap()
    }

    fn jsons(array: ArrayRef, ts: TimestampFormat) -> Vec<String> {
        let v = Values::new(&array, ts).unwrap();
        (0..array.len())
            .map(|i| {
                let mut s = String::new();
                v.write_json(i, &mut s);
                s
            })
            .collect()
    }

    const RFC: TimestampFormat = TimestampFormat::Rfc3339;
    const MS: TimestampFormat = TimestampFormat::EpochMs;

    /// Floats as JavaScript prints them: the same as text and as JSON.
    const FLOATS: [&str; 10] = [
        "88",
        "21.5",
        "0.1",
        "-3.25",
        "1e+21",
        "100000000000000000000",
        "1.5e-7",
        "0.000001",
        "0",
        "123456789012345670000",
    ];

    /// The rules of the module's table, value by value: (array, text, JSON).
    #[test]
    fn values_to_text_and_json() {
        let cases: Vec<(ArrayRef, Vec<&str>, Vec<&str>)> = vec![
            (
                Arc::new(TimestampMillisecondArray::from(vec![
                    1_767_262_500_250,
                    1_767_262_500_000,
                    -1,
                ])),
                vec![
                    "2026-01-01T10:15:00.250Z",
                    "2026-01-01T10:15:00Z",
                    "1969-12-31T23:59:59.999Z",
                ],
                vec![
                    "\"2026-01-01T10:15:00.250Z\"",
                    "\"2026-01-01T10:15:00Z\"",
                    "\"1969-12-31T23:59:59.999Z\"",
                ],
            ),
            (
                Arc::new(TimestampMicrosecondArray::from(vec![1_767_262_500_250_001])),
                vec!["2026-01-01T10:15:00.250001Z"],
                vec!["\"2026-01-01T10:15:00.250001Z\""],
            ),
            (
                Arc::new(TimestampNanosecondArray::from(vec![
                    1_767_262_500_000_000_001,
                ])),
                vec!["2026-01-01T10:15:00.000000001Z"],
                vec!["\"2026-01-01T10:15:00.000000001Z\""],
            ),
            (
                Arc::new(TimestampSecondArray::from(vec![1_767_262_500])),
                vec!["2026-01-01T10:15:00Z"],
                vec!["\"2026-01-01T10:15:00Z\""],
            ),
            // A zone only labels the value, which is UTC already: written with `Z`.
            (
                Arc::new(
                    TimestampMillisecondArray::from(vec![1_767_262_500_250])
                        .with_timezone("+02:00"),
                ),
                vec!["2026-01-01T10:15:00.250Z"],
                vec!["\"2026-01-01T10:15:00.250Z\""],
            ),
            (
                Arc::new(Float64Array::from(vec![
                    88.0,
                    21.5,
                    0.1,
                    -3.25,
                    1e21,
                    1e20,
                    1.5e-7,
                    1e-6,
                    -0.0,
                    1.2345678901234567e20,
                ])),
                FLOATS.to_vec(),
                FLOATS.to_vec(),
            ),
            (
                Arc::new(Float64Array::from(vec![
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                ])),
                vec!["NaN", "Infinity", "-Infinity"],
                vec!["null", "null", "null"],
            ),
            // An f32 keeps its own shortest form (not 0.10000000149011612).
            (
                Arc::new(Float32Array::from(vec![0.1f32, 88.0, 1.5e-7])),
                vec!["0.1", "88", "1.5e-7"],
                vec!["0.1", "88", "1.5e-7"],
            ),
            (
                Arc::new(Int64Array::from(vec![-42, i64::MAX])),
                vec!["-42", "9223372036854775807"],
                vec!["-42", "9223372036854775807"],
            ),
            (
                Arc::new(UInt64Array::from(vec![u64::MAX])),
                vec!["18446744073709551615"],
                vec!["18446744073709551615"],
            ),
            (
                Arc::new(
                    Decimal128Array::from(vec![1250, -5])
                        .with_precision_and_scale(10, 2)
                        .unwrap(),
                ),
                vec!["12.50", "-0.05"],
                vec!["12.50", "-0.05"],
            ),
            (
                Arc::new(BooleanArray::from(vec![true, false])),
                vec!["true", "false"],
                vec!["true", "false"],
            ),
            (
                Arc::new(StringArray::from(vec!["a \"q\" \\ é\n\u{1}", ""])),
                vec!["a \"q\" \\ é\n\u{1}", ""],
                vec!["\"a \\\"q\\\" \\\\ é\\n\\u0001\"", "\"\""],
            ),
            (
                Arc::new(Date32Array::from(vec![20_454, -719_529])),
                vec!["2026-01-01", "-0001-12-31"],
                vec!["\"2026-01-01\"", "\"-0001-12-31\""],
            ),
            (
                Arc::new(Date64Array::from(vec![1_767_262_500_250])),
                vec!["2026-01-01"],
                vec!["\"2026-01-01\""],
            ),
            (
                Arc::new(BinaryArray::from(vec![b"hi!?".as_ref(), b""])),
                vec!["aGkhPw==", ""],
                vec!["\"aGkhPw==\"", "\"\""],
            ),
            (
                Arc::new(
                    vec!["hot", "cold", "hot"]
                        .into_iter()
                        .collect::<DictionaryArray<Int32Type>>(),
                ),
                vec!["hot", "cold", "hot"],
                vec!["\"hot\"", "\"cold\"", "\"hot\""],
            ),
        ];
        for (array, text, json) in cases {
            let dt = array.data_type().clone();
            let want: Vec<Option<String>> = text.iter().map(|s| Some(s.to_string())).collect();
            assert_eq!(texts(Arc::clone(&array), RFC), want, "text of {dt}");
            assert_eq!(jsons(array, RFC), json, "JSON of {dt}");
        }
    }

    #[test]
    fn epoch_ms_applies_to_timestamps_of_every_unit() {
        let ms: Vec<ArrayRef> = vec![
            Arc::new(TimestampSecondArray::from(vec![1_767_262_500])),
            Arc::new(TimestampMillisecondArray::from(vec![1_767_262_500_250])),
            Arc::new(TimestampMicrosecondArray::from(vec![1_767_262_500_250_999])),
            Arc::new(TimestampNanosecondArray::from(vec![-1])),
        ];
        let got: Vec<String> = ms.into_iter().flat_map(|a| jsons(a, MS)).collect();
        assert_eq!(
            got,
            ["1767262500000", "1767262500250", "1767262500250", "-1"]
        );
        // Dates are not timestamps: they keep their form.
        assert_eq!(
            jsons(Arc::new(Date32Array::from(vec![20_454])), MS),
            ["\"2026-01-01\""]
        );
        assert_eq!(TimestampFormat::parse(" EPOCH_MS "), Ok(MS));
        assert_eq!(TimestampFormat::parse("rfc3339"), Ok(RFC));
        assert!(
            TimestampFormat::parse("iso")
                .unwrap_err()
                .contains("'rfc3339' or 'epoch_ms'")
        );
    }

    /// The hand-made calendar agrees with chrono wherever chrono reaches.
    #[test]
    fn timestamps_agree_with_chrono() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // ±8000 years around 1970, in microseconds.
            let us = (x % 504_911_232_000_000_000) as i64 - 252_455_616_000_000_000;
            let mut ours = String::new();
            write_timestamp(us, TimeUnit::Microsecond, RFC, &mut ours);
            let theirs = chrono::DateTime::from_timestamp_micros(us)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.fZ")
                .to_string();
            assert_eq!(ours, theirs, "{us}");
        }
        // Beyond chrono's range a value still has a form.
        assert_eq!(
            texts(
                Arc::new(TimestampSecondArray::from(vec![i64::MAX, i64::MIN])),
                RFC
            ),
            [
                Some("+292277026596-12-04T15:30:07Z".to_string()),
                Some("-292277022657-01-27T08:29:52Z".to_string())
            ]
        );
        assert_eq!(timestamp_ms(253_402_300_800_000), "+10000-01-01T00:00:00Z");
    }

    #[test]
    fn nested_values_and_rows() {
        let inner = StructArray::from(vec![
            (
                Arc::new(Field::new("t", DataType::Float64, true)),
                Arc::new(Float64Array::from(vec![Some(21.0), None])) as ArrayRef,
            ),
            (
                Arc::new(Field::new(
                    "at",
                    DataType::Timestamp(TimeUnit::Millisecond, None),
                    true,
                )),
                Arc::new(TimestampMillisecondArray::from(vec![Some(0), Some(1)])) as ArrayRef,
            ),
        ]);
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![
            Some(vec![Some(1), None, Some(3)]),
            None,
        ]);
        let mut map = MapBuilder::new(None, StringBuilder::new(), Int64Array::builder(2));
        map.keys().append_value("a");
        map.values().append_value(1);
        map.keys().append_value("b");
        map.values().append_null();
        map.append(true).unwrap();
        map.append(false).unwrap();
        let map = map.finish();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("reading", inner.data_type().clone(), true),
            Field::new("xs", list.data_type().clone(), true),
            Field::new("m", map.data_type().clone(), true),
            Field::new("v", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("d1"), None])),
                Arc::new(inner),
                Arc::new(list),
                Arc::new(map),
                Arc::new(Float64Array::from(vec![Some(f64::NAN), Some(2.5)])),
            ],
        )
        .unwrap();
        let mut lines = Vec::new();
        json_lines(&batch, RFC, &mut lines).unwrap();
        assert_eq!(
            String::from_utf8(lines).unwrap(),
            "{\"id\":\"d1\",\"reading\":{\"t\":21,\"at\":\"1970-01-01T00:00:00Z\"},\
             \"xs\":[1,null,3],\"m\":{\"a\":1}}\n\
             {\"reading\":{\"at\":\"1970-01-01T00:00:00.001Z\"},\"v\":2.5}\n"
        );
        let mut array = Vec::new();
        json_array(&batch.slice(0, 0), RFC, &mut array).unwrap();
        assert_eq!(array, b"[]");
        let objects = json_objects(&batch, MS).unwrap();
        assert_eq!(objects[1]["reading"]["at"], 1);
        assert_eq!(
            row_json(&batch, 1).unwrap(),
            "{\"reading\":{\"at\":\"1970-01-01T00:00:00.001Z\"},\"v\":2.5}"
        );
        // A nested value as text is its JSON.
        let text = text_column(batch.column(2), RFC).unwrap();
        assert_eq!(text, [Some("[1,null,3]".to_string()), None]);
    }
}
