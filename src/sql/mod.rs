//! The SQL surface (first stop of a submitted application): our statements parsed from
//! text, and queries planned into what the engine runs.
//!
//! ```text
//! app.sql ──parse──> [Statement] ──catalog──> CREATE STREAM / SINK definitions
//!                                   └──plan──> QueryPlan (DataFusion logical plan → engine operators)
//! ```
//!
//! Stock sqlparser has no `CREATE STREAM`, `CREATE SINK`, `WATERMARK FOR` or
//! `DROP QUERY`, so [`parser`] reads those itself on top of sqlparser's tokenizer and
//! expression parser, and hands `INSERT INTO … SELECT` and `SELECT` to sqlparser whole.
//! Planning ([`planner`]) is DataFusion's: types and functions come from it; its errors
//! are put in Sluice's words, at the offending token, by `diagnose`.

pub mod bounded;
pub mod depth;
pub(crate) mod diagnose;
pub mod options;
pub mod parser;
pub mod planner;
mod rewrite;

use datafusion::sql::sqlparser::ast;

use crate::error::Position;
pub use diagnose::sql_type;
pub use options::Options;
pub use parser::parse_application;

/// One statement of an application, with where it starts and its source text.
#[derive(Debug, Clone)]
pub struct Located {
    pub statement: Statement,
    pub position: Position,
    /// The statement's text as the user wrote it (kept for the catalog and the API).
    pub text: String,
}

#[derive(Debug, Clone)]
pub enum Statement {
    CreateStream(Box<CreateStream>),
    CreateSink(CreateSink),
    Query(QueryStatement),
    Drop(DropStatement),
}

/// `CREATE STREAM name (columns…, [WATERMARK FOR col AS col - INTERVAL …]) WITH (…)`.
#[derive(Debug, Clone)]
pub struct CreateStream {
    pub name: String,
    pub if_not_exists: bool,
    /// `CREATE OR REPLACE`: an existing stream of that name is replaced.
    pub or_replace: bool,
    pub columns: Vec<ColumnDef>,
    /// `WATERMARK FOR` clause, when written in the column list.
    pub watermark: Option<WatermarkClause>,
    pub options: Options,
    pub position: Position,
}

/// A typed stream column and where its value comes from in each JSON record.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    /// The name SQL uses (identifiers are case-sensitive, as written).
    pub name: String,
    /// The type as written; the planner resolves it to an Arrow type.
    pub sql_type: ast::DataType,
    pub nullable: bool,
    /// JSON path: field names from the record's top level down. Defaults to `[name]`.
    pub path: Vec<String>,
    /// `METADATA [FROM 'key']`: the value comes from the source (MQTT topic, Kinesis
    /// shard…), not from the JSON; the key defaults to the column name.
    pub metadata: Option<String>,
    pub position: Position,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkClause {
    pub column: String,
    /// `INTERVAL …` subtracted from the column (`None`: no delay).
    pub delay: Option<ast::Expr>,
    pub position: Position,
}

/// `CREATE SINK name WITH (connector = '…', …)`.
#[derive(Debug, Clone)]
pub struct CreateSink {
    pub name: String,
    pub if_not_exists: bool,
    /// `CREATE OR REPLACE`: an existing sink of that name is replaced.
    pub or_replace: bool,
    pub options: Options,
    pub position: Position,
}

/// A continuous query: `[CREATE QUERY name AS] INSERT INTO sink SELECT …`, or a bare
/// `SELECT …` whose output is only observable live.
#[derive(Debug, Clone)]
pub struct QueryStatement {
    /// Given with `CREATE QUERY name AS`; otherwise the catalog names the query.
    pub name: Option<String>,
    /// `CREATE OR REPLACE QUERY`: an existing query of that name is replaced.
    pub or_replace: bool,
    pub sink: Option<String>,
    pub query: Box<ast::Query>,
    pub position: Position,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Stream,
    Sink,
    Query,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Stream => "stream",
            ObjectKind::Sink => "sink",
            ObjectKind::Query => "query",
        })
    }
}

/// `DROP STREAM | SINK | QUERY [IF EXISTS] name`.
#[derive(Debug, Clone)]
pub struct DropStatement {
    pub kind: ObjectKind,
    pub name: String,
    pub if_exists: bool,
    pub position: Position,
}

/// A statement's text with comments and layout taken out (tokens joined by one
/// space): two statements with the same normal form define the same object, so
/// resubmitting an application that only gained a comment changes nothing.
pub fn normal_form(text: &str) -> String {
    normal_tokens(text).join(" ")
}

/// The tokens of [`normal_form`]: no whitespace, comments or `;`.
pub fn normal_tokens(text: &str) -> Vec<String> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let dialect = GenericDialect {};
    match Tokenizer::new(&dialect, text).tokenize() {
        Ok(tokens) => tokens
            .iter()
            .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
            .map(|t| t.to_string())
            .collect(),
        // Text that does not tokenize never reached the catalog; compare it as is.
        Err(_) => text.split_whitespace().map(str::to_string).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::normal_form;

    #[test]
    fn normal_form_ignores_layout_and_comments_but_not_case_or_strings() {
        let a = "CREATE SINK s WITH (connector = 'stdout') -- the console";
        let b = "CREATE  SINK s\n  /* same */ WITH (connector='stdout');";
        assert_eq!(normal_form(a), normal_form(b));
        assert_ne!(
            normal_form(a),
            normal_form("CREATE SINK S WITH (connector = 'stdout')")
        );
        assert_ne!(
            normal_form("SELECT 'a  b' FROM s"),
            normal_form("SELECT 'a b' FROM s")
        );
    }
}
