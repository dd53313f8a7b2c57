//! Where in a statement an error is (sql layer, error path): the expressions of a
//! query found by shape, by name or by failing when planned alone, and positions in
//! the statement's text (an operator lies between the spans of its operands).

use std::ops::ControlFlow;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::TreeNode;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::ExprSchemable;
use datafusion::optimizer::analyzer::type_coercion::TypeCoercionRewriter;
use datafusion::sql::sqlparser::ast::{
    self, Expr, ExprWithAlias, GroupByExpr, SetExpr, Spanned, Visit, Visitor,
};
use datafusion::sql::sqlparser::tokenizer::{Location, Span};

use super::Scope;
use crate::error::Position;

impl Scope<'_> {
    /// The type an expression has when planned alone against the table read.
    pub(super) fn type_of(&self, e: &Expr) -> Option<DataType> {
        self.plan_alone(e)?.ok()
    }

    /// Plans one expression alone against the table read, with DataFusion's type
    /// coercion: `None` without a table.
    pub(super) fn plan_alone(&self, e: &Expr) -> Option<Result<DataType, DataFusionError>> {
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
    pub(super) fn failing<'e>(&self, candidates: &'e [Expr]) -> Option<&'e Expr> {
        candidates.iter().find(|e| match self.plan_alone(e) {
            Some(Err(err)) => !matches!(err.find_root(), DataFusionError::SchemaError(..)),
            _ => false,
        })
    }

    /// Expressions of the outermost query (not of its subqueries) that `want`s,
    /// innermost first, with a position in the text.
    pub(super) fn expressions(&self, want: impl Fn(&Expr) -> bool) -> Vec<Expr> {
        self.collect(want, 1)
    }

    /// Like [`Scope::expressions`], in subqueries too.
    pub(super) fn all_expressions(&self, want: impl Fn(&Expr) -> bool) -> Vec<Expr> {
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
    pub(super) fn find_string(&self, value: &str) -> Option<Position> {
        self.expressions(|e| match e {
            Expr::Value(v) => matches!(&v.value, ast::Value::SingleQuotedString(s) if s == value),
            _ => false,
        })
        .first()
        .and_then(|e| position(e.span().start))
    }

    /// Where a call of `name` is written; the one that fails when there are several.
    pub(super) fn find_function(&self, name: &str) -> Option<Position> {
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
    pub(super) fn find_cast(&self, t: &str) -> Option<Position> {
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
    pub(super) fn operator_position(
        &self,
        left: &Expr,
        op: &str,
        right: &Expr,
    ) -> Option<Position> {
        let (l, r) = (left.span(), right.span());
        let between = self.slice(l.end, r.start).and_then(|(gap, from)| {
            let i = gap.to_ascii_uppercase().find(&op.to_ascii_uppercase())?;
            Some(advance(from, &gap[..i]))
        });
        between.or_else(|| position(l.start))
    }

    /// Where the word `w` is next written after `from`.
    pub(super) fn word_after(&self, from: Location, w: &str) -> Option<Position> {
        let (text, start) = self.text?;
        let offset = offset_of(text, start, from)?;
        let rest = &text[offset..];
        let i = rest.to_ascii_uppercase().find(&w.to_ascii_uppercase())?;
        Some(advance(position(from)?, &rest[..i]))
    }

    /// The statement's text between two locations, and the position of its start.
    pub(super) fn slice(&self, from: Location, to: Location) -> Option<(&str, Position)> {
        let (text, start) = self.text?;
        let a = offset_of(text, start, from)?;
        let b = offset_of(text, start, to)?;
        if a > b {
            return None;
        }
        Some((&text[a..b], position(from)?))
    }
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

pub(super) fn position(l: Location) -> Option<Position> {
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
    fn offsets_follow_lines() {
        let text = "SELECT a\n  FROM r";
        let start = Position { line: 3, column: 5 };
        let at = |line, column| Location { line, column };
        assert_eq!(offset_of(text, start, at(3, 12)), Some(7));
        assert_eq!(offset_of(text, start, at(4, 3)), Some(11));
        assert_eq!(offset_of(text, start, at(2, 1)), None);
        assert_eq!(
            advance(start, "SELECT a\n  "),
            Position { line: 4, column: 3 }
        );
    }
}
