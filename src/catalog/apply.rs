//! Applying statements to the catalog (control plane, between the SQL layer and the
//! runtime): CREATE, CREATE OR REPLACE and DROP, one statement at a time or a whole
//! application at once.
//!
//! Every way in is all-or-nothing: statements run against a copy of the catalog,
//! which replaces the original only when all of them succeeded. Objects are compared
//! by their definition's normal form (tokens without comments or layout, plus the
//! values `${ENV}` references expand to), so:
//! - a CREATE identical to what exists changes nothing, and says so (`Unchanged`);
//! - a CREATE of a name defined differently is a conflict, unless it says
//!   `OR REPLACE` (then `Replaced`) or `IF NOT EXISTS` (then `Unchanged`);
//! - an *application* (one SQL file, named) is its whole text: applied again, what is
//!   identical stays, what changed is replaced, what it no longer defines is dropped.
//!
//! Replacing a stream plans its queries again over the new columns (a query that no
//! longer plans fails the whole change, naming it); the runtime restarts what a
//! replacement touches.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{AppDef, Catalog, ConnectorCheck, QueryDef, SinkDef};
use crate::error::{Error, Position, Result, name_hint};
use crate::sinks::Claim;
use crate::sql::planner::StreamInfo;
use crate::sql::{self, ObjectKind, Options, QueryStatement, Statement};

/// What applying one statement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Created(ObjectKind, String),
    /// Defined differently than before (`CREATE OR REPLACE`, or a changed application).
    Replaced(ObjectKind, String),
    Dropped(ObjectKind, String),
    /// Identical to what exists, or `IF NOT EXISTS` / `IF EXISTS` made it a no-op.
    Unchanged(ObjectKind, String),
}

impl Change {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Change::Created(k, _)
            | Change::Replaced(k, _)
            | Change::Dropped(k, _)
            | Change::Unchanged(k, _) => *k,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Change::Created(_, n)
            | Change::Replaced(_, n)
            | Change::Dropped(_, n)
            | Change::Unchanged(_, n) => n,
        }
    }

    /// `created`, `replaced`, `dropped` or `unchanged`.
    pub fn verb(&self) -> &'static str {
        match self {
            Change::Created(..) => "created",
            Change::Replaced(..) => "replaced",
            Change::Dropped(..) => "dropped",
            Change::Unchanged(..) => "unchanged",
        }
    }
}

/// How a text is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope<'a> {
    /// Statement by statement; objects created belong to `app` when given.
    Statements(Option<&'a str>),
    /// The whole text of application `app`: what it no longer defines is dropped,
    /// what it defines differently is replaced.
    Application(&'a str),
}

impl Scope<'_> {
    fn app(&self) -> Option<&str> {
        match self {
            Scope::Statements(a) => *a,
            Scope::Application(a) => Some(a),
        }
    }
}

impl Catalog {
    /// Applies statements; on any error nothing changes.
    pub fn apply(&mut self, sql: &str, connectors: &dyn ConnectorCheck) -> Result<Vec<Change>> {
        self.apply_scoped(sql, Scope::Statements(None), connectors)
    }

    /// Applies statements submitted as (part of) application `app`: what they create
    /// belongs to it. Nothing the application had is dropped.
    pub fn submit(
        &mut self,
        app: Option<&str>,
        sql: &str,
        connectors: &dyn ConnectorCheck,
    ) -> Result<Vec<Change>> {
        self.apply_scoped(sql, Scope::Statements(app), connectors)
    }

    /// Makes application `app` exactly what `sql` defines: identical objects stay,
    /// changed ones are replaced, new ones created, and the objects it defined before
    /// but no longer does are dropped.
    pub fn replace_application(
        &mut self,
        app: &str,
        sql: &str,
        connectors: &dyn ConnectorCheck,
    ) -> Result<Vec<Change>> {
        self.apply_scoped(sql, Scope::Application(app), connectors)
    }

