//! AST rewrites that turn streaming SQL into SQL DataFusion can plan (sql layer).
//!
//! - `GROUP BY TUMBLE(ts, size), k` becomes `GROUP BY window_start, window_end, k`, with
//!   the window remembered for the engine. `window_start` / `window_end` are columns of
//!   the stream's planning table, so they can be selected, filtered in HAVING and
//!   ordered by after aggregation, and DataFusion type-checks them like any column.
//! - `SELECT *` expands to the stream's declared columns only (not the virtual
//!   `arrival_time` or the window columns).
//! - `topic()` and `topic(n)` (IoT Core's functions: the whole MQTT topic, or its n-th
//!   level counting from 1) become the stream's topic metadata column and
//!   `split_part(column, '/', n)`.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, SelectItem,
    SetExpr, Spanned, TableFactor, Visit, Visitor,
};
use datafusion::sql::sqlparser::tokenizer::Span;

use crate::error::{Error, Position, Result};

pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumble,
    Hop,
    Session,
}

/// A window function found in GROUP BY.
#[derive(Debug, Clone)]
pub struct WindowCall {
    pub kind: WindowKind,
    pub time_column: String,
    /// The size arguments, as written (INTERVAL literals): size; slide, size; or gap.
    pub args: Vec<Expr>,
    pub position: Position,
}

fn window_kind(name: &ast::ObjectName) -> Option<WindowKind> {
    match name.to_string().to_ascii_lowercase().as_str() {
        "tumble" => Some(WindowKind::Tumble),
        "hop" => Some(WindowKind::Hop),
        "session" => Some(WindowKind::Session),
        _ => None,
    }
}

fn position_of(node: &impl Spanned, fallback: Position) -> Position {
    let s = node.span().start;
    if s.line == 0 {
        fallback
    } else {
        Position {
            line: s.line,
            column: s.column,
        }
    }
}

/// Finds the window in the outermost GROUP BY and rewrites it to the window columns.
/// A window function anywhere else is an error.
pub fn extract_window(query: &mut ast::Query, at: Position) -> Result<Option<WindowCall>> {
    let mut found = None;
    if let SetExpr::Select(select) = query.body.as_mut()
        && let GroupByExpr::Expressions(exprs, _) = &mut select.group_by
    {
        let mut rewritten = Vec::with_capacity(exprs.len() + 1);
        for e in exprs.drain(..) {
            match &e {
                Expr::Function(f) if window_kind(&f.name).is_some() => {
                    let position = position_of(&e, at);
                    if found.is_some() {
                        return Err(Error::user_at(
                            "only one window function is allowed in GROUP BY",
                            position,
                        ));
                    }
                    found = Some(window_call(f, position)?);
                    rewritten.push(Expr::Identifier(Ident::new(WINDOW_START)));
                    rewritten.push(Expr::Identifier(Ident::new(WINDOW_END)));
                }
                _ => rewritten.push(e),
            }
        }
        *exprs = rewritten;
    }
    // Any window function left is misplaced.
    struct Finder(Option<Position>, Position);
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = e
                && window_kind(&f.name).is_some()
            {
                self.0 = Some(position_of(e, self.1));
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut finder = Finder(None, at);
    let _ = query.visit(&mut finder);
    if let Some(p) = finder.0 {
        return Err(Error::user_at(
            "TUMBLE, HOP and SESSION are window functions of GROUP BY: write GROUP BY \
             TUMBLE(ts, INTERVAL '1' MINUTE), … and select window_start / window_end",
            p,
        ));
    }
    Ok(found)
}

fn window_call(f: &ast::Function, position: Position) -> Result<WindowCall> {
    let kind = window_kind(&f.name).expect("checked by caller");
    let name = f.name.to_string().to_ascii_uppercase();
    let usage = match kind {
        WindowKind::Tumble => "TUMBLE(time_column, INTERVAL 'size')",
        WindowKind::Hop => "HOP(time_column, INTERVAL 'slide', INTERVAL 'size')",
        WindowKind::Session => "SESSION(time_column, INTERVAL 'gap')",
    };
    let bad = || Error::user_at(format!("{name} takes {usage}"), position);
    let FunctionArguments::List(list) = &f.args else {
        return Err(bad());
    };
    let mut args = Vec::new();
    for a in &list.args {
        match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => args.push(e.clone()),
            _ => return Err(bad()),
        }
    }
    let expected = if kind == WindowKind::Hop { 3 } else { 2 };
    if args.len() != expected {
        return Err(bad());
    }
    let time_column = match &args[0] {
        Expr::Identifier(id) => id.value.clone(),
        Expr::CompoundIdentifier(ids) => ids.last().map(|i| i.value.clone()).unwrap_or_default(),
        _ => return Err(bad()),
    };
    Ok(WindowCall {
        kind,
        time_column,
        args: args.split_off(1),
        position,
    })
}

