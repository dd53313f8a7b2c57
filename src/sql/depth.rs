//! How big and how deep one statement may be (sql layer, between the tokenizer and
//! everything that walks a parsed statement).
//!
//! A parsed statement is a tree, and nearly everything done with it recurses: dropping
//! or cloning it, printing it, DataFusion's planning, the physical expressions that
//! evaluate it on every batch. sqlparser's recursion limit stops deep *parentheses*,
//! but a chain such as `x + 1 + 1 + …`, `x::int::int…` or `a OR b OR c …` is parsed
//! in a loop into a tree as deep as it is long, and 2,000 terms (4 KB of SQL)
//! overflowed the stack. So every statement passes two checks before anything
//! recursive touches it:
//!
//! - [`check_tokens`], before parsing: at most [`MAX_STATEMENT_TOKENS`] tokens a
//!   statement. A tree cannot be deeper than its statement has tokens, so this bounds
//!   the depth of anything that must still be dropped after a refusal.
//! - [`check_depth`], right after parsing: expressions nested at most
//!   [`MAX_EXPR_DEPTH`] levels, counting every operator of a chain, every function
//!   call, CASE, cast and subquery, and set operations (`UNION` chains) as deep.
//!   The check itself stops descending once past the limit.
//!
//! Both run on a stack sized for these limits ([`crate::limits::with_stack`]).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, ObjectName, Query, SetExpr, Spanned, Statement, Visit, Visitor,
};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan};

use crate::error::{Error, Position, Result};
pub use crate::limits::{MAX_EXPR_DEPTH, MAX_RELATIONS, MAX_STATEMENT_TOKENS, MAX_SUBQUERY_DEPTH};

/// Refuses, before parsing, a statement of more than [`MAX_STATEMENT_TOKENS`] tokens
/// (whitespace and comments do not count; `;` ends a statement), and one whose
/// brackets, CASEs and runs of prefix operators (`NOT NOT …`, `- - …`) nest more than
/// [`MAX_EXPR_DEPTH`] deep, at the token past the limit. sqlparser parses those
/// recursively and stops at its own recursion limit, but not always with a message
/// that says so; each is at least one level of the parsed expression, so this never
/// refuses what [`check_depth`] would accept.
pub fn check_tokens(tokens: &[TokenWithSpan]) -> Result<()> {
    let mut count = 0usize;
    let mut start: Option<Position> = None;
    // Open brackets and CASEs, and the prefix operators in a row just before.
    let (mut open, mut prefix) = (0usize, 0usize);
    for t in tokens {
        match &t.token {
            Token::Whitespace(_) | Token::EOF => continue,
            Token::SemiColon => {
                (count, open, prefix) = (0, 0, 0);
                start = None;
                continue;
            }
            _ => {}
        }
        let at = Position {
            line: t.span.start.line,
            column: t.span.start.column,
        };
        let first = *start.get_or_insert(at);
        count += 1;
        if count > MAX_STATEMENT_TOKENS {
            return Err(Error::user_at(
                format!(
                    "the statement starting at {first} is longer than {MAX_STATEMENT_TOKENS} \
                     tokens (words, numbers, operators), the most one statement may have: \
                     split it into smaller statements or shorter expressions"
                ),
                at,
            ));
        }
        let keyword = match &t.token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.keyword),
            _ => None,
        };
        match (&t.token, keyword) {
            (Token::LParen | Token::LBracket | Token::LBrace, _) | (_, Some(Keyword::CASE)) => {
                open += 1
            }
            (Token::RParen | Token::RBracket | Token::RBrace, _) | (_, Some(Keyword::END)) => {
                open = open.saturating_sub(1)
            }
            _ => {}
        }
        prefix = match (&t.token, keyword) {
            (Token::Minus | Token::Plus | Token::Tilde | Token::ExclamationMark, _)
            | (_, Some(Keyword::NOT)) => prefix + 1,
            _ => 0,
        };
        if open + prefix > MAX_EXPR_DEPTH {
            return Err(too_deep("this expression is", at));
        }
    }
    Ok(())
}

/// The refusal of anything nested too deep, wherever it was found.
pub(crate) fn too_deep(what: &str, at: Position) -> Error {
    Error::user_at(
        format!(
            "{what} nested more than {MAX_EXPR_DEPTH} levels deep, the most Sluice accepts \
             (each operator of a chain such as a + b + c counts as a level, as does each \
             bracket, function call, CASE, cast or subquery): write it in smaller parts, for \
             example with IN (…) instead of a chain of OR, or compute parts in a subquery"
        ),
        at,
    )
}

