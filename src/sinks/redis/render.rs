//! Rows to Redis commands (sinks layer, inside `write` of the `redis` sink): the
//! parsed [`Spec`]s are bound to a batch's schema once ([`Plan::compile`]), then
//! every row of every batch of that schema is rendered into pipelines
//! ([`Plan::render`]).
//!
//! **Values** are text as [`crate::render`] writes it, like every other sink: strings
//! as they are, numbers as JavaScript prints them (`21.5`, `88`), booleans
//! `true`/`false`, timestamps as the sink's `timestamp_format` says (RFC 3339 in UTC,
//! `2026-01-01T10:15:00.250Z`, or epoch ms); `{*}` is the row as a JSON object (nulls
//! left out). Where Redis wants a number (ZADD score, INCRBY/HINCRBY amount) a time
//! is epoch milliseconds, whatever the format.
//!
//! **Keys.** Values put into a key (and a PUBLISH channel, and an ONCE id) are
//! percent-encoded where they could fake a separator: `%`, `:`, `{`, `}`, whitespace
//! and control characters always, and the first character of any text separating two
//! placeholders of that key (`{a}-{b}` escapes `-`). So `k:{a}:{b}` gives different keys
//! for `a="x:y", b="z"` and `a="x", b="y:z"`. A timestamp is not escaped: its form is
//! fixed (it ends at its `Z`, or is an integer), so it cannot fake a separator, and
//! `stats:{window_start}` stays readable. A key longer than `max_key_bytes` is
//! cut to a prefix + `#` + 32 hex digits of the BLAKE3 hash of the whole key: still
//! one key per distinct long key, deterministic across restarts.
//!
//! **Nulls.** A null in a key, channel, PUBLISH message, score, amount, ZADD member,
//! HINCRBY field or ONCE id skips that command for that row (counted, reported by the
//! caller); a null elsewhere renders as the empty string, except that a null column is
//! left out of HSET/XADD fields (a field written as `name={column}` too).

use std::collections::BTreeSet;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Date32Type, Date64Type, Schema};

use super::command::{Command, Field, Piece, Spec, Template};
use crate::error::{Error, Result};
use crate::render::{self, TimestampFormat, Values};

/// The Lua behind `INCRBY … ONCE id` and `HINCRBY … ONCE id`: the increment and its
/// marker in one atomic step, so a replayed window never counts twice, and a failed
/// increment (WRONGTYPE) leaves no marker behind. Sent with EVAL on every use rather
/// than loaded once for EVALSHA: a restarted Redis has forgotten loaded scripts, and
/// ONCE serves windowed results, a few rows per window.
/// KEYS[1] counter, KEYS[2] marker; ARGV[1] amount, ARGV[2] marker TTL in seconds,
/// ARGV[3] hash field (HINCRBY only).
pub const ONCE_SCRIPT: &str = "\
if redis.call('EXISTS', KEYS[2]) == 1 then return false end
local r
if ARGV[3] then r = redis.call('HINCRBY', KEYS[1], ARGV[3], ARGV[1])
else r = redis.call('INCRBY', KEYS[1], ARGV[1]) end
redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
return r";

/// Settings that shape rendered commands.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub once_ttl_secs: u64,
    /// Commands per pipeline (and per MULTI/EXEC) before a new one starts; a row's
    /// commands always stay in one pipeline.
    pub pipeline_commands: usize,
    /// `timestamp_format`: how times are written in text (keys, values, `{*}`).
    pub timestamps: TimestampFormat,
}

/// How a template's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// A key, channel or id: escaped; a null skips the command.
    Key,
    /// A value that must be there but is not a key (ZADD member, HINCRBY field,
    /// PUBLISH message): not escaped; a null skips.
    Name,
    /// A number Redis parses: timestamps as epoch ms; a null (or NaN) skips.
    Number,
    /// Free text: a null is the empty string.
    Text,
}

#[derive(Debug, Clone)]
enum Slot {
    Text(String),
    Column(usize),
    Row,
}

/// A template bound to a schema.
#[derive(Debug, Clone)]
struct Bound {
    slots: Vec<Slot>,
    role: Role,
    /// Characters escaped in values besides the fixed set (keys only).
    escape: Vec<char>,
}

#[derive(Debug, Clone)]
enum FieldValue {
    /// Left out when the column is null.
    Column(usize),
    Template(Bound),
}

#[derive(Debug, Clone)]
enum Step {
    Set {
        key: Bound,
        value: Bound,
        ex: Option<u64>,
    },
    Incr {
        key: Bound,
        field: Option<Bound>,
        amount: Bound,
        once: Option<Bound>,
    },
    HSet {
        key: Bound,
        fields: Vec<(String, FieldValue)>,
    },
    ZAdd {
        key: Bound,
        score: Bound,
        member: Bound,
        keep: Option<u64>,
    },
    Publish {
        channel: Bound,
        message: Bound,
    },
    XAdd {
        key: Bound,
        maxlen: Option<(bool, u64)>,
        fields: Vec<(String, FieldValue)>,
    },
}