    /// Drops every object of application `app` (queries, then sinks, then streams).
    pub fn drop_application(&mut self, app: &str) -> Result<Vec<Change>> {
        if !self.applications.contains_key(app) {
            return Err(Error::user(format!("application '{app}' does not exist")));
        }
        crate::limits::with_stack(|| {
            let mut next = self.clone();
            let changes = next.drop_unlisted(app, &BTreeSet::new())?;
            next.applications.remove(app);
            *self = next;
            Ok(changes)
        })
    }

    fn apply_scoped(
        &mut self,
        sql: &str,
        scope: Scope,
        connectors: &dyn ConnectorCheck,
    ) -> Result<Vec<Change>> {
        // Parsing and planning recurse over each statement, and the catalog replaced
        // is dropped here too: on a stack sized for the statement limits.
        crate::limits::with_stack(|| self.apply_scoped_now(sql, scope, connectors))
    }

    fn apply_scoped_now(
        &mut self,
        sql: &str,
        scope: Scope,
        connectors: &dyn ConnectorCheck,
    ) -> Result<Vec<Change>> {
        let statements = sql::parse_application(sql)?;
        let mut next = self.clone();
        let mut changes: Vec<Change> = Vec::with_capacity(statements.len());
        // Sinks this text (re)defines, with where: their storage is checked once the
        // text is applied whole, so that a sink renamed in an application (the old
        // name dropped at the end) does not clash with itself.
        let mut built: Vec<(String, Position)> = Vec::new();
        for s in statements {
            let change = next
                .apply_one(s.statement, s.text, scope, connectors)
                .map_err(|e| e.or_at(s.position))?;
            if let Change::Created(ObjectKind::Sink, n) | Change::Replaced(ObjectKind::Sink, n) =
                &change
            {
                built.push((n.clone(), s.position));
            }
            changes.push(change);
        }
        if let Scope::Application(app) = scope {
            let listed: BTreeSet<(ObjectKind, String)> = changes
                .iter()
                .filter(|c| !matches!(c, Change::Dropped(..)))
                .map(|c| (c.kind(), c.name().to_string()))
                .collect();
            changes.extend(next.drop_unlisted(app, &listed)?);
        }
        next.check_claims(&built)?;
        next.replan_after(&changes)?;
        if let Some(app) = scope.app() {
            let def = next
                .applications
                .entry(app.to_string())
                .or_insert_with(|| AppDef {
                    name: app.to_string(),
                    sql: String::new(),
                });
            def.sql = match scope {
                Scope::Application(_) => sql.to_string(),
                // Statements submitted to an existing application add to its text.
                Scope::Statements(_) if def.sql.is_empty() => sql.to_string(),
                Scope::Statements(_) => format!("{}\n\n{}", def.sql.trim_end(), sql),
            };
        }
        *self = next;
        Ok(changes)
    }

