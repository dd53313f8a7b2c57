//! Text → [`Statement`]s (sql layer, first step of every submitted application).
//!
//! One sqlparser `Parser` walks the whole file so every position is in the file's own
//! line:column. Our statements are read token by token here; standard ones
//! (`INSERT INTO … SELECT`, `SELECT`) are handed to sqlparser's own statement parser.

use datafusion::sql::sqlparser::ast::{self, Expr};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use super::{
    ColumnDef, CreateSink, CreateStream, DropStatement, Located, ObjectKind, Options,
    QueryStatement, Statement, WatermarkClause,
};
use crate::error::{Error, Position, Result};

/// sqlparser's own guard against deep recursion. `depth::check_tokens` refuses
/// nesting past [`crate::limits::MAX_EXPR_DEPTH`] before the parser sees it, with a
/// clearer message; this is the backstop, above what one level of nesting costs the
/// parser (up to 3 recursions, for a subquery in brackets), on the stack that
/// [`crate::limits::with_stack`] gives.
pub(crate) const RECURSION_LIMIT: usize = 3 * crate::limits::MAX_EXPR_DEPTH + 50;

/// Parses a whole application (one SQL file) into located statements, each within
/// the size and depth limits of [`super::depth`]. Callers run it on a stack sized for
/// those limits ([`crate::limits::with_stack`]).
pub fn parse_application(sql: &str) -> Result<Vec<Located>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| parser_error(e.into()))?;
    super::depth::check_tokens(&tokens)?;
    let mut p = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT)
        .with_tokens_with_locations(tokens);
    let lines = LineIndex::new(sql);
    let mut out = Vec::new();
    loop {
        while p.consume_token(&Token::SemiColon) {}
        let first = p.peek_token();
        if first.token == Token::EOF {
            break;
        }
        let start = pos(first.span.start);
        let statement = parse_statement(&mut p, start).map_err(|e| e.or_at(start))?;
        check_depth(&statement, start)?;
        let end = p.peek_token();
        match end.token {
            Token::SemiColon | Token::EOF => {}
            ref other => {
                return Err(Error::user_at(
                    format!(
                        "expected ';' or the end of the file after the statement, found '{other}'"
                    ),
                    pos(end.span.start),
                ));
            }
        }
        let text = lines
            .slice(sql, first.span.start, end.span.start)
            .trim()
            .to_string();
        out.push(Located {
            statement,
            position: start,
            text,
        });
    }
    Ok(out)
}

/// The depth limit, on every expression a statement holds.
fn check_depth(statement: &Statement, start: Position) -> Result<()> {
    match statement {
        Statement::Query(q) => super::depth::check_query_depth(&q.query, start),
        // The WATERMARK expression is checked as it is parsed (`parse_watermark`).
        Statement::CreateStream(_) | Statement::CreateSink(_) | Statement::Drop(_) => Ok(()),
    }
}

fn parse_statement(p: &mut Parser, start: Position) -> Result<Statement> {
    if p.peek_keyword(Keyword::CREATE) {
        // `CREATE OR REPLACE STREAM | SINK | QUERY`: the kind is one word further.
        let or_replace =
            word_at(p, 1).as_deref() == Some("OR") && word_at(p, 2).as_deref() == Some("REPLACE");
        let kind_at = if or_replace { 3 } else { 1 };
        let kind = word_at(p, kind_at);
        if matches!(kind.as_deref(), Some("STREAM" | "SINK" | "QUERY")) {
            for _ in 0..=kind_at {
                p.next_token();
            }
            if or_replace {
                let t = p.peek_token();
                if p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]) {
                    return Err(Error::user_at(
                        "CREATE OR REPLACE and IF NOT EXISTS contradict each other: use one",
                        pos(t.span.start),
                    ));
                }
            }
        }
        match kind.as_deref() {
            Some("STREAM") => {
                let mut s = parse_create_stream(p, start)?;
                s.or_replace = or_replace;
                return Ok(Statement::CreateStream(Box::new(s)));
            }
            Some("SINK") => {
                let mut s = parse_create_sink(p, start)?;
                s.or_replace = or_replace;
                return Ok(Statement::CreateSink(s));
            }
            Some("QUERY") => {
                let name = parse_name(p)?;
                p.expect_keyword(Keyword::AS).map_err(parser_error)?;
                let mut q = parse_query_statement(p, start)?;
                q.name = Some(name);
                q.or_replace = or_replace;
                return Ok(Statement::Query(q));
            }
            _ => {
                let t = p.peek_nth_token(kind_at);
                let after = if or_replace {
                    "CREATE OR REPLACE"
                } else {
                    "CREATE"
                };
                return Err(Error::user_at(
                    format!(
                        "expected STREAM, SINK or QUERY after {after}, found '{}' (tables, views \
                         and other DDL are not available in Sluice applications)",
                        t.token
                    ),
                    pos(t.span.start),
                ));
            }
        }
    }
    if p.peek_keyword(Keyword::DROP) {
        p.next_token();
        let t = p.next_token();
        let kind = match word(&t).as_deref() {
            Some("STREAM") => ObjectKind::Stream,
            Some("SINK") => ObjectKind::Sink,
            Some("QUERY") => ObjectKind::Query,
            _ => {
                return Err(Error::user_at(
                    format!(
                        "expected STREAM, SINK or QUERY after DROP, found '{}'",
                        t.token
                    ),
                    pos(t.span.start),
                ));
            }
        };
        let if_exists = p.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let name = parse_name(p)?;
        return Ok(Statement::Drop(DropStatement {
            kind,
            name,
            if_exists,
            position: start,
        }));
    }
    parse_query_statement(p, start).map(Statement::Query)
}