/// What a step reads: a template, or a column as an HSET/XADD field.
enum Use<'a> {
    Bound(&'a Bound),
    Column(usize),
}

impl Step {
    fn uses(&self) -> Vec<Use<'_>> {
        let mut out = Vec::new();
        match self {
            Step::Set { key, value, .. } => out.extend([Use::Bound(key), Use::Bound(value)]),
            Step::Incr {
                key,
                field,
                amount,
                once,
            } => {
                out.extend([Use::Bound(key), Use::Bound(amount)]);
                out.extend(field.iter().chain(once).map(Use::Bound));
            }
            Step::HSet { key, fields } | Step::XAdd { key, fields, .. } => {
                out.push(Use::Bound(key));
                out.extend(fields.iter().map(|(_, v)| match v {
                    FieldValue::Column(c) => Use::Column(*c),
                    FieldValue::Template(t) => Use::Bound(t),
                }));
            }
            Step::ZAdd {
                key, score, member, ..
            } => out.extend([Use::Bound(key), Use::Bound(score), Use::Bound(member)]),
            Step::Publish { channel, message } => {
                out.extend([Use::Bound(channel), Use::Bound(message)])
            }
        }
        out
    }
}

/// The commands bound to one schema.
#[derive(Debug)]
pub struct Plan {
    steps: Vec<(usize, Step)>,
    /// Spec texts, by spec number - 1, for error messages.
    texts: Vec<String>,
    columns: Vec<String>,
    uses_row: bool,
}

/// A pipeline ready to send, and which spec each of its commands came from.
pub struct Chunk {
    pub pipe: redis::Pipeline,
    /// Spec number (1-based) per command of `pipe`; 0 for the ZADD KEEP trims the
    /// sink adds.
    pub origins: Vec<usize>,
}

/// What rendering a batch produced.
pub struct Rendered {
    pub chunks: Vec<Chunk>,
    /// Commands skipped for a null, and why the last one was.
    pub skipped: u64,
    pub last_skip: Option<String>,
}

impl Plan {
    /// Binds the specs to `schema`: every named column must exist, and numeric
    /// positions must name numeric columns. Errors are the user's.
    pub fn compile(specs: &[Spec], schema: &Schema) -> Result<Plan> {
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut steps = Vec::new();
        for spec in specs {
            let b = Binder {
                spec,
                schema,
                columns: &columns,
            };
            let step = match &spec.command {
                Command::Set {
                    key,
                    value,
                    ex_seconds,
                } => Step::Set {
                    key: b.bind(key, Role::Key)?,
                    value: b.bind(value, Role::Text)?,
                    ex: *ex_seconds,
                },
                Command::IncrBy { key, amount, once } => Step::Incr {
                    key: b.bind(key, Role::Key)?,
                    field: None,
                    amount: b.number(amount, true)?,
                    once: once.as_ref().map(|o| b.bind(o, Role::Key)).transpose()?,
                },
                Command::HIncrBy {
                    key,
                    field,
                    amount,
                    once,
                } => Step::Incr {
                    key: b.bind(key, Role::Key)?,
                    field: Some(b.bind(field, Role::Name)?),
                    amount: b.number(amount, true)?,
                    once: once.as_ref().map(|o| b.bind(o, Role::Key)).transpose()?,
                },
                Command::HSet { key, fields } => Step::HSet {
                    key: b.bind(key, Role::Key)?,
                    fields: b.fields(fields)?,
                },
                Command::ZAdd {
                    key,
                    score,
                    member,
                    keep,
                } => Step::ZAdd {
                    key: b.bind(key, Role::Key)?,
                    score: b.number(score, false)?,
                    member: b.bind(member, Role::Name)?,
                    keep: *keep,
                },
                Command::Publish { channel, message } => Step::Publish {
                    channel: b.bind(channel, Role::Key)?,
                    // A null message publishes nothing: `PUBLISH Warnings {warning}`
                    // with `CASE WHEN … END AS warning` warns only when there is one.
                    message: b.bind(message, Role::Name)?,
                },
                Command::XAdd {
                    key,
                    maxlen,
                    fields,
                } => Step::XAdd {
                    key: b.bind(key, Role::Key)?,
                    maxlen: *maxlen,
                    fields: b.fields(fields)?,
                },
            };
            steps.push((spec.number, step));
        }
        let uses_row = steps
            .iter()
            .flat_map(|(_, s)| s.uses())
            .any(|u| matches!(u, Use::Bound(b) if b.slots.iter().any(|s| matches!(s, Slot::Row))));
        Ok(Plan {
            steps,
            texts: specs.iter().map(|s| s.text.clone()).collect(),
            columns,
            uses_row,
        })
    }

