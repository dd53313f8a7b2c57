//! Errors, classified by who must act (used by every layer).
//!
//! Like DataFusion's error enum, the variant says whose fault it was, because that
//! decides what happens next: a [`Error::User`] mistake (bad SQL, bad options) is
//! reported with its position and never retried; an [`Error::External`] failure (a
//! file, a broker, a store) may be retried by the component that met it; an
//! [`Error::Internal`] one is a bug in Sluice. The CLI maps them to exit codes and the
//! HTTP API to status codes, each once, at its boundary.

use std::fmt;

/// A position in a SQL text, 1-based like editors show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Every fallible operation in Sluice returns this.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user's SQL or options are wrong. `position` points into the submitted text
    /// when the mistake can be located there.
    #[error("{}{message}", position.map(|p| format!("{p}: ")).unwrap_or_default())]
    User {
        message: String,
        position: Option<Position>,
    },
    /// The request is well-formed but clashes with what exists (a CREATE of a name
    /// defined differently, a DROP of something in use): the user must act, by
    /// replacing or dropping first.
    #[error("{}{message}", position.map(|p| format!("{p}: ")).unwrap_or_default())]
    Conflict {
        message: String,
        position: Option<Position>,
    },
    /// Something outside Sluice failed (an input file, a broker, a store).
    #[error("{0}")]
    External(String),
    /// A bug in Sluice: an invariant did not hold.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn user(message: impl Into<String>) -> Self {
        Error::User {
            message: message.into(),
            position: None,
        }
    }

    pub fn user_at(message: impl Into<String>, position: Position) -> Self {
        Error::User {
            message: message.into(),
            position: Some(position),
        }
    }

    pub fn conflict_at(message: impl Into<String>, position: Position) -> Self {
        Error::Conflict {
            message: message.into(),
            position: Some(position),
        }
    }

    pub fn external(message: impl Into<String>) -> Self {
        Error::External(message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal(message.into())
    }

    /// Attaches a position to a user error that has none yet.
    pub fn or_at(self, at: Position) -> Self {
        match self {
            Error::User {
                message,
                position: None,
            } => Error::User {
                message,
                position: Some(at),
            },
            Error::Conflict {
                message,
                position: None,
            } => Error::Conflict {
                message,
                position: Some(at),
            },
            other => other,
        }
    }

    /// The same error without a position: for errors about statements Sluice wrote
    /// itself (an API action turned into SQL), whose positions mean nothing to the
    /// user.
    pub fn without_position(self) -> Self {
        match self {
            Error::User { message, .. } => Error::User {
                message,
                position: None,
            },
            Error::Conflict { message, .. } => Error::Conflict {
                message,
                position: None,
            },
            other => other,
        }
    }

    /// True when the user must change their input (or act on what exists); false
    /// when retrying may help or the fault is ours.
    pub fn is_user(&self) -> bool {
        matches!(self, Error::User { .. } | Error::Conflict { .. })
    }
}

/// DataFusion errors met while planning user SQL are the user's; those met while
/// executing a planned expression on a batch are ours unless DataFusion says the
/// input was at fault (for example a failed cast of a value).
impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        match e.find_root() {
            D::Internal(m) => Error::Internal(m.clone()),
            D::IoError(io) => Error::External(io.to_string()),
            _ => Error::User {
                message: strip_df_prefix(&e.to_string()),
                position: None,
            },
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        Error::User {
            message: e.to_string(),
            position: None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::External(e.to_string())
    }
}