/// `INSERT INTO sink SELECT …` or a bare query; anything else is refused here, so no
/// DataFusion DDL, DML or COPY statement can reach the planner.
fn parse_query_statement(p: &mut Parser, start: Position) -> Result<QueryStatement> {
    let t = p.peek_token();
    let is_query = p.peek_keyword(Keyword::SELECT)
        || p.peek_keyword(Keyword::WITH)
        || p.peek_keyword(Keyword::INSERT)
        || p.peek_keyword(Keyword::VALUES)
        || t.token == Token::LParen;
    if !is_query {
        // After `CREATE QUERY name AS` only a query may follow; elsewhere, any
        // statement of an application could have been meant.
        // (A token before this one exists only when it is not the statement's first.)
        let after_as = pos(t.span.start) != start && {
            p.prev_token();
            let after = p.peek_keyword(Keyword::AS);
            p.next_token();
            after
        };
        let (expected, words): (&str, &[&str]) = if after_as {
            (
                "SELECT, INSERT INTO … SELECT or WITH after AS",
                &["SELECT", "INSERT", "WITH"],
            )
        } else {
            (
                "CREATE STREAM, CREATE SINK, CREATE QUERY, INSERT INTO … SELECT, SELECT or DROP",
                &["CREATE", "SELECT", "INSERT", "WITH", "DROP"],
            )
        };
        let hint = match word(&t).and_then(|w| crate::error::closest(&w, words.iter().copied())) {
            Some(k) => format!("; did you mean {k}?"),
            None => String::new(),
        };
        return Err(Error::user_at(
            format!("expected {expected}, found '{}'{hint}", t.token),
            pos(t.span.start),
        ));
    }
    match p.parse_statement().map_err(parser_error)? {
        ast::Statement::Query(query) => Ok(QueryStatement {
            name: None,
            or_replace: false,
            sink: None,
            query,
            position: start,
        }),
        ast::Statement::Insert(insert) => {
            let sink = match &insert.table {
                ast::TableObject::TableName(name) => object_name(name)?,
                other => {
                    return Err(Error::user(format!(
                        "INSERT INTO needs a sink name, found '{other}'"
                    )));
                }
            };
            let unsupported = !insert.columns.is_empty()
                || insert.overwrite
                || insert.on.is_some()
                || insert.returning.is_some()
                || insert.partitioned.is_some()
                || !insert.assignments.is_empty();
            if unsupported {
                return Err(Error::user(
                    "INSERT INTO a sink takes only a query: INSERT INTO sink SELECT …".to_string(),
                ));
            }
            let query = insert
                .source
                .ok_or_else(|| Error::user("INSERT INTO a sink needs a SELECT".to_string()))?;
            Ok(QueryStatement {
                name: None,
                or_replace: false,
                sink: Some(sink),
                query,
                position: start,
            })
        }
        other => Err(Error::user(format!(
            "only INSERT INTO … SELECT and SELECT can run as queries, not '{}'",
            first_words(&other.to_string())
        ))),
    }
}