    /// The spec text of a command, for error messages.
    pub fn describe(&self, number: usize) -> Option<String> {
        let text = self.texts.get(number.checked_sub(1)?)?;
        Some(format!("command {number} (`{text}`)"))
    }

    /// Renders every row of `batch` (rows in order, each row's commands in spec
    /// order) into pipelines of about `limits.pipeline_commands` commands.
    pub fn render(&self, batch: &RecordBatch, limits: &Limits, atomic: bool) -> Result<Rendered> {
        let cells = Cells::new(self, batch, limits.timestamps)?;
        let mut out = Rendered {
            chunks: Vec::new(),
            skipped: 0,
            last_skip: None,
        };
        let mut chunk = ChunkBuilder::new(atomic);
        let mut buf = String::new();
        // The last skip, formatted once at the end: a batch may skip many rows.
        let mut last_skip: Option<(usize, Skip)> = None;
        for row in 0..batch.num_rows() {
            for (number, step) in &self.steps {
                if let Err(skip) =
                    self.render_step(*number, step, &cells, row, limits, &mut chunk, &mut buf)
                {
                    out.skipped += 1;
                    last_skip = Some((*number, skip));
                }
            }
            if chunk.origins.len() >= limits.pipeline_commands {
                let full = std::mem::replace(&mut chunk, ChunkBuilder::new(atomic));
                out.chunks.push(full.finish());
            }
        }
        if chunk.has_commands() {
            out.chunks.push(chunk.finish());
        }
        out.last_skip = last_skip.map(|(number, skip)| {
            let why = match skip {
                Skip::Null(c) => format!(
                    "column '{}' is null where a value is required",
                    self.columns[c]
                ),
                Skip::NoFields => "every field is null".to_string(),
            };
            format!(
                "{} skipped a row: {why}",
                self.describe(number).unwrap_or_default()
            )
        });
        Ok(out)
    }

    /// Adds one step's command for one row, or nothing and why not.
    #[allow(clippy::too_many_arguments)]
    fn render_step(
        &self,
        number: usize,
        step: &Step,
        cells: &Cells,
        row: usize,
        limits: &Limits,
        chunk: &mut ChunkBuilder,
        buf: &mut String,
    ) -> std::result::Result<(), Skip> {
        let key = |t: &Bound, buf: &mut String| -> std::result::Result<String, Skip> {
            buf.clear();
            cells.render(t, row, buf).map_err(Skip::Null)?;
            Ok(shorten_key(buf, limits.max_key_bytes))
        };
        // Any other argument, rendered as its role says (escaped or not, text or number).
        let text = |t: &Bound, buf: &mut String| -> std::result::Result<String, Skip> {
            buf.clear();
            cells.render(t, row, buf).map_err(Skip::Null)?;
            Ok(buf.clone())
        };
        match step {
            Step::Set { key: k, value, ex } => {
                let k = key(k, buf)?;
                let v = text(value, buf)?;
                let cmd = chunk.cmd("SET", number).arg(k).arg(v);
                if let Some(ex) = ex {
                    cmd.arg("EX").arg(*ex);
                }
            }
            Step::Incr {
                key: k,
                field,
                amount,
                once,
            } => {
                // Render everything first: a null anywhere skips before anything is added.
                let counter = text(k, buf)?;
                let field = field.as_ref().map(|f| text(f, buf)).transpose()?;
                let amount = text(amount, buf)?;
                match once {
                    None => {
                        let cmd = match &field {
                            Some(f) => chunk
                                .cmd("HINCRBY", number)
                                .arg(shorten_key(&counter, limits.max_key_bytes))
                                .arg(f),
                            None => chunk
                                .cmd("INCRBY", number)
                                .arg(shorten_key(&counter, limits.max_key_bytes)),
                        };
                        cmd.arg(amount);
                    }
                    Some(id) => {
                        // The marker is named after the full counter key (and the hash
                        // field, escaped like a key part): one marker per (key, field, id).
                        let mut marker = counter.clone();
                        marker.push_str(":once:");
                        if let Some(f) = &field {
                            escape_into(&mut marker, f, &[]);
                            marker.push(':');
                        }
                        cells.render(id, row, &mut marker).map_err(Skip::Null)?;
                        let cmd = chunk
                            .cmd("EVAL", number)
                            .arg(ONCE_SCRIPT)
                            .arg(2)
                            .arg(shorten_key(&counter, limits.max_key_bytes))
                            .arg(shorten_key(&marker, limits.max_key_bytes))
                            .arg(amount)
                            .arg(limits.once_ttl_secs);
                        if let Some(f) = field {
                            cmd.arg(f);
                        }
                    }
                }
            }
            Step::HSet { key: k, fields } | Step::XAdd { key: k, fields, .. } => {
                let k = key(k, buf)?;
                let values = render_fields(fields, cells, row, buf);
                if values.is_empty() {
                    // HSET and XADD need at least one field.
                    return Err(Skip::NoFields);
                }
                let cmd = match step {
                    Step::XAdd { maxlen, .. } => {
                        let cmd = chunk.cmd("XADD", number).arg(k);
                        if let Some((approx, n)) = maxlen {
                            cmd.arg("MAXLEN");
                            if *approx {
                                cmd.arg("~");
                            }
                            cmd.arg(*n);
                        }
                        cmd.arg("*")
                    }
                    _ => chunk.cmd("HSET", number).arg(k),
                };
                for (name, value) in values {
                    cmd.arg(name).arg(value);
                }
            }
            Step::ZAdd {
                key: k,
                score,
                member,
                keep,
            } => {
                let k = key(k, buf)?;
                let s = text(score, buf)?;
                let m = text(member, buf)?;
                chunk.cmd("ZADD", number).arg(&k).arg(s).arg(m);
                if let Some(n) = keep {
                    chunk.trims.insert((k, *n));
                }
            }
            Step::Publish { channel, message } => {
                let c = text(channel, buf)?;
                let m = text(message, buf)?;
                chunk.cmd("PUBLISH", number).arg(c).arg(m);
            }
        }
        Ok(())
    }
}