    /// Drops the objects of `app` not in `listed`: queries first, so that nothing
    /// dropped is still in use by the application itself.
    fn drop_unlisted(
        &mut self,
        app: &str,
        listed: &BTreeSet<(ObjectKind, String)>,
    ) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        for kind in [ObjectKind::Query, ObjectKind::Sink, ObjectKind::Stream] {
            for name in self.objects_of(app, kind) {
                if listed.contains(&(kind, name.clone())) {
                    continue;
                }
                self.drop_object(kind, &name, None).map_err(|e| match e {
                    Error::Conflict { message, .. } => Error::Conflict {
                        message: format!(
                            "application '{app}' no longer defines {kind} '{name}', but \
                                 it cannot be dropped: {message}"
                        ),
                        position: None,
                    },
                    other => other,
                })?;
                changes.push(Change::Dropped(kind, name));
            }
        }
        Ok(changes)
    }

    /// No sink just (re)defined may write storage another sink writes: one archive
    /// inside another's prefix, or a table another table sink writes.
    fn check_claims(&self, built: &[(String, Position)]) -> Result<()> {
        for (name, at) in built {
            let Some(claim) = self.sinks.get(name).and_then(|d| d.claim.as_ref()) else {
                continue;
            };
            let clash = self.sinks.values().find_map(|other| {
                let theirs = other.claim.as_ref().filter(|_| &other.name != name)?;
                claim.overlap(theirs).map(|how| (other, theirs, how))
            });
            if let Some((other, theirs, how)) = clash {
                let owner = match &other.app {
                    Some(a) => format!("sink '{}' (application '{a}')", other.name),
                    None => format!("sink '{}'", other.name),
                };
                let message = match claim {
                    Claim::Prefix { .. } => format!(
                        "sink '{name}' would write {}, {how} {} of {owner}: two archives may \
                         not share a prefix (each would read the other's objects as its own, so \
                         rows written to one would show in the other); give this sink another \
                         'path' or 'url', or send every query INTO sink '{}'",
                        claim.describe(),
                        theirs.describe(),
                        other.name
                    ),
                    Claim::Table(_) => format!(
                        "sink '{name}' would write {}, which {owner} writes: two table sinks may \
                         not write one table (their items would mix); give this sink another \
                         'table', or send every query INTO sink '{}'",
                        claim.describe(),
                        other.name
                    ),
                };
                return Err(Error::conflict_at(message, *at));
            }
        }
        Ok(())
    }

    /// The names of the objects of one kind that belong to `app`.
    pub fn objects_of(&self, app: &str, kind: ObjectKind) -> Vec<String> {
        let mine = |owner: &Option<String>| owner.as_deref() == Some(app);
        match kind {
            ObjectKind::Stream => self
                .streams
                .values()
                .filter(|d| mine(&d.app))
                .map(|d| d.name.clone())
                .collect(),
            ObjectKind::Sink => self
                .sinks
                .values()
                .filter(|d| mine(&d.app))
                .map(|d| d.name.clone())
                .collect(),
            ObjectKind::Query => self
                .queries
                .values()
                .filter(|d| mine(&d.app))
                .map(|d| d.name.clone())
                .collect(),
        }
    }

    /// After streams were replaced, every query reading them is planned again over
    /// the new definition; one that no longer plans fails the whole change.
    fn replan_after(&mut self, changes: &[Change]) -> Result<()> {
        let replaced: Vec<&str> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Replaced(ObjectKind::Stream, n) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        if replaced.is_empty() {
            return Ok(());
        }
        let streams = self.stream_infos();
        let stale: Vec<String> = self
            .queries
            .values()
            .filter(|q| replaced.contains(&q.plan.stream.as_str()))
            .map(|q| q.name.clone())
            .collect();
        for name in stale {
            let def = &self.queries[&name];
            let statement = single_query(&def.sql)?;
            let plan = self
                .planner
                .plan_query(&statement, &def.sql, &streams)
                .map_err(|e| {
                    Error::conflict_at(
                        format!(
                            "stream '{}' cannot be replaced: query '{name}' reads it and no longer \
                         plans over the new definition: {}",
                            def.plan.stream,
                            e.without_position()
                        ),
                        statement.position,
                    )
                })?;
            self.queries.get_mut(&name).expect("listed").plan = Arc::new(plan);
        }
        Ok(())
    }

    fn stream_infos(&self) -> Vec<Arc<StreamInfo>> {
        self.streams.values().map(|s| Arc::clone(&s.info)).collect()
    }

    fn apply_one(
        &mut self,
        statement: Statement,
        text: String,
        scope: Scope,
        connectors: &dyn ConnectorCheck,
    ) -> Result<Change> {
        let app = scope.app().map(str::to_string);
        let replace_changed = matches!(scope, Scope::Application(_));
        match statement {
            Statement::CreateStream(s) => {
                let form = definition_form(&text, Some(&s.options));
                let flags = Flags {
                    if_not_exists: s.if_not_exists,
                    or_replace: s.or_replace || replace_changed,
                };
                let name = s.name.clone();
                let Some((replaced, owner)) = self.settle(
                    ObjectKind::Stream,
                    &name,
                    &form,
                    flags,
                    app.clone(),
                    s.position,
                )?
                else {
                    return Ok(Change::Unchanged(ObjectKind::Stream, name));
                };
                let mut def = self.stream_def(*s, text, connectors)?;
                def.fingerprint = form;
                def.app = owner.or(app);
                self.streams.insert(name.clone(), def);
                Ok(made(replaced, ObjectKind::Stream, name))
            }
            Statement::CreateSink(s) => {
                let form = definition_form(&text, Some(&s.options));
                let flags = Flags {
                    if_not_exists: s.if_not_exists,
                    or_replace: s.or_replace || replace_changed,
                };
                let name = s.name.clone();
                let Some((replaced, owner)) = self.settle(
                    ObjectKind::Sink,
                    &name,
                    &form,
                    flags,
                    app.clone(),
                    s.position,
                )?
                else {
                    return Ok(Change::Unchanged(ObjectKind::Sink, name));
                };
                let mut options = s.options;
                let connector = options.require_string("connector", "CREATE SINK")?;
                let claim = connectors
                    .check_sink(&name, &connector, &options)
                    .map_err(|e| e.or_at(s.position))?;
                // Keep only the connector's own keys for the runtime.
                options.take("connector");
                self.sinks.insert(
                    name.clone(),
                    SinkDef {
                        name: name.clone(),
                        sql: text,
                        connector,
                        options,
                        from_network: connectors.is_network(),
                        app: owner.or(app),
                        fingerprint: form,
                        claim,
                    },
                );
                Ok(made(replaced, ObjectKind::Sink, name))
            }
            Statement::Query(q) => self.apply_query(q, text, app, replace_changed),
            Statement::Drop(d) => {
                let exists = match d.kind {
                    ObjectKind::Stream => self.streams.contains_key(&d.name),
                    ObjectKind::Sink => self.sinks.contains_key(&d.name),
                    ObjectKind::Query => self.queries.contains_key(&d.name),
                };
                if !exists {
                    if d.if_exists {
                        return Ok(Change::Unchanged(d.kind, d.name));
                    }
                    let hint = name_hint(&d.name, self.names(d.kind));
                    return Err(Error::user_at(
                        format!("{} '{}' does not exist{hint}", d.kind, d.name),
                        d.position,
                    ));
                }
                self.drop_object(d.kind, &d.name, Some(d.position))?;
                Ok(Change::Dropped(d.kind, d.name))
            }
        }
    }

    fn apply_query(
        &mut self,
        q: QueryStatement,
        text: String,
        app: Option<String>,
        replace_changed: bool,
    ) -> Result<Change> {
        if let Some(sink) = &q.sink
            && !self.sinks.contains_key(sink)
        {
            let hint = name_hint(sink, self.sinks.keys().map(String::as_str));
            let advice = if hint.is_empty() {
                format!(" (create it first with CREATE SINK {sink} WITH (connector = …))")
            } else {
                hint
            };
            return Err(Error::user_at(
                format!("unknown sink '{sink}'{advice}"),
                q.position,
            ));
        }
        let form = definition_form(&text, None);
        let (name, owner, replaced) = match &q.name {
            Some(n) => {
                let flags = Flags {
                    if_not_exists: false,
                    or_replace: q.or_replace || replace_changed,
                };
                match self.settle(ObjectKind::Query, n, &form, flags, app.clone(), q.position)? {
                    None => return Ok(Change::Unchanged(ObjectKind::Query, n.clone())),
                    Some((replaced, owner)) => (n.clone(), owner, replaced),
                }
            }
            None => {
                // Unnamed: the same query into the same sink (or none) is the same
                // query, whatever name it was given.
                let text_key = q.query.to_string();
                let same = self
                    .queries
                    .values()
                    .find(|d| d.sink == q.sink && d.query_text == text_key)
                    .map(|d| d.name.clone());
                if let Some(n) = same {
                    self.adopt(ObjectKind::Query, &n, app);
                    return Ok(Change::Unchanged(ObjectKind::Query, n));
                }
                let n = self.fresh_query_name(q.sink.as_deref().unwrap_or("select"));
                (n, None, false)
            }
        };
        let plan = self.planner.plan_query(&q, &text, &self.stream_infos())?;
        self.queries.insert(
            name.clone(),
            QueryDef {
                name: name.clone(),
                sql: text,
                sink: q.sink.clone(),
                query_text: q.query.to_string(),
                plan: Arc::new(plan),
                app: owner.or(app),
                fingerprint: form,
            },
        );
        Ok(made(replaced, ObjectKind::Query, name))
    }

    /// What a CREATE of `name` does given what exists: `None` when nothing is to be
    /// done (the object stays, and becomes `app`'s if it had no application), else
    /// whether it replaces one, and the owner that carries over.
    fn settle(
        &mut self,
        kind: ObjectKind,
        name: &str,
        form: &str,
        flags: Flags,
        app: Option<String>,
        at: Position,
    ) -> Result<Option<(bool, Option<String>)>> {
        let existing = match kind {
            ObjectKind::Stream => self.streams.get(name).map(|d| (&d.fingerprint, &d.app)),
            ObjectKind::Sink => self.sinks.get(name).map(|d| (&d.fingerprint, &d.app)),
            ObjectKind::Query => self.queries.get(name).map(|d| (&d.fingerprint, &d.app)),
        }
        .map(|(f, a)| (f.clone(), a.clone()));
        match decide(kind, name, existing, form, flags, app.as_deref(), at)? {
            Verdict::Keep => {
                self.adopt(kind, name, app);
                Ok(None)
            }
            Verdict::Build { replaced, owner } => Ok(Some((replaced, owner))),
        }
    }

    /// An object an application defines identically becomes that application's, if
    /// it belonged to none (a catalog from before applications had names).
    fn adopt(&mut self, kind: ObjectKind, name: &str, app: Option<String>) {
        let Some(app) = app else { return };
        let owner = match kind {
            ObjectKind::Stream => self.streams.get_mut(name).map(|d| &mut d.app),
            ObjectKind::Sink => self.sinks.get_mut(name).map(|d| &mut d.app),
            ObjectKind::Query => self.queries.get_mut(name).map(|d| &mut d.app),
        };
        if let Some(owner) = owner
            && owner.is_none()
        {
            *owner = Some(app);
        }
    }

    /// Removes an object nothing uses; `at` positions the error of a DROP statement.
    fn drop_object(&mut self, kind: ObjectKind, name: &str, at: Option<Position>) -> Result<()> {
        let users: Vec<&str> = self
            .queries
            .values()
            .filter(|q| match kind {
                ObjectKind::Stream => q.plan.stream == name,
                ObjectKind::Sink => q.sink.as_deref() == Some(name),
                ObjectKind::Query => false,
            })
            .map(|q| q.name.as_str())
            .collect();
        let error_users: Vec<&str> = match kind {
            ObjectKind::Sink => self
                .streams
                .values()
                .filter(|s| s.error_sink.as_deref() == Some(name))
                .map(|s| s.name.as_str())
                .collect(),
            _ => Vec::new(),
        };
        if !users.is_empty() || !error_users.is_empty() {
            let mut who: Vec<String> = users.iter().map(|q| format!("query '{q}'")).collect();
            who.extend(error_users.iter().map(|s| format!("stream '{s}' (errors)")));
            return Err(Error::Conflict {
                message: format!(
                    "{kind} '{name}' is in use by {}; drop those first",
                    who.join(", ")
                ),
                position: at,
            });
        }
        match kind {
            ObjectKind::Stream => self.streams.remove(name).map(|_| ()),
            ObjectKind::Sink => self.sinks.remove(name).map(|_| ()),
            ObjectKind::Query => self.queries.remove(name).map(|_| ()),
        };
        Ok(())
    }

    fn fresh_query_name(&self, base: &str) -> String {
        if base != "select" && !self.queries.contains_key(base) {
            return base.to_string();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !self.queries.contains_key(n))
            .expect("some name is free")
    }
}