fn parse_create_stream(p: &mut Parser, start: Position) -> Result<CreateStream> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parse_name(p)?;
    let open = p.peek_token();
    p.expect_token(&Token::LParen).map_err(parser_error)?;
    let mut columns: Vec<ColumnDef> = Vec::new();
    let mut watermark: Option<WatermarkClause> = None;
    if p.consume_token(&Token::RParen) {
        return Err(Error::user_at(
            format!("stream '{name}' needs at least one column"),
            pos(open.span.start),
        ));
    }
    loop {
        let t = p.peek_token();
        if word(&t).as_deref() == Some("WATERMARK") {
            p.next_token();
            if watermark.is_some() {
                return Err(Error::user_at(
                    "WATERMARK is declared twice",
                    pos(t.span.start),
                ));
            }
            watermark = Some(parse_watermark(p, pos(t.span.start))?);
        } else {
            let column = parse_column(p)?;
            if columns.iter().any(|c| c.name == column.name) {
                return Err(Error::user_at(
                    format!("column '{}' is declared twice", column.name),
                    column.position,
                ));
            }
            columns.push(column);
        }
        if p.consume_token(&Token::Comma) {
            continue;
        }
        p.expect_token(&Token::RParen).map_err(parser_error)?;
        break;
    }
    let mut options = parse_with(p)?;
    if options.position.line == 0 {
        options.position = start;
    }
    Ok(CreateStream {
        name,
        if_not_exists,
        or_replace: false,
        columns,
        watermark,
        options,
        position: start,
    })
}

/// `name TYPE [NOT NULL | NULL] [PATH 'a.b.c' | METADATA [FROM 'key']]`
fn parse_column(p: &mut Parser) -> Result<ColumnDef> {
    let t = p.peek_token();
    let ident = p.parse_identifier().map_err(parser_error)?;
    let sql_type = p.parse_data_type().map_err(parser_error)?;
    let mut nullable = true;
    let mut path = vec![ident.value.clone()];
    let mut has_path = false;
    let mut metadata: Option<String> = None;
    loop {
        if word_at(p, 0).as_deref() == Some("METADATA") {
            let at = p.next_token();
            let key = if p.parse_keyword(Keyword::FROM) {
                p.parse_literal_string().map_err(parser_error)?
            } else {
                ident.value.clone()
            };
            if has_path {
                return Err(Error::user_at(
                    "a column is read either from the JSON (PATH) or from the source (METADATA), not both",
                    pos(at.span.start),
                ));
            }
            metadata = Some(key);
            continue;
        }
        if p.parse_keywords(&[Keyword::NOT, Keyword::NULL]) {
            nullable = false;
        } else if p.parse_keyword(Keyword::NULL) {
            nullable = true;
        } else if word_at(p, 0).as_deref() == Some("PATH") {
            let kw = p.next_token();
            if metadata.is_some() {
                return Err(Error::user_at(
                    "a column is read either from the JSON (PATH) or from the source (METADATA), not both",
                    pos(kw.span.start),
                ));
            }
            has_path = true;
            let at = p.peek_token();
            let raw = p.parse_literal_string().map_err(parser_error)?;
            path = parse_json_path(&raw).ok_or_else(|| {
                Error::user_at(
                    format!(
                        "invalid PATH '{raw}': write field names separated by dots, like \
                         '$.reading.temp' or 'reading.temp'"
                    ),
                    pos(at.span.start),
                )
            })?;
        } else {
            break;
        }
    }
    Ok(ColumnDef {
        name: ident.value,
        sql_type,
        nullable,
        path,
        metadata,
        position: pos(t.span.start),
    })
}

/// `$.a.b`, `a.b` or `$['a']['b']` → `[a, b]`.
fn parse_json_path(raw: &str) -> Option<Vec<String>> {
    let s = raw.trim();
    let s = s.strip_prefix('$').unwrap_or(s);
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']")?;
            out.push(r[..end].to_string());
            rest = &r[end + 2..];
        } else {
            let r = rest.strip_prefix('.').unwrap_or(rest);
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return None;
            }
            out.push(r[..end].to_string());
            rest = &r[end..];
        }
    }
    (!out.is_empty()).then_some(out)
}