/// Why a command was not sent for a row.
#[derive(Debug, Clone, Copy)]
enum Skip {
    /// A null in this column, where a value is required.
    Null(usize),
    /// Every field of an HSET or XADD is null.
    NoFields,
}

fn render_fields<'f>(
    fields: &'f [(String, FieldValue)],
    cells: &Cells,
    row: usize,
    buf: &mut String,
) -> Vec<(&'f str, String)> {
    let mut out = Vec::with_capacity(fields.len());
    for (name, value) in fields {
        buf.clear();
        let present = match value {
            FieldValue::Column(c) => cells.cell(*c, row, Role::Text).map(|v| buf.push_str(v)),
            FieldValue::Template(t) => cells.render(t, row, buf).ok(),
        };
        if present.is_some() {
            out.push((name.as_str(), buf.clone()));
        }
    }
    out
}

/// Commands of one pipeline being built.
struct ChunkBuilder {
    pipe: redis::Pipeline,
    origins: Vec<usize>,
    /// ZADD … KEEP n: trimmed once per key at the end of the pipeline, not per row.
    trims: BTreeSet<(String, u64)>,
}

impl ChunkBuilder {
    fn new(atomic: bool) -> Self {
        let mut pipe = redis::pipe();
        if atomic {
            pipe.atomic();
        }
        ChunkBuilder {
            pipe,
            origins: Vec::new(),
            trims: BTreeSet::new(),
        }
    }

    fn cmd(&mut self, name: &str, origin: usize) -> &mut redis::Pipeline {
        self.origins.push(origin);
        // Replies are discarded: the sink needs only success or the first error.
        self.pipe.cmd(name).ignore()
    }

    fn has_commands(&self) -> bool {
        !self.origins.is_empty()
    }

    fn finish(mut self) -> Chunk {
        for (key, n) in std::mem::take(&mut self.trims) {
            // Ranks are by ascending score: removing 0..-(n+1) keeps the n highest
            // scores (the newest, when the score is a time).
            let last = -(i64::try_from(n).unwrap_or(i64::MAX - 1) + 1);
            self.cmd("ZREMRANGEBYRANK", 0).arg(key).arg(0).arg(last);
        }
        Chunk {
            pipe: self.pipe,
            origins: self.origins,
        }
    }
}

/// Resolves a spec's templates against a schema.
struct Binder<'a> {
    spec: &'a Spec,
    schema: &'a Schema,
    columns: &'a [String],
}