/// The single stream a query reads (`FROM name [alias]`), if that is its shape.
pub fn single_source(query: &ast::Query) -> Option<(String, Option<String>)> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let [from] = select.from.as_slice() else {
        return None;
    };
    if !from.joins.is_empty() {
        return None;
    }
    match &from.relation {
        TableFactor::Table { name, alias, .. } => Some((
            name.0.last()?.as_ident()?.value.clone(),
            alias.as_ref().map(|a| a.name.value.clone()),
        )),
        _ => None,
    }
}

/// Expands `*` and `alias.*` of the outermost SELECT to the stream's declared columns.
pub fn expand_wildcards(query: &mut ast::Query, columns: &[String], alias: Option<&str>) {
    let SetExpr::Select(select) = query.body.as_mut() else {
        return;
    };
    // The columns carry the span of the `*`, so an error about one points there.
    let idents = |qualifier: Option<&Ident>, span: Span| -> Vec<SelectItem> {
        columns
            .iter()
            .map(|c| {
                let col = Ident::with_quote_and_span('"', span, c.as_str());
                SelectItem::UnnamedExpr(match qualifier {
                    Some(q) => Expr::CompoundIdentifier(vec![q.clone(), col]),
                    None => Expr::Identifier(col),
                })
            })
            .collect()
    };
    let mut out = Vec::with_capacity(select.projection.len());
    for item in select.projection.drain(..) {
        match &item {
            SelectItem::Wildcard(opts) if is_plain(opts) => {
                out.extend(idents(None, opts.wildcard_token.0.span))
            }
            SelectItem::QualifiedWildcard(
                ast::SelectItemQualifiedWildcardKind::ObjectName(n),
                opts,
            ) if is_plain(opts) => {
                let q = n.0.last().and_then(|p| p.as_ident()).cloned();
                match q {
                    Some(q) if alias.is_none() || alias == Some(q.value.as_str()) => {
                        out.extend(idents(Some(&q), n.span()))
                    }
                    _ => out.push(item),
                }
            }
            _ => out.push(item),
        }
    }
    select.projection = out;
}

fn is_plain(o: &ast::WildcardAdditionalOptions) -> bool {
    o.opt_exclude.is_none()
        && o.opt_except.is_none()
        && o.opt_replace.is_none()
        && o.opt_rename.is_none()
        && o.opt_ilike.is_none()
}

/// Rewrites IoT Core's `topic()` / `topic(n)` onto the stream's topic column.
pub fn topic_function(
    query: &mut ast::Query,
    stream: &str,
    column: Option<&str>,
    at: Position,
) -> Result<()> {
    use datafusion::sql::sqlparser::ast::visit_expressions_mut;
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    let mut failure: Option<Error> = None;
    let _ = visit_expressions_mut(query, |e| {
        let here = position_of(&*e, at);
        let span = e.span();
        let Expr::Function(f) = e else {
            return ControlFlow::Continue(());
        };
        let is_topic = f.name.0.len() == 1 && f.name.to_string().eq_ignore_ascii_case("topic");
        let FunctionArguments::List(list) = &f.args else {
            return ControlFlow::Continue(());
        };
        if !is_topic || list.args.len() > 1 {
            return ControlFlow::Continue(());
        }
        let Some(column) = column else {
            failure = Some(Error::user_at(
                format!(
                    "topic() reads the MQTT topic, but stream '{stream}' has no topic column: declare \
                     one as `topic TEXT METADATA`"
                ),
                here,
            ));
            return ControlFlow::Break(());
        };
        let quoted = format!("\"{}\"", column.replace('"', "\"\""));
        let text = match list.args.first() {
            None => quoted,
            Some(arg) => format!("split_part({quoted}, '/', {arg})"),
        };
        match Parser::new(&GenericDialect {})
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_expr())
        {
            Ok(mut new) => {
                // Parsed from text of its own: its spans would point at line 1.
                super::diagnose::respan(&mut new, span);
                *e = new
            }
            Err(err) => {
                failure = Some(Error::user_at(format!("topic(): {err}"), here));
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