/// After `WATERMARK`: `FOR col AS col [- INTERVAL …]`.
fn parse_watermark(p: &mut Parser, at: Position) -> Result<WatermarkClause> {
    p.expect_keyword(Keyword::FOR).map_err(parser_error)?;
    let column = p.parse_identifier().map_err(parser_error)?.value;
    p.expect_keyword(Keyword::AS).map_err(parser_error)?;
    let expr_at = pos(p.peek_token().span.start);
    let expr = p.parse_expr().map_err(parser_error)?;
    super::depth::check_expr_depth(&expr, expr_at)?;
    let shape_error = || {
        Error::user_at(
            format!(
                "WATERMARK FOR {column} AS … must be '{column}' or '{column} - INTERVAL …', \
                 found '{expr}'"
            ),
            expr_at,
        )
    };
    let delay = match &expr {
        Expr::Identifier(id) if id.value == column => None,
        Expr::BinaryOp {
            left,
            op: ast::BinaryOperator::Minus,
            right,
        } => match left.as_ref() {
            Expr::Identifier(id) if id.value == column => Some(right.as_ref().clone()),
            _ => return Err(shape_error()),
        },
        _ => return Err(shape_error()),
    };
    Ok(WatermarkClause {
        column,
        delay,
        position: at,
    })
}

fn parse_create_sink(p: &mut Parser, start: Position) -> Result<CreateSink> {
    let if_not_exists = p.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parse_name(p)?;
    let mut options = parse_with(p)?;
    if options.position.line == 0 {
        options.position = start;
    }
    Ok(CreateSink {
        name,
        if_not_exists,
        or_replace: false,
        options,
        position: start,
    })
}

/// `WITH (key = value, …)`; values are strings, numbers, booleans or bare words.
fn parse_with(p: &mut Parser) -> Result<Options> {
    let at = pos(p.peek_token().span.start);
    let mut options = Options::new(at);
    if !p.parse_keyword(Keyword::WITH) {
        return Ok(options);
    }
    p.expect_token(&Token::LParen).map_err(parser_error)?;
    if p.consume_token(&Token::RParen) {
        return Ok(options);
    }
    loop {
        let key_tok = p.peek_token();
        let key = p.parse_identifier().map_err(parser_error)?.value;
        // `'a.b' = …` style keys arrive as quoted identifiers too.
        p.expect_token(&Token::Eq).map_err(parser_error)?;
        let value_tok = p.next_token();
        let value = match &value_tok.token {
            Token::SingleQuotedString(s) | Token::DoubleQuotedString(s) => s.clone(),
            Token::Number(n, _) => n.clone(),
            Token::Word(w) => w.value.clone(),
            Token::Minus => match p.next_token().token {
                Token::Number(n, _) => format!("-{n}"),
                other => {
                    return Err(Error::user_at(
                        format!("option '{key}' needs a value, found '-{other}'"),
                        pos(value_tok.span.start),
                    ));
                }
            },
            other => {
                return Err(Error::user_at(
                    format!(
                        "option '{key}' needs a value (a 'string' or a number), found '{other}'"
                    ),
                    pos(value_tok.span.start),
                ));
            }
        };
        options.insert(&key, value, pos(key_tok.span.start))?;
        if p.consume_token(&Token::Comma) {
            continue;
        }
        p.expect_token(&Token::RParen).map_err(parser_error)?;
        return Ok(options);
    }
}

/// The name a stream, sink or query is created (or dropped) by. Any text may be a
/// name when quoted, except what could not name a file under the data directory
/// (archives and checkpoints are named after their sink or stream).
fn parse_name(p: &mut Parser) -> Result<String> {
    let at = pos(p.peek_token().span.start);
    let name = p.parse_object_name(false).map_err(parser_error)?;
    let name = object_name(&name).map_err(|e| e.or_at(at))?;
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(Error::user_at(
            format!(
                "'{name}' cannot be a name: names may not be empty, '.' or '..', nor contain \
                 '/', '\\' or control characters"
            ),
            at,
        ));
    }
    Ok(name)
}

/// Streams, sinks and queries live in one flat namespace: `a.b` is refused.
fn object_name(name: &ast::ObjectName) -> Result<String> {
    match name.0.as_slice() {
        [ast::ObjectNamePart::Identifier(id)] => Ok(id.value.clone()),
        _ => Err(Error::user(format!(
            "'{name}' is not a valid name: use a single identifier (quoted, \"{}\", it may \
             hold dots)",
            name.to_string().replace('"', "")
        ))),
    }
}