impl Binder<'_> {
    fn column(&self, name: &str) -> Result<usize> {
        self.columns.iter().position(|c| c == name).ok_or_else(|| {
            let near = self
                .columns
                .iter()
                .find(|c| c.eq_ignore_ascii_case(name))
                .map(|c| format!(" (column names are case-sensitive: did you mean '{c}'?)"))
                .unwrap_or_default();
            Error::user(format!(
                "redis sink: command {} (`{}`) names column '{name}', which the query does not \
                 output{near}; its columns are: {}. Change the sink's commands or the query's \
                 SELECT list",
                self.spec.number,
                self.spec.text,
                self.columns.join(", ")
            ))
        })
    }

    fn bind(&self, t: &Template, role: Role) -> Result<Bound> {
        let mut slots = Vec::with_capacity(t.pieces.len());
        let mut escape = Vec::new();
        for (i, p) in t.pieces.iter().enumerate() {
            slots.push(match p {
                Piece::Text(s) => {
                    // Text between two placeholders separates values: its first
                    // character must not occur unescaped in the value before it.
                    let between = i > 0
                        && matches!(t.pieces[i - 1], Piece::Column(_))
                        && t.pieces[i + 1..]
                            .iter()
                            .any(|p| matches!(p, Piece::Column(_)));
                    if role == Role::Key
                        && between
                        && let Some(c) = s.chars().next()
                        && !always_escaped(c)
                    {
                        escape.push(c);
                    }
                    Slot::Text(s.clone())
                }
                Piece::Column(c) => Slot::Column(self.column(c)?),
                Piece::Row => Slot::Row,
            });
        }
        Ok(Bound {
            slots,
            role,
            escape,
        })
    }

    /// A score or amount: a literal, or one column of a numeric or time type.
    fn number(&self, t: &Template, integer: bool) -> Result<Bound> {
        let b = self.bind(t, Role::Number)?;
        if let Some(name) = t.single_column() {
            let field = self.schema.field(self.column(name)?);
            let dt = field.data_type();
            let time = matches!(
                dt,
                DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
            );
            let ok = time || dt.is_integer() || (!integer && (dt.is_floating() || dt.is_numeric()));
            if !ok {
                let (what, fix) = if integer {
                    (
                        "an amount",
                        "a whole number: CAST it AS BIGINT in the query",
                    )
                } else {
                    ("a score", "a number or a timestamp")
                };
                return Err(Error::user(format!(
                    "redis sink: command {} (`{}`) uses column '{name}' ({dt}) as {what}, which \
                     must be {fix}",
                    self.spec.number, self.spec.text
                )));
            }
        }
        Ok(b)
    }

    fn fields(&self, fields: &[Field]) -> Result<Vec<(String, FieldValue)>> {
        if fields.is_empty() {
            // No list: every column under its own name.
            return Ok(self
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| (c.clone(), FieldValue::Column(i)))
                .collect());
        }
        fields
            .iter()
            .map(|f| match f {
                Field::Column(c) => Ok((c.clone(), FieldValue::Column(self.column(c)?))),
                Field::Named(name, t) => {
                    let v = match t.single_column() {
                        Some(c) => FieldValue::Column(self.column(c)?),
                        None => FieldValue::Template(self.bind(t, Role::Text)?),
                    };
                    Ok((name.clone(), v))
                }
            })
            .collect()
    }
}

/// The batch's columns rendered once, as text and (where needed) as numbers.
struct Cells {
    text: Vec<Option<Vec<Option<String>>>>,
    number: Vec<Option<Vec<Option<String>>>>,
    /// Columns whose values go into keys unescaped: timestamps, whose fixed form
    /// (`2026-01-01T10:15:00Z`, or epoch ms) cannot fake a separator.
    unescaped: Vec<bool>,
    rows: Vec<String>,
}