/// DataFusion prefixes messages with the error class ("Error during planning: ");
/// users read the sentence, not the class.
fn strip_df_prefix(m: &str) -> String {
    const PREFIXES: [&str; 6] = [
        "Arrow error: ",
        "Error during planning: ",
        "Schema error: ",
        "SQL error: ",
        "Execution error: ",
        "This feature is not implemented: ",
    ];
    let mut s = m;
    loop {
        let before = s;
        for p in PREFIXES {
            if let Some(rest) = s.strip_prefix(p) {
                s = rest;
            }
        }
        if s == before {
            return s.trim().to_string();
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The candidate `name` most likely meant: the same name in another case, else the
/// closest one within a couple of typos (`devcies` → `devices`, `topic` → `topics`).
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        if c == name {
            continue;
        }
        let d = if c.to_lowercase() == lower {
            0
        } else {
            edit_distance(&lower, &c.to_lowercase())
        };
        // One typo in a short name, two in a longer one: more would suggest names
        // that merely look alike.
        // Nor may the typos be most of the name (`y` is not a typo of `x`).
        let len = name.chars().count().min(c.chars().count());
        let allowed = if len <= 4 { 1 } else { 2 };
        if d <= allowed && (d == 0 || d < len) && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// `"; did you mean 'X'?"` for a name that is not known, with a reminder that names
/// are case-sensitive when `X` differs from it only in case; empty when nothing is
/// close.
pub fn name_hint<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    match closest(name, known) {
        Some(c) if c.to_lowercase() == name.to_lowercase() => {
            format!("; did you mean '{c}'? Names are case-sensitive")
        }
        Some(c) => format!("; did you mean '{c}'?"),
        None => String::new(),
    }
}

/// Edits (insert, delete, replace, swap two neighbours) between two strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    // Three rows of the optimal-string-alignment table are enough.
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(before[j - 2] + 1);
            }
            cur[j] = d;
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Why one record could not be processed. Per-record errors are values routed to the
/// query's error output (never panics, never a log line per row) and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordErrorKind {
    /// Not valid JSON, or not a JSON object.
    Malformed,
    /// A value of the wrong type, or a required field missing or null.
    Schema,
    /// Larger than the stream's maximum record size.
    Oversized,
    /// Older than the watermark for a window that already closed.
    Late,
    /// Its event time is further ahead of the wall clock than the stream's
    /// `max_future`: taken, it would move the watermark past every other record.
    Future,
    /// Evaluating the query failed for the record (for example a failed CAST).
    Eval,
    /// Sluice could not process the record for a reason of its own (a bug): it is
    /// kept here, with the reason, rather than lost or retried forever.
    Internal,
}

impl RecordErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordErrorKind::Malformed => "malformed",
            RecordErrorKind::Schema => "schema",
            RecordErrorKind::Oversized => "oversized",
            RecordErrorKind::Late => "late",
            RecordErrorKind::Future => "future",
            RecordErrorKind::Eval => "eval",
            RecordErrorKind::Internal => "internal",
        }
    }
}

/// One record that went to the error output, with the reason and the raw payload.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordError {
    pub kind: RecordErrorKind,
    pub reason: String,
    /// The record as received (or, for late records, as decoded), so it can be replayed.
    pub payload: String,
    /// Wall-clock time it arrived, ms since the epoch.
    pub arrival_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_name_the_close_candidate() {
        let known = ["WEATHERSTREAM", "devices", "topics", "readings"];
        assert_eq!(
            name_hint("weatherstream", known),
            "; did you mean 'WEATHERSTREAM'? Names are case-sensitive"
        );
        assert_eq!(name_hint("devcies", known), "; did you mean 'devices'?");
        assert_eq!(name_hint("topic", known), "; did you mean 'topics'?");
        assert_eq!(name_hint("x", known), "");
        assert_eq!(
            name_hint("y", ["x"]),
            "",
            "one letter replaced is not a typo"
        );
        assert_eq!(
            name_hint("readings", known),
            "",
            "a known name needs no hint"
        );
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("ab", "ba"), 1);
    }

    /// A string continued onto the next line without its `\` keeps the indentation:
    /// a run of spaces in the middle of a message. None may be left in the sources.
    #[test]
    fn no_message_has_a_run_of_spaces() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, line) in text.lines().enumerate() {
                    if let Some(run) = spaced_literal(line) {
                        found.push(format!("{}:{}: {run}", path.display(), i + 1));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "runs of spaces in strings:\n{}",
            found.join("\n")
        );
    }

    /// The first string literal on a line with a word, three or more spaces, then
    /// another word inside it (tables in test expectations use `|`, not words).
    fn spaced_literal(line: &str) -> Option<&str> {
        let code = line.trim_start();
        if code.starts_with("//") {
            return None;
        }
        let mut rest = code;
        while let Some(open) = rest.find('"') {
            let body = &rest[open + 1..];
            let mut end = None;
            let mut escaped = false;
            for (i, c) in body.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            let end = end?;
            let literal = &body[..end];
            let chars: Vec<char> = literal.chars().collect();
            for (i, w) in chars.windows(5).enumerate() {
                let word = |c: char| c.is_alphanumeric() || "'.,;:)(".contains(c);
                if word(w[0]) && w[1..4] == [' '; 3] {
                    let after = chars[i + 4..].iter().find(|&&c| c != ' ');
                    if after.is_some_and(|&c| word(c)) {
                        return Some(literal);
                    }
                }
            }
            rest = &body[end + 1..];
        }
        None
    }
}
