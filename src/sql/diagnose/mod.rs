//! Planning errors in Sluice's words (sql layer, on the error path of continuous
//! queries and of ad hoc SQL).
//!
//! DataFusion's planning errors name Arrow types (`Float64`), carry its class prefixes
//! and configuration advice, and most type errors have no position. Each is turned
//! here into one short sentence in SQL terms (`DOUBLE`), positioned at the offending
//! token: DataFusion's own span when it collected one, else the expression found in
//! the statement's syntax tree. When several expressions could be the culprit (two
//! `>` in one WHERE), each is planned alone against the stream's columns and the one
//! that fails is it.

mod locate;
mod types;

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::{Column, DFSchema, SchemaError, TableReference};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionState;
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, Expr, ObjectName, SetExpr, Spanned, Visit, Visitor,
};
use datafusion::sql::sqlparser::tokenizer::Location;

use locate::position;
pub(crate) use locate::{
    aggregation_position, join_position, limit_position, order_by_position, respan,
    subquery_position,
};
pub use types::sql_type;
use types::sql_types;
pub(crate) use types::{tidy, unknown_type};

use crate::error::{Error, Position, closest, name_hint};

/// What an error can be explained against: the statement, its text, and what it reads.
pub(crate) struct Scope<'a> {
    pub state: &'a SessionState,
    /// The query as planned (after Sluice's rewrites; their nodes have no spans).
    pub query: Option<&'a ast::Query>,
    /// The statement's text and where it starts in the submitted file, to point at an
    /// operator between two expressions.
    pub text: Option<(&'a str, Position)>,
    /// The one table the query reads, qualified by its name or alias: sub-expressions
    /// are planned alone against it to find the one that fails.
    pub table: Option<DFSchema>,
    /// What a FROM may name (`"stream"` or `"table"`, and the names), for unknown ones.
    pub relations: Option<(&'a str, Vec<String>)>,
    /// Where the statement starts, for errors nothing more precise is found for.
    pub at: Option<Position>,
    /// For a continuous query, whether it has a window in GROUP BY: aggregation
    /// without one is the mistake to report, before any about its columns.
    pub windowed: Option<bool>,
}

/// Why a continuous query cannot aggregate without a window.
pub(crate) const NEEDS_WINDOW: &str = "aggregation over a stream needs a window in GROUP BY \
     (TUMBLE, HOP or SESSION): without one a group would never be complete, so it would \
     never be emitted";

impl<'a> Scope<'a> {
    pub fn new(state: &'a SessionState) -> Self {
        Scope {
            state,
            query: None,
            text: None,
            table: None,
            relations: None,
            at: None,
            windowed: None,
        }
    }

    /// The table the query reads: `schema` under the name (or alias) `qualifier`.
    pub fn with_table(mut self, qualifier: &str, schema: &SchemaRef) -> Self {
        self.table =
            DFSchema::try_from_qualified_schema(TableReference::bare(qualifier), schema).ok();
        self
    }
}

/// A DataFusion error met while planning, as a user error in Sluice's words (or, for
/// a bug, an internal one).
pub(crate) fn explain(e: DataFusionError, scope: &Scope) -> Error {
    let e = match e {
        DataFusionError::Collection(mut all) if !all.is_empty() => all.swap_remove(0),
        other => other,
    };
    let span = e.diagnostic().and_then(|d| d.span).and_then(|s| {
        position(Location {
            line: s.start.line,
            column: s.start.column,
        })
    });
    let root = e.find_root();
    // Only the user's mistakes are explained here: a bug, a store or file that failed,
    // or a resource limit keep their own class and words.
    let planning = matches!(
        root,
        DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::SQL(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::ArrowError(..)
            | DataFusionError::Execution(_)
    );
    if !planning {
        return Error::from(e);
    }
    let (message, at) = match root {
        DataFusionError::SchemaError(se, _) => match se.as_ref() {
            SchemaError::FieldNotFound {
                field,
                valid_fields,
            } => (
                unknown_column(field, valid_fields),
                span.or_else(|| scope.find_identifier(field.name())),
            ),
            SchemaError::AmbiguousReference { field } => (
                format!(
                    "column '{}' is ambiguous: more than one table read has it; qualify it \
                     with the table's name or alias",
                    field.name()
                ),
                span.or_else(|| scope.find_identifier(field.name())),
            ),
            _ => (tidy(&root.to_string()), span),
        },
        _ => {
            let text = tidy(&root.to_string());
            match scope.classify(&text, span) {
                Some(found) => found,
                None if matches!(root, DataFusionError::NotImplemented(_)) => {
                    // "COUNT DISTINCT with multiple arguments": say it is not there.
                    let said = text.starts_with("Unsupported")
                        || text.contains("not supported")
                        || text.contains("not implemented");
                    match said {
                        true => (text, span),
                        false => (format!("{text} is not supported"), span),
                    }
                }
                None => (text, span),
            }
        }
    };
    // A message naming a function the query calls ("Support for 'approx_distinct'
    // for data type DOUBLE is not implemented") is about that call.
    let at = at.or_else(|| {
        let quoted = message.split('\'').skip(1).step_by(2);
        let words = message.split(|c: char| !(c.is_alphanumeric() || c == '_'));
        quoted.chain(words).find_map(|n| scope.find_function(n))
    });
    match at.or(scope.at) {
        Some(p) => Error::user_at(message, p),
        None => Error::user(message),
    }
}

impl Scope<'_> {
    /// Recognizes the planning errors users meet and finds where they are.
    fn classify(&self, text: &str, span: Option<Position>) -> Option<(String, Option<Position>)> {
        if let Some(rest) = text.strip_prefix("Unary operator '") {
            let (op, tail) = rest.split_once('\'')?;
            let message = match tail.split_once("requires a boolean expression, got ") {
                Some((_, t)) => format!("{op} needs a BOOLEAN operand, not {t}"),
                None => format!("'{op}' needs a signed number, an INTERVAL or a TIMESTAMP"),
            };
            return Some((message, span));
        }
        if let Some(rest) = text.strip_prefix("Invalid function '") {
            let name = rest.split('\'').next().unwrap_or_default();
            return Some((self.unknown_function(name), span));
        }
        if text.contains("No function matches the given name and argument types")
            || text.contains("expects") && text.contains("arguments but received")
        {
            return self.function_call(text, span);
        }
        if text.starts_with("Cannot infer common")
            || text.starts_with("Cannot coerce arithmetic expression")
            || text.starts_with("Cannot get result type for")
        {
            return self.operator(text, span);
        }
        if text.starts_with("There isn't a common type to coerce") {
            return self.like(text, span);
        }
        if text.starts_with("Cannot create filter with non-boolean predicate") {
            return self.predicate(text, span);
        }
        if let Some(rest) = text.strip_prefix("Cannot cast string '") {
            let (value, tail) = rest.split_once("' to value of ")?;
            let to = tail.strip_suffix(" type").unwrap_or(tail);
            return Some((
                format!("'{value}' cannot be read as {}", sql_types(to)),
                self.find_string(value).or(span),
            ));
        }
        if let Some(rest) = text.strip_prefix("Error parsing timestamp from '") {
            let value = rest.split('\'').next().unwrap_or_default();
            return Some((
                format!(
                    "'{value}' cannot be read as TIMESTAMP: write RFC 3339, such as \
                     '2026-01-01T10:15:30Z'"
                ),
                self.find_string(value).or(span),
            ));
        }
        if let Some(message) = unknown_type(text) {
            let t = text.trim_start_matches("Unsupported SQL type ").trim();
            return Some((message, span.or_else(|| self.find_cast(t))));
        }
        let group_by = text.contains("must appear in the GROUP BY clause");
        if group_by
            && self.windowed == Some(false)
            && let Some(query) = self.query
        {
            return Some((
                NEEDS_WINDOW.to_string(),
                aggregation_position(query, self.state).or(span),
            ));
        }
        if let Some(rest) = text
            .split_once("must appear in the GROUP BY clause")
            .map(|(a, _)| a)
            && let Some((_, column)) = rest.rsplit_once("column \"")
        {
            let column = self.unqualified(column.trim_end_matches(['"', ' ']));
            return Some((
                format!(
                    "'{column}' must be in GROUP BY or inside an aggregate function \
                     (avg(…), count(…), …)"
                ),
                span.or_else(|| self.find_identifier(&column)),
            ));
        }
        if let Some(rest) = text.strip_prefix("HAVING clause references: ") {
            let expr = rest
                .split(" must appear in the GROUP BY clause")
                .next()
                .unwrap_or(rest);
            let having = self
                .select()
                .and_then(|s| s.having.as_ref())
                .and_then(|h| position(h.span().start));
            return Some((
                format!(
                    "HAVING uses '{}', which must be in GROUP BY or inside an aggregate function",
                    self.unqualified(expr)
                ),
                span.or(having),
            ));
        }
        if let Some(rest) = text.strip_prefix("table '")
            && let Some(name) = rest.strip_suffix("' not found")
        {
            // DataFusion names the default catalog and schema; Sluice has neither.
            let name = name.strip_prefix("datafusion.public.").unwrap_or(name);
            return Some((self.unknown_relation(name), span));
        }
        None
    }

    fn select(&self) -> Option<&ast::Select> {
        match self.query?.body.as_ref() {
            SetExpr::Select(s) => Some(s),
            _ => None,
        }
    }

    /// `readings.deviceId` → `deviceId` when `readings` is the table read.
    fn unqualified(&self, expr: &str) -> String {
        if let Some(schema) = &self.table
            && let Some(q) = schema.iter().next().and_then(|(q, _)| q)
        {
            return expr.replace(&format!("{q}."), "");
        }
        expr.to_string()
    }

    fn unknown_function(&self, name: &str) -> String {
        let mut names: Vec<&str> = self
            .state
            .scalar_functions()
            .keys()
            .chain(self.state.aggregate_functions().keys())
            .chain(self.state.window_functions().keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        match closest(name, names) {
            Some(c) => format!("unknown function '{name}'; did you mean '{c}'?"),
            None => format!("unknown function '{name}'"),
        }
    }

    /// An unknown name after FROM, with the names there are.
    pub(crate) fn unknown_relation(&self, name: &str) -> String {
        let Some((noun, known)) = &self.relations else {
            return format!("unknown table '{name}'");
        };
        let hint = name_hint(name, known.iter().map(String::as_str));
        let list = if !hint.is_empty() {
            String::new()
        } else if known.is_empty() {
            format!("; there is no {noun} yet")
        } else {
            format!("; {noun}s: {}", list(known))
        };
        format!("unknown {noun} '{name}'{hint}{list}")
    }

    /// A call whose arguments fit no form of the function.
    fn function_call(
        &self,
        text: &str,
        span: Option<Position>,
    ) -> Option<(String, Option<Position>)> {
        let call = text
            .split("argument types '")
            .nth(1)
            .and_then(|r| r.split('\'').next());
        let name = match call {
            Some(c) => c.split('(').next().unwrap_or(c).to_string(),
            None => text.split('\'').nth(1)?.to_string(),
        };
        let args = call
            .and_then(|c| c.split_once('('))
            .map(|(_, a)| a.trim_end_matches(')'));
        let forms: Vec<String> = text
            .split("Candidate functions:")
            .nth(1)
            .map(|c| {
                c.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(sql_types)
                    .collect()
            })
            .unwrap_or_default();
        let given = args.map(|a| top_level_args(a).len()).unwrap_or_else(|| {
            // "expects 1 arguments but received 2"
            text.split("but received ")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        });
        let arities: BTreeSet<usize> = forms
            .iter()
            .filter_map(|f| f.split_once('(').map(|(_, a)| a.trim_end_matches(')')))
            .map(|a| top_level_args(a).len())
            .collect();
        let variadic = forms.iter().any(|f| f.contains(".."));
        let shown = if forms.len() > 8 {
            format!("{}, …", forms[..8].join(", "))
        } else {
            forms.join(", ")
        };
        let message = if !forms.is_empty() && !variadic && !arities.contains(&given) {
            let counts: Vec<String> = arities.iter().map(|n| n.to_string()).collect();
            let plural = if arities.len() == 1 && arities.contains(&1) {
                "argument"
            } else {
                "arguments"
            };
            format!(
                "{name} takes {} {plural}, not {given}: {shown}",
                or_list(&counts)
            )
        } else if let Some(args) = args {
            let args = sql_types(args);
            if forms.is_empty() {
                format!("{name} does not take ({args})")
            } else {
                format!("no form of {name} takes ({args}); it takes {shown}")
            }
        } else {
            tidy(text)
        };
        let at = span.or_else(|| self.find_function(&name));
        Some((message, at))
    }

    /// An operator whose operands have types it cannot combine.
    fn operator(&self, text: &str, span: Option<Position>) -> Option<(String, Option<Position>)> {
        let candidates = self.expressions(|e| matches!(e, Expr::BinaryOp { .. }));
        let names = |e: &Expr| match e {
            Expr::BinaryOp { op, .. } => text.contains(&format!(" {op} ")),
            _ => false,
        };
        let found = self
            .failing(&candidates)
            // Without a table to plan against: the operator the message names …
            .or_else(|| candidates.iter().find(|e| names(e)))
            .cloned()
            // … or, in a subquery, the one where DataFusion's span starts.
            .or_else(|| {
                let at = span?;
                self.all_expressions(|e| names(e) && position(e.span().start) == Some(at))
                    .into_iter()
                    .next()
            });
        let Some(Expr::BinaryOp { left, op, right }) = found else {
            // In a subquery (no table to plan against): the types the message names.
            return Some((
                operator_message(text).unwrap_or_else(|| text.to_string()),
                span,
            ));
        };
        let at = self.operator_position(&left, &op.to_string(), &right);
        let types = self.type_of(&left).zip(self.type_of(&right));
        let message = match types {
            Some((l, r)) => operator_words(&op.to_string(), &sql_type(&l), &sql_type(&r)),
            None => operator_message(text).unwrap_or_else(|| text.to_string()),
        };
        Some((message, at.or(span)))
    }

    /// `x LIKE 5`: LIKE, ILIKE and SIMILAR TO take text.
    fn like(&self, text: &str, span: Option<Position>) -> Option<(String, Option<Position>)> {
        let candidates = self.expressions(|e| {
            matches!(
                e,
                Expr::Like { .. } | Expr::ILike { .. } | Expr::SimilarTo { .. }
            )
        });
        let found = self.failing(&candidates).or_else(|| candidates.first());
        let op = text
            .rsplit(" in ")
            .next()
            .and_then(|r| r.strip_suffix(" expression"))
            .unwrap_or("LIKE")
            .to_string();
        let (expr, pattern) = match found {
            Some(Expr::Like { expr, pattern, .. })
            | Some(Expr::ILike { expr, pattern, .. })
            | Some(Expr::SimilarTo { expr, pattern, .. }) => (expr, pattern),
            _ => return Some((sql_types(text), span)),
        };
        let word = op.split(' ').next().unwrap_or("LIKE");
        let at = self.operator_position(expr, word, pattern);
        let message = match self.type_of(expr).zip(self.type_of(pattern)) {
            Some((l, r)) => format!(
                "{op} needs TEXT on both sides, not {} and {}",
                sql_type(&l),
                sql_type(&r)
            ),
            None => sql_types(text),
        };
        Some((message, at.or(span)))
    }

    /// WHERE (or HAVING) whose condition is not true or false.
    fn predicate(&self, text: &str, span: Option<Position>) -> Option<(String, Option<Position>)> {
        let select = self.select()?;
        let not_boolean = |e: &Expr| !matches!(self.type_of(e), Some(DataType::Boolean));
        let (clause, expr) = match (&select.selection, &select.having) {
            (Some(w), Some(h)) if !not_boolean(w) => ("HAVING", h),
            (Some(w), _) => ("WHERE", w),
            (None, Some(h)) => ("HAVING", h),
            (None, None) => return Some((sql_types(text), span)),
        };
        let is = self
            .type_of(expr)
            .map(|t| format!(" is {}", sql_type(&t)))
            .or_else(|| {
                text.rsplit_once(" returning ")
                    .map(|(_, t)| format!(" is {}", sql_types(t)))
            })
            .unwrap_or_default();
        let mut message = format!("{clause} needs a condition (true or false), but '{expr}'{is}");
        let mut at = position(expr.span().start);
        if let Expr::BinaryOp { left, op, right } = expr {
            let hint = match op {
                BinaryOperator::PGBitwiseShiftRight => Some(("shifts bits right", ">")),
                BinaryOperator::PGBitwiseShiftLeft => Some(("shifts bits left", "<")),
                _ => None,
            };
            if let Some((does, meant)) = hint {
                message.push_str(&format!("; '{op}' {does}: to compare, write '{meant}'"));
                at = self.operator_position(left, &op.to_string(), right).or(at);
            }
        }
        Some((message, at.or(span)))
    }
}

/// An operator that cannot combine two types, in words.
fn operator_words(op: &str, l: &str, r: &str) -> String {
    match op {
        "=" | "<>" | "!=" | "<" | "<=" | ">" | ">=" => {
            format!("cannot compare {l} with {r} ('{op}')")
        }
        "AND" | "OR" => format!("{op} needs BOOLEAN on both sides, not {l} and {r}"),
        _ => format!("'{op}' does not apply to {l} and {r}"),
    }
}

/// DataFusion's "Cannot infer common argument type for comparison operation
/// TIMESTAMP > BIGINT" (types already in SQL) in words.
fn operator_message(text: &str) -> Option<String> {
    let operation = text
        .split_once(" operation ")
        .or_else(|| text.split_once(" expression "))?
        .1;
    let operation = operation
        .split(" to valid types")
        .next()?
        .split(": ")
        .next()?;
    const OPERATORS: [&str; 17] = [
        "<=", ">=", "<>", "!=", "||", ">>", "<<", "AND", "OR", "=", "<", ">", "+", "-", "*", "/",
        "%",
    ];
    OPERATORS.iter().find_map(|op| {
        let (l, r) = operation.split_once(&format!(" {op} "))?;
        Some(operator_words(op, l.trim(), r.trim()))
    })
}

/// Checks that every FROM of a continuous query names a stream (or a CTE of the
/// query), so an unknown name is reported at its place, with the stream it most
/// likely meant.
pub(crate) fn check_relations(query: &ast::Query, scope: &Scope) -> Result<(), Error> {
    struct Relations {
        ctes: BTreeSet<String>,
        names: Vec<ObjectName>,
    }
    impl Visitor for Relations {
        type Break = ();
        fn pre_visit_query(&mut self, q: &ast::Query) -> ControlFlow<()> {
            if let Some(with) = &q.with {
                self.ctes
                    .extend(with.cte_tables.iter().map(|c| c.alias.name.value.clone()));
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            self.names.push(r.clone());
            ControlFlow::Continue(())
        }
    }
    let mut r = Relations {
        ctes: BTreeSet::new(),
        names: Vec::new(),
    };
    let _ = query.visit(&mut r);
    let known: &[String] = scope.relations.as_ref().map_or(&[], |(_, k)| k);
    for name in &r.names {
        let text = match name.0.as_slice() {
            [part] => part
                .as_ident()
                .map(|i| i.value.clone())
                .unwrap_or_else(|| part.to_string()),
            _ => name.to_string(),
        };
        if known.contains(&text) || r.ctes.contains(&text) {
            continue;
        }
        let message = scope.unknown_relation(&text);
        return Err(match position(name.span().start).or(scope.at) {
            Some(p) => Error::user_at(message, p),
            None => Error::user(message),
        });
    }
    Ok(())
}

fn unknown_column(field: &Column, valid: &[Column]) -> String {
    let mut names: Vec<String> = Vec::new();
    for c in valid {
        if !names.contains(&c.name) {
            names.push(c.name.clone());
        }
    }
    let (shown, hint) = match &field.relation {
        Some(_) => {
            let flat: Vec<String> = valid.iter().map(Column::flat_name).collect();
            let name = field.flat_name();
            let hint = name_hint(&name, flat.iter().map(String::as_str));
            (name, hint)
        }
        None => {
            let hint = name_hint(&field.name, names.iter().map(String::as_str));
            (field.name.clone(), hint)
        }
    };
    let window =
        if field.name == super::rewrite::WINDOW_START || field.name == super::rewrite::WINDOW_END {
            "; window_start and window_end exist in a query with a window in GROUP BY \
         (TUMBLE, HOP or SESSION)"
        } else {
            ""
        };
    let columns = match (names.is_empty(), hint.is_empty() && window.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!("; columns: {}", list(&names)),
        (false, false) => format!(". Columns: {}", list(&names)),
    };
    let sentence = format!("{hint}{window}");
    let columns = if sentence.ends_with('?') {
        columns.replacen(". ", " ", 1)
    } else {
        columns
    };
    format!("unknown column '{shown}'{sentence}{columns}")
}

/// Names joined by commas, the first 20 of them.
fn list(names: &[String]) -> String {
    let mut shown: Vec<&str> = names.iter().take(20).map(String::as_str).collect();
    if names.len() > 20 {
        shown.push("…");
    }
    shown.join(", ")
}

/// `a`, `a or b`, `a, b or c`.
fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The comma-separated arguments of a call's text, nested parentheses kept whole.
fn top_level_args(args: &str) -> Vec<&str> {
    if args.trim().is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in args.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(args[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(args[start..].trim());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_arguments_split_at_top_level_commas() {
        assert_eq!(
            top_level_args("Decimal128(10, 2), Int32"),
            vec!["Decimal128(10, 2)", "Int32"]
        );
        assert_eq!(or_list(&["1".into(), "2".into(), "3".into()]), "1, 2 or 3");
    }

    #[test]
    fn operators_in_words() {
        assert_eq!(
            operator_message("Cannot coerce arithmetic expression TEXT + BIGINT to valid types")
                .unwrap(),
            "'+' does not apply to TEXT and BIGINT"
        );
        assert_eq!(
            operator_message(
                "Cannot infer common argument type for comparison operation TIMESTAMP WITH TIME \
                 ZONE >= BIGINT UNSIGNED"
            )
            .unwrap(),
            "cannot compare TIMESTAMP WITH TIME ZONE with BIGINT UNSIGNED ('>=')"
        );
    }
}
