//! SQL logic tests: the semantics of Sluice's SQL, pinned in `tests/slt/*.slt`.
//!
//! Each `.slt` file is one test (listed by name, so `cargo test --test slt` shows every
//! file; a runner that lists nothing runs nothing). Files drive the engine in step mode
//! through [`sluice::runtime::Step`]: the same decoder, watermark tracker and query
//! operators the service runs, without tasks or sockets, on a manual clock.
//!
//! Besides SQL statements, a file can say:
//!
//! | command                          | effect                                                    |
//! |----------------------------------|-----------------------------------------------------------|
//! | `PUSH stream [PARTITION n]` + JSON lines | records arrive (now = the clock)                    |
//! | `PARTITIONS stream n`            | the stream's source has n partitions                     |
//! | `CLOCK ms` / `CLOCK +ms`         | set / advance the wall clock                              |
//! | `TICK stream`                    | re-check the watermark on the clock (idle advance)        |
//! | `FINISH stream`                  | the input ends: every window closes                       |
//! | `OUTPUT query`                   | rows the query emitted since the last OUTPUT              |
//! | `ERRORS query`                   | error output since the last ERRORS: kind, reason, payload |
//! | `WATERMARK stream`               | the stream's watermark                                    |
//! | `COUNTERS query`                 | rows in, rows out, late, errors                           |
//!
//! Names in commands are written as in SQL: `OUTPUT "Per City"`.
//!
//! Regenerate expected output after a deliberate change with
//! `SLT_COMPLETE=1 cargo test --test slt`, and review the diff.

use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use libtest_mimic::{Arguments, Failed, Trial};
use sluice::engine::fmt_ts;
use sluice::render::{TimestampFormat, Values};
use sluice::runtime::Step;
use sqllogictest::{DBOutput, DefaultColumnType};

/// Wall clock at the start of every file: 2026-01-01T00:00:00Z.
const START_MS: i64 = 1_767_225_600_000;

#[derive(Debug)]
struct SltError(String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

struct Engine {
    step: Step,
}

impl Engine {
    /// Rows as users see them: each value as text the way every sink writes it
    /// ([`sluice::render`]: RFC 3339 times with `Z`, `88` for a whole DOUBLE), `NULL`
    /// for a null and `(empty)` for an empty string.
    fn rows(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, SltError> {
        let mut rows = Vec::new();
        for b in batches {
            let columns = b
                .columns()
                .iter()
                .map(|c| Values::new(c, TimestampFormat::Rfc3339))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SltError(e.to_string()))?;
            for r in 0..b.num_rows() {
                rows.push(
                    columns
                        .iter()
                        .map(|c| {
                            let mut s = String::new();
                            if !c.write_text(r, &mut s) {
                                s.push_str("NULL");
                            } else if s.is_empty() {
                                s.push_str("(empty)");
                            }
                            s
                        })
                        .collect(),
                );
            }
        }
        Ok(rows)
    }

    fn output(rows: Vec<Vec<String>>) -> DBOutput<DefaultColumnType> {
        let width = rows.first().map_or(1, Vec::len);
        DBOutput::Rows {
            types: vec![DefaultColumnType::Any; width],
            rows,
        }
    }
}

/// The words of a command line; a name may be double-quoted as in SQL (`OUTPUT "Per
/// City"`, `""` for a quote inside it).
fn command_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = line.trim().chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                    } else {
                        break;
                    }
                }
                word.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        words.push(word);
    }
    words
}

fn parse_time(s: &str) -> Result<i64, SltError> {
    s.parse::<i64>()
        .map_err(|_| SltError(format!("bad time '{s}'")))
}

impl sqllogictest::DB for Engine {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let err = |e: sluice::error::Error| SltError(e.to_string());
        let trimmed = sql.trim();
        let (head, body) = trimmed.split_once('\n').unwrap_or((trimmed, ""));
        let words = command_words(head);
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
            ["PUSH", stream] => {
                self.step.push(stream, body).map_err(err)?;
            }
            ["PUSH", stream, "PARTITION", p] => {
                let p = p
                    .parse()
                    .map_err(|_| SltError(format!("bad partition '{p}'")))?;
                self.step
                    .push_partition(stream, p, body.as_bytes().to_vec())
                    .map_err(err)?;
            }
            ["PARTITIONS", stream, n] => {
                let n = n
                    .parse()
                    .map_err(|_| SltError(format!("bad count '{n}'")))?;
                self.step.set_partitions(stream, n).map_err(err)?;
            }
            ["CLOCK", t] => match t.strip_prefix('+') {
                Some(d) => self.step.clock.advance(parse_time(d)?),
                None => self.step.clock.set(parse_time(t)?),
            },
            ["TICK", stream] => self.step.tick(stream).map_err(err)?,
            ["FINISH", stream] => self.step.finish(stream).map_err(err)?,
            ["OUTPUT", query] => {
                let batches = self.step.take_output(query);
                return Ok(Self::output(Self::rows(&batches)?));
            }
            ["ERRORS", query] => {
                let rows = self
                    .step
                    .take_errors(query)
                    .into_iter()
                    .map(|e| vec![e.kind.as_str().to_string(), e.reason, e.payload])
                    .collect();
                return Ok(Self::output(rows));
            }
            ["WATERMARK", stream] => {
                let wm = self
                    .step
                    .watermark(stream)
                    .map_or("NULL".to_string(), fmt_ts);
                return Ok(Self::output(vec![vec![wm]]));
            }
            ["COUNTERS", query] => {
                let q = self
                    .step
                    .query(query)
                    .ok_or_else(|| SltError(format!("no query '{query}'")))?;
                let c = q.counters;
                return Ok(Self::output(vec![vec![
                    c.rows_in.to_string(),
                    c.rows_out.to_string(),
                    c.late.to_string(),
                    c.errors.to_string(),
                ]]));
            }
            _ => {
                self.step.apply(sql).map_err(err)?;
            }
        }
        Ok(DBOutput::StatementComplete(0))
    }
}

fn run_file(path: &Path) -> Result<(), Failed> {
    let make = || async {
        Ok::<_, SltError>(Engine {
            step: Step::new(START_MS),
        })
    };
    let mut runner = sqllogictest::Runner::new(make);
    if std::env::var_os("SLT_COMPLETE").is_some() {
        let col_sep = " ";
        futures::executor::block_on(runner.update_test_file(
            path,
            col_sep,
            sqllogictest::default_validator,
            sqllogictest::default_normalizer,
            sqllogictest::default_column_validator,
        ))
        .map_err(|e| Failed::from(e.to_string()))?;
        return Ok(());
    }
    runner
        .run_file(path)
        .map_err(|e| Failed::from(e.display(true).to_string()))
}

fn main() {
    let args = Arguments::from_args();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/slt exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    let trials = files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            Trial::test(name, move || run_file(&p))
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