/// Refuses a statement whose expressions (or set operations) nest more than
/// [`MAX_EXPR_DEPTH`] levels deep, at the expression where the limit is passed.
/// `fallback` positions the error when the statement carries no spans.
pub fn check_depth(statement: &Statement, fallback: Position) -> Result<()> {
    let mut v = Depth {
        depth: 0,
        queries: Vec::new(),
        fallback,
    };
    if let ControlFlow::Break(e) = statement.visit(&mut v) {
        return Err(e);
    }
    // Only now, with the depth known to be within bounds, may the statement be
    // walked again.
    let mut r = Relations::new(Vec::new(), fallback);
    match statement.visit(&mut r) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(e) => Err(e),
    }
}

/// [`check_depth`] for one expression.
pub fn check_expr_depth(expr: &Expr, fallback: Position) -> Result<()> {
    let mut v = Depth {
        depth: 0,
        queries: Vec::new(),
        fallback,
    };
    match expr.visit(&mut v) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(e) => Err(e),
    }
}

/// [`check_depth`] for a query on its own.
pub fn check_query_depth(query: &Query, fallback: Position) -> Result<()> {
    let mut v = Depth {
        depth: 0,
        queries: Vec::new(),
        fallback,
    };
    if let ControlFlow::Break(e) = query.visit(&mut v) {
        return Err(e);
    }
    let mut r = Relations::new(Vec::new(), fallback);
    match query.visit(&mut r) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(e) => Err(e),
    }
}

/// Counts the tables a statement reads with its WITH queries expanded: a reference to
/// a WITH query weighs what that query reads (itself expanded), and each WITH query
/// must be within the limit on its own (DataFusion plans every one).
struct Relations {
    /// The WITH queries in scope, innermost last, with their weights.
    scopes: Vec<Vec<(String, u128)>>,
    total: u128,
    fallback: Position,
    /// Bodies of WITH queries (weighed on their own): not counted where they stand.
    bodies: Vec<*const Query>,
    /// For each open query, whether it is such a body.
    muted: Vec<bool>,
}

impl Relations {
    fn new(scopes: Vec<Vec<(String, u128)>>, fallback: Position) -> Self {
        Relations {
            scopes,
            total: 0,
            fallback,
            bodies: Vec::new(),
            muted: Vec::new(),
        }
    }

    fn weight(&self, name: &str) -> u128 {
        self.scopes
            .iter()
            .rev()
            .flat_map(|s| s.iter().rev())
            .find(|(n, _)| n == name)
            .map_or(1, |(_, w)| *w)
    }

    fn too_many(&self, at: Location) -> Error {
        let at = if at.line > 0 {
            Position {
                line: at.line,
                column: at.column,
            }
        } else {
            self.fallback
        };
        Error::user_at(
            format!(
                "the statement reads more than {MAX_RELATIONS} tables once its WITH queries \
                 are expanded (a WITH query read twice counts twice), the most Sluice plans: \
                 read fewer, or read a WITH query fewer times"
            ),
            at,
        )
    }
}

impl Visitor for Relations {
    type Break = Error;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Error> {
        let body = self.bodies.iter().any(|b| std::ptr::eq(*b, query));
        self.muted.push(body);
        let mut frame: Vec<(String, u128)> = Vec::new();
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                // What the WITH query reads, with the ones before it in scope.
                let mut scopes = self.scopes.clone();
                scopes.push(frame.clone());
                let mut inner = Relations::new(scopes, self.fallback);
                if let ControlFlow::Break(e) = cte.query.visit(&mut inner) {
                    return ControlFlow::Break(e);
                }
                if inner.total > MAX_RELATIONS as u128 {
                    return ControlFlow::Break(self.too_many(cte.alias.name.span.start));
                }
                frame.push((cte.alias.name.value.clone(), inner.total.max(1)));
                self.bodies.push(cte.query.as_ref());
            }
        }
        self.scopes.push(frame);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<Error> {
        self.scopes.pop();
        self.muted.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<Error> {
        if self.muted.iter().any(|&m| m) {
            return ControlFlow::Continue(());
        }
        let name = relation
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.as_str())
            .unwrap_or_default();
        self.total = self.total.saturating_add(self.weight(name));
        if self.total > MAX_RELATIONS as u128 {
            return ControlFlow::Break(self.too_many(relation.span().start));
        }
        ControlFlow::Continue(())
    }
}

struct Depth {
    depth: usize,
    /// The levels each open query added (itself and its chain of set operations).
    queries: Vec<usize>,
    fallback: Position,
}

impl Depth {
    fn too_deep(&self, what: &str, at: Option<Location>) -> Error {
        let at = match at {
            Some(l) if l.line > 0 => Position {
                line: l.line,
                column: l.column,
            },
            _ => self.fallback,
        };
        too_deep(what, at)
    }
}