fn made(replaced: bool, kind: ObjectKind, name: String) -> Change {
    if replaced {
        Change::Replaced(kind, name)
    } else {
        Change::Created(kind, name)
    }
}

struct Flags {
    if_not_exists: bool,
    or_replace: bool,
}

enum Verdict {
    /// Nothing to do: the object exists as defined (or IF NOT EXISTS).
    Keep,
    /// Build the object; `replaced` when one of that name existed, whose owner
    /// (application) carries over.
    Build {
        replaced: bool,
        owner: Option<String>,
    },
}

/// What a CREATE does given what exists under its name.
fn decide(
    kind: ObjectKind,
    name: &str,
    existing: Option<(String, Option<String>)>,
    form: &str,
    flags: Flags,
    app: Option<&str>,
    at: Position,
) -> Result<Verdict> {
    let Some((fingerprint, owner)) = existing else {
        return Ok(Verdict::Build {
            replaced: false,
            owner: None,
        });
    };
    if fingerprint == form || flags.if_not_exists {
        return Ok(Verdict::Keep);
    }
    if let (Some(owner), Some(app)) = (owner.as_deref(), app)
        && owner != app
    {
        return Err(Error::conflict_at(
            format!(
                "{kind} '{name}' belongs to application '{owner}' and is defined differently \
                 there: change it in '{owner}', or pick another name"
            ),
            at,
        ));
    }
    if !flags.or_replace {
        let upper = kind.to_string().to_uppercase();
        let how = match app {
            Some(app) => format!(
                "write CREATE OR REPLACE {upper}, or send the whole application with PUT \
                 /applications/{app}"
            ),
            None => format!("write CREATE OR REPLACE {upper}, or DROP {upper} {name} first"),
        };
        return Err(Error::conflict_at(
            format!("{kind} '{name}' already exists with a different definition: {how}"),
            at,
        ));
    }
    Ok(Verdict::Build {
        replaced: true,
        owner,
    })
}

