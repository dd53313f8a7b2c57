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

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::tree_node::TreeNode;
use datafusion::common::{Column, DFSchema, SchemaError, TableReference};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::ExprSchemable;
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion::sql::sqlparser::ast::{
    self, BinaryOperator, Expr, ExprWithAlias, GroupByExpr, ObjectName, SetExpr, Spanned, Visit,
    Visitor,
};
use datafusion::sql::sqlparser::tokenizer::{Location, Span};

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

/// `Unsupported SQL type FLOOT` (a column type or a CAST) with the types there are.
pub(crate) fn unknown_type(message: &str) -> Option<String> {
    let t = message.strip_prefix("Unsupported SQL type ")?.trim();
    let hint = match closest(t, SQL_TYPES) {
        Some(c) => format!("; did you mean {c}?"),
        None => format!("; types are {}", SQL_TYPES.join(", ")),
    };
    Some(format!("unknown type {t}{hint}"))
}

const SQL_TYPES: [&str; 16] = [
    "BOOLEAN",
    "TINYINT",
    "SMALLINT",
    "INT",
    "BIGINT",
    "FLOAT",
    "REAL",
    "DOUBLE",
    "DECIMAL",
    "TEXT",
    "VARCHAR",
    "STRING",
    "DATE",
    "TIME",
    "TIMESTAMP",
    "INTERVAL",
];

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

    /// The type an expression has when planned alone against the table read.
    fn type_of(&self, e: &Expr) -> Option<DataType> {
        self.plan_alone(e)?.ok()
    }

    /// Plans one expression alone against the table read, with DataFusion's type
    /// coercion: `None` without a table.
    fn plan_alone(&self, e: &Expr) -> Option<Result<DataType, DataFusionError>> {
        let schema = self.table.as_ref()?;
        let planned = (|| {
            let expr = self.state.create_logical_expr_from_sql_expr(
                ExprWithAlias {
                    expr: e.clone(),
                    alias: None,
                },
                schema,
            )?;
            let expr = expr.rewrite(&mut TypeCoercionRewriter::new(schema))?.data;
            expr.get_type(schema)
        })();
        Some(planned)
    }

    /// The first of `candidates` (innermost first) that fails when planned alone, for
    /// a reason other than a name it cannot see from there.
    fn failing<'e>(&self, candidates: &'e [Expr]) -> Option<&'e Expr> {
        candidates.iter().find(|e| match self.plan_alone(e) {
            Some(Err(err)) => !matches!(err.find_root(), DataFusionError::SchemaError(..)),
            _ => false,
        })
    }

    /// Expressions of the outermost query (not of its subqueries) that `want`s,
    /// innermost first, with a position in the text.
    fn expressions(&self, want: impl Fn(&Expr) -> bool) -> Vec<Expr> {
        self.collect(want, 1)
    }

    /// Like [`Scope::expressions`], in subqueries too.
    fn all_expressions(&self, want: impl Fn(&Expr) -> bool) -> Vec<Expr> {
        self.collect(want, usize::MAX)
    }

    fn collect(&self, want: impl Fn(&Expr) -> bool, max_depth: usize) -> Vec<Expr> {
        struct Collect<F> {
            depth: usize,
            max_depth: usize,
            want: F,
            out: Vec<Expr>,
        }
        impl<F: Fn(&Expr) -> bool> Visitor for Collect<F> {
            type Break = ();
            fn pre_visit_query(&mut self, _: &ast::Query) -> ControlFlow<()> {
                self.depth += 1;
                ControlFlow::Continue(())
            }
            fn post_visit_query(&mut self, _: &ast::Query) -> ControlFlow<()> {
                self.depth -= 1;
                ControlFlow::Continue(())
            }
            fn post_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
                if self.depth <= self.max_depth && e.span().start.line > 0 && (self.want)(e) {
                    self.out.push(e.clone());
                }
                ControlFlow::Continue(())
            }
        }
        let Some(query) = self.query else {
            return Vec::new();
        };
        let mut c = Collect {
            depth: 0,
            max_depth,
            want,
            out: Vec::new(),
        };
        let _ = query.visit(&mut c);
        c.out
    }

    /// Where a column named `name` is written.
    pub(crate) fn find_identifier(&self, name: &str) -> Option<Position> {
        self.expressions(|e| match e {
            Expr::Identifier(i) => i.value == name,
            Expr::CompoundIdentifier(ids) => ids.last().is_some_and(|i| i.value == name),
            _ => false,
        })
        .first()
        .and_then(|e| position(e.span().start))
    }

    /// Where the string literal `'value'` is written.
    fn find_string(&self, value: &str) -> Option<Position> {
        self.expressions(|e| match e {
            Expr::Value(v) => matches!(&v.value, ast::Value::SingleQuotedString(s) if s == value),
            _ => false,
        })
        .first()
        .and_then(|e| position(e.span().start))
    }

    /// Where a call of `name` is written; the one that fails when there are several.
    fn find_function(&self, name: &str) -> Option<Position> {
        let calls = self.expressions(|e| match e {
            Expr::Function(f) => f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| i.value.eq_ignore_ascii_case(name)),
            _ => false,
        });
        self.failing(&calls)
            .or(calls.first())
            .and_then(|e| position(e.span().start))
    }

    /// Where the type of a `CAST(… AS t)` is written (else the CAST's operand).
    fn find_cast(&self, t: &str) -> Option<Position> {
        let casts = self.expressions(
            |e| matches!(e, Expr::Cast { data_type, .. } if data_type.to_string() == t),
        );
        let Some(Expr::Cast { expr, .. }) = casts.first() else {
            return None;
        };
        self.word_after(expr.span().end, t)
            .or_else(|| position(expr.span().start))
    }

    /// Where `op` is written between two operands (else where the left one starts).
    fn operator_position(&self, left: &Expr, op: &str, right: &Expr) -> Option<Position> {
        let (l, r) = (left.span(), right.span());
        let between = self.slice(l.end, r.start).and_then(|(gap, from)| {
            let i = gap.to_ascii_uppercase().find(&op.to_ascii_uppercase())?;
            Some(advance(from, &gap[..i]))
        });
        between.or_else(|| position(l.start))
    }

    /// Where the word `w` is next written after `from`.
    fn word_after(&self, from: Location, w: &str) -> Option<Position> {
        let (text, start) = self.text?;
        let offset = offset_of(text, start, from)?;
        let rest = &text[offset..];
        let i = rest.to_ascii_uppercase().find(&w.to_ascii_uppercase())?;
        Some(advance(position(from)?, &rest[..i]))
    }

    /// The statement's text between two locations, and the position of its start.
    fn slice(&self, from: Location, to: Location) -> Option<(&str, Position)> {
        let (text, start) = self.text?;
        let a = offset_of(text, start, from)?;
        let b = offset_of(text, start, to)?;
        if a > b {
            return None;
        }
        Some((&text[a..b], position(from)?))
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

/// Where aggregation happens in a query: its GROUP BY, else its first aggregate call.
pub(crate) fn aggregation_position(query: &ast::Query, state: &SessionState) -> Option<Position> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    if let GroupByExpr::Expressions(exprs, _) = &select.group_by
        && let Some(p) = exprs.iter().find_map(|e| position(e.span().start))
    {
        return Some(p);
    }
    let scope = Scope {
        query: Some(query),
        ..Scope::new(state)
    };
    let aggregates = state.aggregate_functions();
    scope
        .expressions(|e| match e {
            Expr::Function(f) => f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| aggregates.contains_key(&i.value.to_ascii_lowercase())),
            _ => false,
        })
        .first()
        .and_then(|e| position(e.span().start))
}