fn word(t: &TokenWithSpan) -> Option<String> {
    match &t.token {
        Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

fn word_at(p: &Parser, n: usize) -> Option<String> {
    word(&p.peek_nth_token(n))
}

fn first_words(s: &str) -> String {
    s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn pos(l: Location) -> Position {
    Position {
        line: l.line,
        column: l.column,
    }
}

/// sqlparser reports positions inside its message ("… at Line: 2, Column: 7"); pull
/// them out so every error has the same `line:column: message` shape.
pub(crate) fn parser_error(e: ParserError) -> Error {
    let text = match &e {
        ParserError::TokenizerError(s) | ParserError::ParserError(s) => s.clone(),
        ParserError::RecursionLimitExceeded => {
            return Error::user(format!(
                "the statement is nested too deeply: expressions may nest at most {} levels",
                crate::limits::MAX_EXPR_DEPTH
            ));
        }
    };
    match text.rfind(" at Line: ") {
        Some(i) => {
            let tail = &text[i + " at Line: ".len()..];
            let mut parts = tail.split(", Column: ");
            let line = parts.next().and_then(|l| l.trim().parse().ok());
            let column = parts.next().and_then(|c| {
                c.trim_end_matches(|ch: char| !ch.is_ascii_digit())
                    .parse()
                    .ok()
            });
            match (line, column) {
                (Some(line), Some(column)) => {
                    Error::user_at(text[..i].to_string(), Position { line, column })
                }
                _ => Error::user(text),
            }
        }
        None => Error::user(text),
    }
}

/// Maps sqlparser's (line, column) locations back to byte offsets in the text.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(s: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(s.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn offset(&self, s: &str, l: Location) -> usize {
        if l.line == 0 {
            return s.len();
        }
        let Some(&start) = self.starts.get(l.line as usize - 1) else {
            return s.len();
        };
        s[start..]
            .char_indices()
            .nth(l.column.saturating_sub(1) as usize)
            .map(|(i, _)| start + i)
            .unwrap_or(s.len())
    }

    fn slice<'a>(&self, s: &'a str, from: Location, to: Location) -> &'a str {
        let a = self.offset(s, from);
        let b = self.offset(s, to).max(a);
        &s[a..b]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_whole_application() {
        let sql = "-- demo\nCREATE STREAM r (\n  deviceId INT NOT NULL,\n  temp DOUBLE PATH '$.reading.temp',\n  ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH (connector = 'file', path = 'x.jsonl');\nCREATE SINK out WITH (connector = 'stdout');\nINSERT INTO out SELECT deviceId FROM r WHERE temp > 50;\nDROP QUERY IF EXISTS q1;";
        let stmts = parse_application(sql).unwrap();
        assert_eq!(stmts.len(), 4);
        let Statement::CreateStream(s) = &stmts[0].statement else {
            panic!()
        };
        assert_eq!(s.columns.len(), 3);
        assert_eq!(s.columns[0].name, "deviceId");
        assert!(!s.columns[0].nullable);
        assert_eq!(s.columns[1].path, vec!["reading", "temp"]);
        assert_eq!(s.watermark.as_ref().unwrap().column, "ts");
        assert_eq!(stmts[0].position, Position { line: 2, column: 1 });
        let Statement::Query(q) = &stmts[2].statement else {
            panic!()
        };
        assert_eq!(q.sink.as_deref(), Some("out"));
        assert_eq!(
            stmts[2].text,
            "INSERT INTO out SELECT deviceId FROM r WHERE temp > 50"
        );
        let Statement::Drop(d) = &stmts[3].statement else {
            panic!()
        };
        assert!(d.if_exists && d.kind == ObjectKind::Query);
    }

    #[test]
    fn errors_have_positions() {
        let e = parse_application("CREATE STREAM s (a INT,\n  , b INT)").unwrap_err();
        assert!(e.to_string().starts_with("2:"), "{e}");
        let e = parse_application("SELECT 1;\nCREATE TABLE t (a INT)").unwrap_err();
        assert_eq!(
            e.to_string(),
            "2:8: expected STREAM, SINK or QUERY after CREATE, found 'TABLE' (tables, views and other DDL are not available in Sluice applications)"
        );
        let e = parse_application("COPY t TO '/etc/passwd'").unwrap_err();
        assert!(
            e.to_string().starts_with("1:1: expected CREATE STREAM"),
            "{e}"
        );
    }

    #[test]
    fn json_paths() {
        assert_eq!(parse_json_path("$.a.b").unwrap(), vec!["a", "b"]);
        assert_eq!(parse_json_path("a").unwrap(), vec!["a"]);
        assert_eq!(parse_json_path("$['a.b'].c").unwrap(), vec!["a.b", "c"]);
        assert!(parse_json_path("$..a").is_none());
    }
}