/// The part of a statement that defines its object: its normal form without the
/// `OR REPLACE` / `IF NOT EXISTS` that only say how to apply it, plus the values of
/// the `${ENV}` references in its options (a restart with another `REDIS_URL`
/// defines another sink).
fn definition_form(text: &str, options: Option<&Options>) -> String {
    let mut tokens = sql::normal_tokens(text);
    let is = |t: Option<&String>, word: &str| t.is_some_and(|t| t.eq_ignore_ascii_case(word));
    if is(tokens.first(), "CREATE") {
        tokens[0] = "CREATE".into();
        if is(tokens.get(1), "OR") && is(tokens.get(2), "REPLACE") {
            tokens.drain(1..3);
        }
        if let Some(kind) = tokens.get_mut(1) {
            *kind = kind.to_ascii_uppercase();
        }
        if is(tokens.get(2), "IF") && is(tokens.get(3), "NOT") && is(tokens.get(4), "EXISTS") {
            tokens.drain(2..5);
        }
    }
    let mut form = tokens.join(" ");
    if let Some(options) = options
        && options.env_reference().is_some()
    {
        let mut expanded = options.clone();
        if expanded.expand_env().is_ok() {
            for (k, v) in expanded.iter() {
                form.push_str(&format!("\n{k}={}", v.value));
            }
        }
    }
    form
}