/// Where a query's LIMIT is written.
pub(crate) fn limit_position(query: &ast::Query) -> Option<Position> {
    position(query.limit_clause.as_ref()?.span().start)
}

/// Where a query's ORDER BY list starts.
pub(crate) fn order_by_position(query: &ast::Query) -> Option<Position> {
    match &query.order_by.as_ref()?.kind {
        ast::OrderByKind::Expressions(exprs) => position(exprs.first()?.expr.span().start),
        ast::OrderByKind::All(_) => None,
    }
}

/// Where a subquery inside an expression (`IN (SELECT …)`, `EXISTS`, a scalar
/// subquery) is written: DataFusion would turn it into a join.
pub(crate) fn subquery_position(query: &ast::Query, state: &SessionState) -> Option<Position> {
    let scope = Scope {
        query: Some(query),
        ..Scope::new(state)
    };
    let found = scope.expressions(|e| {
        matches!(
            e,
            Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. }
        )
    });
    let span = match found.first()? {
        Expr::InSubquery { subquery, .. } => subquery.span(),
        other => other.span(),
    };
    position(span.start)
}

/// Where a query's second table (a join) is written.
pub(crate) fn join_position(query: &ast::Query) -> Option<Position> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let first = select.from.first()?;
    match first.joins.first() {
        Some(j) => position(j.relation.span().start),
        None => position(select.from.get(1)?.relation.span().start),
    }
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