/// Where an expression starts, found without recursion: sqlparser's `span()` is the
/// union of the children's spans, so on the expression that is too deep it would
/// recurse through all of it (10 KB of stack a level in a debug build). Chains are
/// followed down their left side to the first token; an expression of another kind
/// is placed where its own token is, or not at all.
fn start_of(mut e: &Expr) -> Option<Location> {
    loop {
        e = match e {
            Expr::Identifier(i) => return Some(i.span.start),
            Expr::CompoundIdentifier(ids) => return ids.first().map(|i| i.span.start),
            Expr::Value(v) => return Some(v.span.start),
            Expr::Function(f) => {
                return f
                    .name
                    .0
                    .first()
                    .and_then(|p| p.as_ident())
                    .map(|i| i.span.start);
            }
            Expr::Case { case_token, .. } => return Some(case_token.0.span.start),
            Expr::Subquery(q) | Expr::Exists { subquery: q, .. } => return query_start(q),
            Expr::BinaryOp { left, .. }
            | Expr::AnyOp { left, .. }
            | Expr::AllOp { left, .. }
            | Expr::IsDistinctFrom(left, _)
            | Expr::IsNotDistinctFrom(left, _) => left,
            Expr::CompoundFieldAccess { root: inner, .. }
            | Expr::JsonAccess { value: inner, .. }
            | Expr::AtTimeZone {
                timestamp: inner, ..
            }
            | Expr::IsFalse(inner)
            | Expr::IsNotFalse(inner)
            | Expr::IsTrue(inner)
            | Expr::IsNotTrue(inner)
            | Expr::IsNull(inner)
            | Expr::IsNotNull(inner)
            | Expr::IsUnknown(inner)
            | Expr::IsNotUnknown(inner)
            | Expr::InList { expr: inner, .. }
            | Expr::InSubquery { expr: inner, .. }
            | Expr::InUnnest { expr: inner, .. }
            | Expr::Between { expr: inner, .. }
            | Expr::Like { expr: inner, .. }
            | Expr::ILike { expr: inner, .. }
            | Expr::SimilarTo { expr: inner, .. }
            | Expr::RLike { expr: inner, .. }
            | Expr::Cast { expr: inner, .. }
            | Expr::Collate { expr: inner, .. }
            | Expr::UnaryOp { expr: inner, .. }
            | Expr::Nested(inner) => inner,
            _ => return None,
        };
    }
}

/// Where a query starts: its first SELECT, down the left side of its set operations.
fn query_start(q: &Query) -> Option<Location> {
    let mut body = q.body.as_ref();
    loop {
        body = match body {
            SetExpr::Select(s) => return Some(s.select_token.0.span.start),
            SetExpr::Values(v) => return v.rows.first()?.first().and_then(start_of),
            SetExpr::SetOperation { left, .. } => left,
            SetExpr::Query(q) => q.body.as_ref(),
            _ => return None,
        };
    }
}