/// The one query statement of a query's stored text.
fn single_query(text: &str) -> Result<QueryStatement> {
    let mut statements = sql::parse_application(text)?;
    match (statements.pop(), statements.is_empty()) {
        (
            Some(sql::Located {
                statement: Statement::Query(q),
                ..
            }),
            true,
        ) => Ok(q),
        _ => Err(Error::internal(format!(
            "a stored query is not one query statement: {text}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::AnyConnector;

    const STREAM: &str = "CREATE STREAM r (id INT, t DOUBLE) WITH (connector = 'simulator')";
    const SINK: &str = "CREATE SINK out WITH (connector = 'stdout')";
    const QUERY: &str = "CREATE QUERY q AS INSERT INTO out SELECT id FROM r WHERE t > 1";

    fn app(parts: &[&str]) -> String {
        parts.join(";\n")
    }

    #[test]
    fn identical_is_unchanged_different_is_a_conflict_or_a_replacement() {
        let mut c = Catalog::new();
        c.apply(&app(&[STREAM, SINK, QUERY]), &AnyConnector)
            .unwrap();
        let again = c
            .apply(
                &format!("-- the same, commented\n{}", app(&[STREAM, SINK, QUERY])),
                &AnyConnector,
            )
            .unwrap();
        assert!(again.iter().all(|c| matches!(c, Change::Unchanged(..))));
        let e = c
            .apply(
                "CREATE QUERY q AS INSERT INTO out SELECT id FROM r WHERE t > 2",
                &AnyConnector,
            )
            .unwrap_err();
        assert!(matches!(e, Error::Conflict { .. }), "{e}");
        assert!(e.to_string().contains("CREATE OR REPLACE QUERY"), "{e}");
        let changes = c
            .apply(
                "CREATE OR REPLACE QUERY q AS INSERT INTO out SELECT id FROM r WHERE t > 2",
                &AnyConnector,
            )
            .unwrap();
        assert_eq!(
            changes,
            vec![Change::Replaced(ObjectKind::Query, "q".into())]
        );
    }

    #[test]
    fn an_application_is_its_whole_text() {
        let mut c = Catalog::new();
        c.replace_application("a", &app(&[STREAM, SINK, QUERY]), &AnyConnector)
            .unwrap();
        assert_eq!(c.objects_of("a", ObjectKind::Query), vec!["q"]);
        // The query is gone from the text and the stream gained a column.
        let changes = c
            .replace_application(
                "a",
                &app(&[
                    "CREATE STREAM r (id INT, t DOUBLE, h DOUBLE) WITH (connector = 'simulator')",
                    SINK,
                ]),
                &AnyConnector,
            )
            .unwrap();
        assert_eq!(
            changes,
            vec![
                Change::Replaced(ObjectKind::Stream, "r".into()),
                Change::Unchanged(ObjectKind::Sink, "out".into()),
                Change::Dropped(ObjectKind::Query, "q".into()),
            ]
        );
        // Another application may read r but not redefine it.
        c.replace_application(
            "b",
            "CREATE QUERY q2 AS INSERT INTO out SELECT h FROM r",
            &AnyConnector,
        )
        .unwrap();
        let e = c
            .replace_application(
                "b",
                "CREATE STREAM r (x INT) WITH (connector = 'simulator')",
                &AnyConnector,
            )
            .unwrap_err();
        assert!(e.to_string().contains("belongs to application 'a'"), "{e}");
        // Replacing r under q2 such that q2 no longer plans fails, naming q2.
        let e = c
            .replace_application("a", &app(&[STREAM, SINK]), &AnyConnector)
            .unwrap_err();
        assert!(e.to_string().contains("query 'q2'"), "{e}");
        // a cannot drop what b uses.
        let e = c.drop_application("a").unwrap_err();
        assert!(e.to_string().contains("in use by query 'q2'"), "{e}");
        c.drop_application("b").unwrap();
        c.drop_application("a").unwrap();
        assert!(c.streams.is_empty() && c.sinks.is_empty() && c.queries.is_empty());
    }

    #[test]
    fn or_replace_and_if_not_exists_do_not_count_as_a_change() {
        let mut c = Catalog::new();
        c.apply(STREAM, &AnyConnector).unwrap();
        let changes = c
            .apply(
                "CREATE OR REPLACE STREAM r (id INT, t DOUBLE) WITH (connector = 'simulator')",
                &AnyConnector,
            )
            .unwrap();
        assert_eq!(
            changes,
            vec![Change::Unchanged(ObjectKind::Stream, "r".into())]
        );
        let e = sql::parse_application(
            "CREATE OR REPLACE STREAM IF NOT EXISTS r (id INT) WITH (connector = 'simulator')",
        )
        .unwrap_err();
        assert!(e.to_string().contains("contradict"), "{e}");
    }
}