/// DataFusion's message without its class prefixes, its advice about DataFusion
/// itself, and with SQL type names.
pub(crate) fn tidy(message: &str) -> String {
    // "type_coercion\ncaused by\nError during planning: …": the cause is the message.
    let message = message.rsplit("caused by\n").next().unwrap_or(message);
    let mut s = message.trim();
    loop {
        let before = s;
        for p in [
            "Arrow error: ",
            "Error during planning: ",
            "Schema error: ",
            "SQL error: ",
            "Execution error: ",
            "Cast error: ",
            "Parser error: ",
            "Optimizer rule 'simplify_expressions' failed",
            "This feature is not implemented: ",
        ] {
            if let Some(rest) = s.strip_prefix(p) {
                s = rest.trim_start();
            }
        }
        if s == before {
            break;
        }
    }
    let mut out = s.to_string();
    for advice in [
        " You might need to add explicit type casts.",
        " or disable the datafusion.sql_parser.enable_ident_normalization configuration",
    ] {
        out = out.replace(advice, "");
    }
    if let Some(i) = out.find("This issue was likely caused by a bug in DataFusion") {
        // The rest of that sentence is a link to DataFusion's issue tracker.
        let end = out[i..]
            .find("issues. ")
            .map(|j| i + j + "issues. ".len())
            .unwrap_or(out.len());
        out.replace_range(i..end, "");
    }
    sql_types(out.trim())
}

/// The SQL name of an Arrow type (`Float64` → `DOUBLE`).
pub fn sql_type(t: &DataType) -> String {
    sql_types(&t.to_string())
}

