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
    /// Evaluating the query failed for the record (for example a failed CAST).
    Eval,
}

impl RecordErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RecordErrorKind::Malformed => "malformed",
            RecordErrorKind::Schema => "schema",
            RecordErrorKind::Oversized => "oversized",
            RecordErrorKind::Late => "late",
            RecordErrorKind::Eval => "eval",
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