impl Visitor for Depth {
    type Break = Error;

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Error> {
        self.depth += 1;
        // `a[1][2]`, `a.b.c` are one node here but one level each once planned.
        if let Expr::CompoundFieldAccess { access_chain, .. } = expr
            && self.depth + access_chain.len() > MAX_EXPR_DEPTH
        {
            return ControlFlow::Break(self.too_deep("this expression is", start_of(expr)));
        }
        if self.depth > MAX_EXPR_DEPTH {
            return ControlFlow::Break(self.too_deep("this expression is", start_of(expr)));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<Error> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    /// The visitor has no hook for set operations, and a chain `SELECT … UNION SELECT
    /// … UNION …` is as deep as it is long: measured here, down its left side without
    /// recursion, before the visitor descends into it.
    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Error> {
        if self.queries.len() > MAX_SUBQUERY_DEPTH {
            let at = match query_start(query) {
                Some(l) if l.line > 0 => Position {
                    line: l.line,
                    column: l.column,
                },
                _ => self.fallback,
            };
            return ControlFlow::Break(Error::user_at(
                format!(
                    "subqueries are nested more than {MAX_SUBQUERY_DEPTH} deep here, the most \
                     Sluice plans (planning time doubles with each level): flatten them, for \
                     example into joins or WITH queries"
                ),
                at,
            ));
        }
        let mut chain = 0usize;
        let mut body = query.body.as_ref();
        while let SetExpr::SetOperation { left, .. } = body {
            chain += 1;
            if self.depth + chain > MAX_EXPR_DEPTH {
                return ControlFlow::Break(self.too_deep(
                    "these set operations (UNION, EXCEPT, INTERSECT) are",
                    query_start(query),
                ));
            }
            body = left.as_ref();
        }
        // A subquery counts as a level of its own; the statement's query does not.
        let levels = chain + usize::from(!self.queries.is_empty());
        self.depth += levels;
        self.queries.push(levels);
        if self.depth > MAX_EXPR_DEPTH {
            return ControlFlow::Break(self.too_deep("this query is", query_start(query)));
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _: &Query) -> ControlFlow<Error> {
        self.depth -= self.queries.pop().unwrap_or(0);
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use crate::runtime::Step;

    /// Expressions nested `n` levels in every way SQL can nest, each as the select
    /// list of a continuous query (`{x}` is a BIGINT column, `{t}` a timestamp).
    pub(crate) fn shapes(n: usize) -> Vec<(&'static str, String)> {
        let r = |s: &str| s.repeat(n);
        vec![
            ("plus chain", format!("x{}", r(" + 1"))),
            ("or chain", format!("x = 0{}", r(" OR x = 1"))),
            ("concat chain", format!("CAST(x AS TEXT){}", r(" || 'a'"))),
            ("cast chain", format!("x{}", r("::BIGINT"))),
            ("is null chain", format!("x IS NULL{}", r(" IS NULL"))),
            ("unary minus", format!("{}x", r("- "))),
            ("not", format!("{}x > 0", r("NOT "))),
            ("parentheses", format!("{}x{}", r("("), r(")"))),
            ("function calls", format!("{}x{}", r("abs("), r(")"))),
            (
                "case",
                format!("{}x{}", r("CASE WHEN x > 0 THEN "), r(" ELSE 0 END")),
            ),
            ("scalar subquery", format!("{}x{}", r("(SELECT "), r(")"))),
            (
                "in list",
                format!("x IN ({})", vec!["1"; n.max(1)].join(", ")),
            ),
            ("at time zone", format!("ts{}", r(" AT TIME ZONE 'UTC'"))),
            ("between", format!("x{}", r(" BETWEEN 1 AND 2 = true"))),
            ("array index", format!("make_array(x){}", r("[1]"))),
            ("json arrow", format!("CAST(x AS TEXT){}", r(" -> 'a'"))),
        ]
    }

    fn app(select: &str) -> String {
        format!(
            "CREATE STREAM s (x BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts) \
             WITH (connector = 'http');\nINSERT INTO o SELECT {select} AS y FROM s"
        )
    }

    /// Every shape at every size either plans or is refused with a positioned
    /// error; none overflows the stack (which would abort this test binary). The
    /// deep ones are refused by the depth limit, whatever kind of nesting they use.
    #[test]
    fn deep_nesting_of_every_kind_is_refused_cleanly() {
        let mut wrong = Vec::new();
        for n in [1, 50, 255, 257, 2_000, 40_000] {
            for (shape, e) in shapes(n) {
                let mut step = Step::new(0);
                step.apply("CREATE SINK o WITH (connector = 'stdout')")
                    .unwrap();
                let result = step.apply(&app(&e));
                if n >= 2_000 && shape != "in list" {
                    let err = match &result {
                        Ok(_) => "planned".to_string(),
                        Err(e) => e.to_string(),
                    };
                    let clear = err.contains("nested more than 256 levels deep")
                        || err.contains("nested more than 8 deep")
                        || err.contains("longer than 100000 tokens");
                    if !clear || !err.starts_with("2:") {
                        wrong.push(format!("{shape} × {n}: {err}"));
                    }
                }
                // A query that planned runs on a record.
                if result.is_ok() {
                    step.push("s", r#"{"x": 3, "ts": 1000}"#).unwrap();
                }
            }
        }
        assert!(wrong.is_empty(), "unclear refusals:\n{}", wrong.join("\n"));
    }

    #[test]
    fn a_set_operation_chain_is_refused_cleanly() {
        let union = vec!["SELECT x FROM s"; 5_000].join(" UNION ALL ");
        let mut step = Step::new(0);
        step.apply("CREATE SINK o WITH (connector = 'stdout')")
            .unwrap();
        let err = step
            .apply(&format!(
                "CREATE STREAM s (x BIGINT) WITH (connector = 'http');\nINSERT INTO o {union}"
            ))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("2:15: these set operations (UNION, EXCEPT, INTERSECT) are nested more than 256 levels deep"),
            "{err}"
        );
    }

    #[test]
    fn the_refusal_names_the_limit_and_the_place() {
        let mut step = Step::new(0);
        step.apply("CREATE SINK o WITH (connector = 'stdout')")
            .unwrap();
        let e = format!("x{}", " + 1".repeat(2_000));
        let err = step.apply(&app(&e)).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "2:22: this expression is nested more than 256 levels deep, the most Sluice accepts"
            ),
            "{err}"
        );
        // 256 levels plan and run.
        let e = format!("x{}", " + 1".repeat(255));
        step.apply(&app(&e)).unwrap();
        step.push("s", r#"{"x": 1, "ts": 0}"#).unwrap();
    }
}