/// Replaces Arrow type names in a text by their SQL names.
pub(crate) fn sql_types(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let starts_word = c.is_ascii_uppercase()
            && (i == 0 || !(chars[i - 1].1.is_alphanumeric() || chars[i - 1].1 == '_'));
        if !starts_word {
            out.push(c);
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && chars[j].1.is_ascii_alphanumeric() {
            j += 1;
        }
        let word = &text[at..chars.get(j).map_or(text.len(), |c| c.0)];
        // Arguments in parentheses: `Timestamp(ms)`, `Decimal128(10, 2)`.
        let mut args = None;
        let mut k = j;
        if chars.get(j).is_some_and(|c| c.1 == '(') {
            let mut depth = 0;
            while k < chars.len() {
                match chars[k].1 {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            k += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                k += 1;
            }
            let from = chars[j].0 + 1;
            let to = chars.get(k - 1).map_or(text.len(), |c| c.0);
            args = Some(&text[from..to.max(from)]);
        }
        match arrow_to_sql(word, args) {
            Some((sql, used_args)) => {
                out.push_str(&sql);
                i = if used_args { k } else { j };
            }
            None => {
                out.push_str(word);
                i = j;
            }
        }
    }
    out
}

/// One Arrow type name (with its arguments) as SQL; whether the arguments were used.
fn arrow_to_sql(word: &str, args: Option<&str>) -> Option<(String, bool)> {
    let plain = |s: &str| Some((s.to_string(), false));
    match word {
        "Int8" => plain("TINYINT"),
        "Int16" => plain("SMALLINT"),
        "Int32" => plain("INT"),
        "Int64" => plain("BIGINT"),
        "UInt8" => plain("TINYINT UNSIGNED"),
        "UInt16" => plain("SMALLINT UNSIGNED"),
        "UInt32" => plain("INT UNSIGNED"),
        "UInt64" => plain("BIGINT UNSIGNED"),
        "Float16" => plain("HALF FLOAT"),
        "Float32" => plain("REAL"),
        "Float64" => plain("DOUBLE"),
        "Utf8" | "LargeUtf8" | "Utf8View" | "String" => plain("TEXT"),
        "Boolean" => plain("BOOLEAN"),
        "Date32" | "Date64" => plain("DATE"),
        "Binary" | "LargeBinary" | "BinaryView" => plain("BYTEA"),
        "Null" => plain("NULL"),
        "Integer" => plain("INTEGER"),
        "Numeric" => plain("NUMERIC"),
        "Decimal" => plain("DECIMAL"),
        "Float" => plain("FLOAT"),
        "Time32" | "Time64" => Some(("TIME".into(), args.is_some())),
        "Interval" => Some(("INTERVAL".into(), args.is_some())),
        "Duration" => Some(("DURATION".into(), args.is_some())),
        "Decimal32" | "Decimal64" | "Decimal128" | "Decimal256" => match args {
            Some(a) => Some((format!("DECIMAL({a})"), true)),
            None => plain("DECIMAL"),
        },
        "Timestamp" => {
            let Some(a) = args else {
                return plain("TIMESTAMP");
            };
            let mut parts = a.splitn(2, ',');
            let unit = parts.next().unwrap_or("").trim();
            let zone = parts.next().is_some_and(|z| !z.trim().is_empty());
            let base = match unit {
                "s" | "Second" => "TIMESTAMP(0)",
                "ms" | "Millisecond" => "TIMESTAMP",
                "µs" | "us" | "Microsecond" => "TIMESTAMP(6)",
                "ns" | "Nanosecond" => "TIMESTAMP(9)",
                _ => return None,
            };
            let zone = if zone { " WITH TIME ZONE" } else { "" };
            Some((format!("{base}{zone}"), true))
        }
        _ => None,
    }
}

fn position(l: Location) -> Option<Position> {
    (l.line > 0).then_some(Position {
        line: l.line,
        column: l.column,
    })
}

/// The byte offset in `text` (which starts at `start` in the file) of a location.
fn offset_of(text: &str, start: Position, l: Location) -> Option<usize> {
    if l.line < start.line || (l.line == start.line && l.column < start.column) {
        return None;
    }
    let mut line = start.line;
    let mut column = start.column;
    for (i, c) in text.char_indices() {
        if line == l.line && column == l.column {
            return Some(i);
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line == l.line && column == l.column).then_some(text.len())
}

/// The position after `passed` text, starting from `from`.
fn advance(from: Position, passed: &str) -> Position {
    let mut p = from;
    for c in passed.chars() {
        if c == '\n' {
            p.line += 1;
            p.column = 1;
        } else {
            p.column += 1;
        }
    }
    p
}

/// Spans Sluice gives the nodes it writes into a query, so errors about them point
/// at what the user wrote (`*` for the columns it expands to).
pub(crate) fn respan(e: &mut Expr, span: Span) {
    let _ = ast::visit_expressions_mut(e, |e| {
        match e {
            Expr::Identifier(i) => i.span = span,
            Expr::CompoundIdentifier(ids) => ids.iter_mut().for_each(|i| i.span = span),
            Expr::Value(v) => v.span = span,
            Expr::Function(f) => {
                for part in f.name.0.iter_mut() {
                    if let ast::ObjectNamePart::Identifier(i) = part {
                        i.span = span;
                    }
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_types_read_as_sql() {
        assert_eq!(
            sql_types("round(Float64, Int32) or sum(Utf8View), Timestamp(ms) > Int64"),
            "round(DOUBLE, INT) or sum(TEXT), TIMESTAMP > BIGINT"
        );
        assert_eq!(
            sql_types("Decimal128(10, 2), Timestamp(ns, \"+00:00\"), Interval(MonthDayNano)"),
            "DECIMAL(10, 2), TIMESTAMP(9) WITH TIME ZONE, INTERVAL"
        );
        assert_eq!(sql_types("Float64/Float32"), "DOUBLE/REAL");
        assert_eq!(sql_types("Cannot cast string"), "Cannot cast string");
        assert_eq!(
            top_level_args("Decimal128(10, 2), Int32"),
            vec!["Decimal128(10, 2)", "Int32"]
        );
    }

    #[test]
    fn datafusion_advice_is_dropped() {
        assert_eq!(
            tidy(
                "type_coercion\ncaused by\nError during planning: Cannot infer common argument type for comparison operation Timestamp(ms) > Int64"
            ),
            "Cannot infer common argument type for comparison operation TIMESTAMP > BIGINT"
        );
    }

    #[test]
    fn offsets_follow_lines() {
        let text = "SELECT a\n  FROM r";
        let start = Position { line: 3, column: 5 };
        assert_eq!(
            offset_of(
                text,
                start,
                Location {
                    line: 3,
                    column: 12
                }
            ),
            Some(7)
        );
        assert_eq!(
            offset_of(text, start, Location { line: 4, column: 3 }),
            Some(11)
        );
        assert_eq!(
            offset_of(text, start, Location { line: 2, column: 1 }),
            None
        );
        assert_eq!(
            advance(start, "SELECT a\n  "),
            Position { line: 4, column: 3 }
        );
    }
}