impl Cells {
    fn new(plan: &Plan, batch: &RecordBatch, timestamps: TimestampFormat) -> Result<Self> {
        let n = batch.num_columns();
        let mut text_used = vec![false; n];
        let mut number_used = vec![false; n];
        for u in plan.steps.iter().flat_map(|(_, s)| s.uses()) {
            match u {
                Use::Bound(b) => {
                    for slot in &b.slots {
                        if let Slot::Column(c) = slot {
                            if b.role == Role::Number {
                                number_used[*c] = true;
                            } else {
                                text_used[*c] = true;
                            }
                        }
                    }
                }
                Use::Column(c) => text_used[c] = true,
            }
        }
        let mut text = Vec::with_capacity(n);
        let mut number = Vec::with_capacity(n);
        for (i, array) in batch.columns().iter().enumerate() {
            text.push(if text_used[i] {
                Some(render::text_column(array, timestamps)?)
            } else {
                None
            });
            number.push(if number_used[i] {
                Some(number_column(array)?)
            } else {
                None
            });
        }
        let unescaped = batch
            .schema()
            .fields()
            .iter()
            .map(|f| matches!(f.data_type(), DataType::Timestamp(..)))
            .collect();
        let rows = if plan.uses_row {
            let rows = render::Rows::new(batch, timestamps)?;
            (0..batch.num_rows())
                .map(|row| {
                    let mut s = String::new();
                    rows.write(row, &mut s);
                    s
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Cells {
            text,
            number,
            unescaped,
            rows,
        })
    }

    fn cell(&self, column: usize, row: usize, role: Role) -> Option<&str> {
        let cells = if role == Role::Number {
            &self.number
        } else {
            &self.text
        };
        cells[column].as_ref()?[row].as_deref()
    }

    /// Appends `t` for `row` to `out`; `Err(column)` when a null in `column` must skip
    /// the command (keys, names, numbers).
    fn render(&self, t: &Bound, row: usize, out: &mut String) -> std::result::Result<(), usize> {
        for s in &t.slots {
            match s {
                Slot::Text(s) => out.push_str(s),
                Slot::Row => out.push_str(self.rows.get(row).map_or("{}", |r| r.as_str())),
                Slot::Column(c) => match (self.cell(*c, row, t.role), t.role) {
                    (Some(v), Role::Key) if !self.unescaped[*c] => escape_into(out, v, &t.escape),
                    (Some(v), _) => out.push_str(v),
                    (None, Role::Text) => {}
                    (None, _) => return Err(*c),
                },
            }
        }
        Ok(())
    }
}

/// A column as numbers Redis parses (a ZADD score, an INCRBY amount): values as
/// [`render`] writes them, but times as epoch milliseconds whatever the sink's
/// `timestamp_format` (dates too), and NaN as a null, which skips the command.
fn number_column(array: &ArrayRef) -> Result<Vec<Option<String>>> {
    let day_ms = |days: i64| (days * 86_400_000).to_string();
    let valid = |i: usize| array.is_valid(i);
    Ok(match array.data_type() {
        DataType::Date32 => array
            .as_primitive::<Date32Type>()
            .values()
            .iter()
            .enumerate()
            .map(|(i, &d)| valid(i).then(|| day_ms(i64::from(d))))
            .collect(),
        DataType::Date64 => array
            .as_primitive::<Date64Type>()
            .values()
            .iter()
            .enumerate()
            .map(|(i, &d)| valid(i).then(|| d.to_string()))
            .collect(),
        _ => {
            let values = Values::new(array, TimestampFormat::EpochMs)?;
            let mut buf = String::new();
            (0..array.len())
                .map(|i| {
                    buf.clear();
                    (!values.is_nan(i) && values.write_text(i, &mut buf)).then(|| buf.clone())
                })
                .collect()
        }
    })
}

/// Characters escaped in every key value: the separator Redis users use (`:`), the
/// braces of cluster hash tags, the escape itself, and what makes keys unreadable.
fn always_escaped(c: char) -> bool {
    matches!(c, '%' | ':' | '{' | '}') || c.is_whitespace() || c.is_control()
}

/// Appends `value` to `out`, percent-encoding (per UTF-8 byte, `%3A`) every character
/// that is [`always_escaped`] or in `extra`.
pub fn escape_into(out: &mut String, value: &str, extra: &[char]) {
    for c in value.chars() {
        if always_escaped(c) || extra.contains(&c) {
            let mut bytes = [0u8; 4];
            for b in c.encode_utf8(&mut bytes).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
}

/// Hex digits of the hash that stands for the cut part of a long key (128 bits).
const KEY_HASH_HEX: usize = 32;
/// The smallest `max_key_bytes`: room for some prefix, `#` and the hash.
pub const MIN_KEY_BYTES: usize = KEY_HASH_HEX + 1 + 15;

/// `key` itself when it fits in `max` bytes; else a prefix, `#` and 128 bits of the
/// BLAKE3 hash of the whole key, `max` bytes at most.
pub fn shorten_key(key: &str, max: usize) -> String {
    if key.len() <= max {
        return key.to_string();
    }
    let mut cut = max.saturating_sub(KEY_HASH_HEX + 1);
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = blake3::hash(key.as_bytes()).to_hex();
    format!("{}#{}", &key[..cut], &hash.as_str()[..KEY_HASH_HEX])
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        BooleanArray, Float64Array, Int64Array, StringArray, TimestampMillisecondArray,
    };
    use datafusion::arrow::datatypes::{Field as ArrowField, TimeUnit};

    use super::super::command::parse_commands;
    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            ArrowField::new("id", DataType::Utf8, true),
            ArrowField::new("n", DataType::Int64, true),
            ArrowField::new("t", DataType::Float64, true),
            ArrowField::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            ArrowField::new("ok", DataType::Boolean, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("a:b c"), None])),
                Arc::new(Int64Array::from(vec![Some(3), Some(4)])),
                Arc::new(Float64Array::from(vec![Some(21.0), Some(0.1)])),
                Arc::new(TimestampMillisecondArray::from(vec![
                    Some(1_767_262_500_250),
                    Some(1_767_262_500_000),
                ])),
                Arc::new(BooleanArray::from(vec![Some(true), None])),
            ],
        )
        .unwrap()
    }

    fn limits() -> Limits {
        Limits {
            max_key_bytes: 256,
            once_ttl_secs: 60,
            pipeline_commands: 1000,
            timestamps: TimestampFormat::Rfc3339,
        }
    }

    /// Each command of the rendered pipelines as its arguments.
    fn commands(text: &str, b: &RecordBatch) -> (Vec<Vec<String>>, u64) {
        commands_with(text, b, TimestampFormat::Rfc3339)
    }

    fn commands_with(
        text: &str,
        b: &RecordBatch,
        timestamps: TimestampFormat,
    ) -> (Vec<Vec<String>>, u64) {
        let specs = parse_commands(text).unwrap();
        let plan = Plan::compile(&specs, &b.schema()).unwrap();
        let limits = Limits {
            timestamps,
            ..limits()
        };
        let r = plan.render(b, &limits, false).unwrap();
        let cmds = r
            .chunks
            .iter()
            .flat_map(|c| c.pipe.cmd_iter())
            .map(|c| {
                c.args_iter()
                    .map(|a| match a {
                        redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                        _ => "<not simple>".into(),
                    })
                    .collect()
            })
            .collect();
        (cmds, r.skipped)
    }

    #[test]
    fn values_render_by_type_and_position() {
        let (cmds, skipped) = commands(
            "SET k:{id} {n}|{t}|{ts}|{ok}; ZADD z {ts} {n}; INCRBY c {n}",
            &batch(),
        );
        assert_eq!(
            cmds,
            vec![
                vec!["SET", "k:a%3Ab%20c", "3|21|2026-01-01T10:15:00.250Z|true"],
                vec!["ZADD", "z", "1767262500250", "3"],
                vec!["INCRBY", "c", "3"],
                // Row 2: the key's column is null, so SET is skipped.
                vec!["ZADD", "z", "1767262500000", "4"],
                vec!["INCRBY", "c", "4"],
            ]
        );
        assert_eq!(skipped, 1);
    }

    #[test]
    fn fields_leave_nulls_out() {
        let (cmds, _) = commands("HSET h:{n} id when={ts}; XADD s MAXLEN ~ 5 ok", &batch());
        assert_eq!(
            cmds[0],
            vec![
                "HSET",
                "h:3",
                "id",
                "a:b c",
                "when",
                "2026-01-01T10:15:00.250Z"
            ]
        );
        assert_eq!(
            cmds[1],
            vec!["XADD", "s", "MAXLEN", "~", "5", "*", "ok", "true"]
        );
        assert_eq!(cmds[2], vec!["HSET", "h:4", "when", "2026-01-01T10:15:00Z"]);
        // Row 2 has no `ok`: the XADD has no field left and is skipped.
        assert_eq!(cmds.len(), 3);
    }

    #[test]
    fn timestamps_follow_the_sink_format_and_stay_readable_in_keys() {
        let b = batch();
        let text = "SET s:{ts}:{id} {ts}; PUBLISH c:{ts} {*}; ZADD z {ts} {n}";
        let (cmds, _) = commands(text, &b);
        assert_eq!(
            cmds[0],
            [
                "SET",
                "s:2026-01-01T10:15:00.250Z:a%3Ab%20c",
                "2026-01-01T10:15:00.250Z"
            ]
        );
        assert_eq!(
            cmds[1],
            [
                "PUBLISH",
                "c:2026-01-01T10:15:00.250Z",
                "{\"id\":\"a:b c\",\"n\":3,\"t\":21,\"ts\":\"2026-01-01T10:15:00.250Z\",\"ok\":true}"
            ]
        );
        assert_eq!(cmds[2], ["ZADD", "z", "1767262500250", "3"]);
        let (cmds, _) = commands_with(text, &b, TimestampFormat::EpochMs);
        assert_eq!(
            cmds[0],
            ["SET", "s:1767262500250:a%3Ab%20c", "1767262500250"]
        );
        assert_eq!(
            cmds[1][2],
            "{\"id\":\"a:b c\",\"n\":3,\"t\":21,\"ts\":1767262500250,\"ok\":true}"
        );
        assert_eq!(cmds[2], ["ZADD", "z", "1767262500250", "3"]);
    }

    /// Unescaped timestamps cannot make two different rows share a key: their form
    /// ends at its `Z` (or is an integer without leading zeros), while the strings
    /// around them are escaped.
    #[test]
    fn unescaped_timestamps_keep_keys_distinct() {
        let ts_field =
            |n: &str| ArrowField::new(n, DataType::Timestamp(TimeUnit::Millisecond, None), true);
        let schema = Arc::new(Schema::new(vec![
            ts_field("a"),
            ArrowField::new("b", DataType::Utf8, true),
            ts_field("c"),
            ArrowField::new("d", DataType::Utf8, true),
        ]));
        // Values chosen to meet at the separators: `:`, `Z`, digits, `-`.
        let ts = [
            0i64,
            1,
            10,
            100,
            1_000,
            1_001,
            -1,
            60_000,
            1_767_262_500_250,
        ];
        let texts = [
            "", "Z", ":", "0", "00Z", "1", "-1", "Z:1970", "01", "x:y", "x", "y:z", "z",
        ];
        let (mut a, mut b, mut c, mut d) = (vec![], vec![], vec![], vec![]);
        for x in ts {
            for y in texts {
                for z in [0i64, 10, 1] {
                    for w in ["", "y:z", "z", ":", "1", "1970"] {
                        a.push(x);
                        b.push(y);
                        c.push(z);
                        d.push(w);
                    }
                }
            }
        }
        let n = a.len();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampMillisecondArray::from(a)),
                Arc::new(StringArray::from(b)),
                Arc::new(TimestampMillisecondArray::from(c)),
                Arc::new(StringArray::from(d)),
            ],
        )
        .unwrap();
        let templates = [
            "k:{a}:{b}",
            "{a}Z{b}",
            "{a}-{c}",
            "{a}0{c}",
            "{b}:{a}:{d}",
            "{b}:{d}",
            "{a}:{b}:{c}:{d}",
        ];
        for format in [TimestampFormat::Rfc3339, TimestampFormat::EpochMs] {
            for template in templates {
                let (cmds, _) = commands_with(&format!("SET {template} v"), &batch, format);
                let keys: BTreeSet<&String> = cmds.iter().map(|c| &c[1]).collect();
                // Rows that differ in the columns the template uses give other keys.
                let used = |i: usize| -> Vec<String> {
                    ["a", "b", "c", "d"]
                        .iter()
                        .enumerate()
                        .filter(|(_, name)| template.contains(&format!("{{{name}}}")))
                        .map(|(col, _)| format!("{:?}", batch.column(col).slice(i, 1)))
                        .collect()
                };
                let distinct: BTreeSet<Vec<String>> = (0..n).map(used).collect();
                assert_eq!(keys.len(), distinct.len(), "{template} as {format:?}");
            }
        }
    }

    #[test]
    fn a_null_publish_message_skips_the_command() {
        let (cmds, skipped) = commands("PUBLISH w {id}; PUBLISH all {*}", &batch());
        assert_eq!(
            cmds.iter().map(|c| c[1].as_str()).collect::<Vec<_>>(),
            ["w", "all", "all"]
        );
        assert_eq!(cmds[0][2], "a:b c");
        assert_eq!(skipped, 1);
    }

    #[test]
    fn keys_cannot_collide_across_separators() {
        let mut a = String::new();
        escape_into(&mut a, "x:y", &[]);
        a.push(':');
        escape_into(&mut a, "z", &[]);
        let mut b = String::new();
        escape_into(&mut b, "x", &[]);
        b.push(':');
        escape_into(&mut b, "y:z", &[]);
        assert_ne!(a, b);
        assert_eq!(a, "x%3Ay:z");
        let mut c = String::new();
        escape_into(&mut c, "100%-{é}\n", &['-']);
        assert_eq!(c, "100%25%2D%7Bé%7D%0A");
    }

    #[test]
    fn long_keys_are_cut_and_hashed() {
        let long = "k".repeat(300);
        let short = shorten_key(&long, 64);
        assert_eq!(short.len(), 64);
        assert!(short.starts_with(&"k".repeat(31)));
        assert_eq!(short.as_bytes()[31], b'#');
        assert_eq!(short, shorten_key(&long, 64), "deterministic");
        assert_ne!(short, shorten_key(&format!("{long}x"), 64));
        assert_eq!(shorten_key("short", 64), "short");
        // Never cut inside a character.
        let wide = "é".repeat(100);
        assert!(shorten_key(&wide, 64).len() <= 64);
    }

    #[test]
    fn missing_columns_and_wrong_types_are_named() {
        let b = batch();
        let specs = parse_commands("SET k {ID}").unwrap();
        let err = Plan::compile(&specs, &b.schema()).unwrap_err().to_string();
        assert_eq!(
            err,
            "redis sink: command 1 (`SET k {ID}`) names column 'ID', which the query does not \
             output (column names are case-sensitive: did you mean 'id'?); its columns are: id, \
             n, t, ts, ok. Change the sink's commands or the query's SELECT list"
        );
        let specs = parse_commands("INCRBY k {t}").unwrap();
        let err = Plan::compile(&specs, &b.schema()).unwrap_err().to_string();
        assert!(
            err.contains("uses column 't' (Float64) as an amount"),
            "{err}"
        );
        let specs = parse_commands("ZADD k {id} m").unwrap();
        assert!(Plan::compile(&specs, &b.schema()).is_err());
    }

    #[test]
    fn separators_between_placeholders_are_escaped() {
        let (cmds, _) = commands("SET {n}-{id}:x v", &batch());
        assert_eq!(cmds[0][1], "3-a%3Ab%20c:x");
        let (cmds, _) = commands("SET p-{n}-{t} v", &batch());
        // '-' separates {n} and {t}, so it is escaped in values; the prefix is not.
        assert_eq!(cmds[0][1], "p-3-21");
    }
}
