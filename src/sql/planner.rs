//! Query planning (sql layer → engine): a continuous query's SQL becomes a
//! [`QueryPlan`] of DataFusion physical expressions and accumulators.
//!
//! DataFusion plans the (rewritten) query against a planning table per stream, and
//! its optimizer runs; then the logical plan is walked bottom-up and each node is
//! lowered to an engine operator. Only the shapes a continuous query can run are
//! accepted (scan, filter, projection, one windowed aggregate, and after it HAVING /
//! projection / ORDER BY); anything else is refused with a message saying why.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::MemoryCatalogProviderList;
use datafusion::catalog::empty::EmptyTable;
use datafusion::common::{DFSchema, ScalarValue, TableReference};
use datafusion::execution::context::{SessionConfig, SessionContext, SessionState};
use datafusion::execution::{FunctionRegistry, SessionStateBuilder};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, lit};
use datafusion::optimizer::{Optimizer, OptimizerRule};
use datafusion::physical_expr::aggregate::LoweredAggregateBuilder;
use datafusion::physical_expr::{
    LexOrdering, PhysicalExpr, create_physical_expr, create_physical_sort_exprs,
};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast;

use super::QueryStatement;
use super::diagnose::{self, Scope};
use super::rewrite::{self, WINDOW_END, WINDOW_START, WindowKind};
use crate::engine::aggregate::{AggregatePlan, GroupKey};
use crate::engine::stateless::StatelessOp;
use crate::engine::window::WindowSpec;
use crate::engine::{InputColumn, QueryPlan};
use crate::error::{Error, Position, Result};
use crate::limits::MAX_WINDOWS_PER_RECORD;

/// The virtual column every stream has: when the record arrived (ms).
pub const ARRIVAL_TIME: &str = "arrival_time";

/// What the planner needs to know of a stream.
#[derive(Debug, Clone)]
pub struct StreamInfo {
    pub name: String,
    /// Schema of the stream's decoded batches: declared columns, then `arrival_time`.
    pub schema: SchemaRef,
    /// Declared column names (what `SELECT *` means).
    pub declared: Vec<String>,
    /// Index of the time column windows use: the event-time column, or
    /// `arrival_time` on a processing-time stream.
    pub time_index: usize,
    /// The column holding the MQTT topic (`METADATA FROM 'topic'`), for `topic(n)`.
    pub topic_column: Option<String>,
}

impl StreamInfo {
    pub fn time_column(&self) -> &str {
        self.schema.field(self.time_index).name()
    }
}

/// Plans queries; holds a DataFusion session configured for streaming SQL.
#[derive(Clone)]
pub struct Planner {
    state: SessionState,
}

impl Default for Planner {
    fn default() -> Self {
        Self::new()
    }
}

impl Planner {
    pub fn new() -> Self {
        let mut config = SessionConfig::new().with_target_partitions(1);
        let opts = config.options_mut();
        // Identifiers are case-sensitive, as written (like Flink): JSON field names
        // such as `deviceId` keep their case in SQL and in outputs.
        opts.sql_parser.enable_ident_normalization = false;
        opts.sql_parser.map_string_types_to_utf8view = false;
        opts.sql_parser.collect_spans = true;
        // The single-distinct rewrite splits an aggregate in two, which has no
        // streaming meaning: DISTINCT aggregates run in their own accumulators instead.
        let rules: Vec<Arc<dyn OptimizerRule + Send + Sync>> = Optimizer::new()
            .rules
            .into_iter()
            .filter(|r| r.name() != "single_distinct_aggregation_to_group_by")
            .collect();
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_optimizer_rules(rules)
            .build();
        // Functions whose output a number decides check its size first (a record
        // that would make too large a value goes to the error output).
        for f in super::bounded::bounded_functions(state.scalar_functions()) {
            // Registering over a built-in function returns it; nothing to keep.
            let _ = state.register_udf(Arc::new(f));
        }
        Planner { state }
    }

    /// The SQL type of a stream column as an Arrow type. DataFusion decides, except
    /// that a bare `TIMESTAMP` means milliseconds (JSON numbers are epoch milliseconds,
    /// the unit sensors send), and strings are plain UTF-8.
    pub fn resolve_type(&self, t: &ast::DataType, at: Position) -> Result<DataType> {
        if let ast::DataType::Timestamp(None, tz) = t {
            let tz = match tz {
                ast::TimezoneInfo::WithTimeZone | ast::TimezoneInfo::Tz => Some("+00:00".into()),
                _ => None,
            };
            return Ok(DataType::Timestamp(TimeUnit::Millisecond, tz));
        }
        let expr = self
            .state
            .create_logical_expr(&format!("CAST(NULL AS {t})"), &DFSchema::empty())
            .map_err(|e| {
                let message = diagnose::tidy(&e.find_root().to_string());
                match diagnose::unknown_type(&message) {
                    Some(m) => Error::user_at(m, at),
                    None => Error::from(e).or_at(at),
                }
            })?;
        match expr {
            Expr::Cast(c) => Ok(c.field.data_type().clone()),
            Expr::TryCast(c) => Ok(c.field.data_type().clone()),
            other => Err(Error::internal(format!("type {t} planned as {other}"))),
        }
    }

    /// An `INTERVAL` (or a duration string such as `'5 seconds'`) in milliseconds.
    pub fn interval_ms(&self, e: &ast::Expr, at: Position) -> Result<i64> {
        let text = match e {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::SingleQuotedString(s) => format!("INTERVAL '{s}'"),
                _ => e.to_string(),
            },
            _ => e.to_string(),
        };
        let bad = |why: &str| Error::user_at(format!("'{e}' is not a usable duration: {why}"), at);
        let expr = self
            .state
            .create_logical_expr(&text, &DFSchema::empty())
            .map_err(|_| bad("write INTERVAL '10' SECOND or INTERVAL '1 minute'"))?;
        let value = match expr {
            Expr::Literal(v, _) => v,
            _ => return Err(bad("it must be a constant INTERVAL")),
        };
        let ms = match value {
            ScalarValue::IntervalMonthDayNano(Some(v)) => {
                if v.months != 0 {
                    return Err(bad("months have no fixed length; use days"));
                }
                v.days as i64 * 86_400_000 + v.nanoseconds / 1_000_000
            }
            ScalarValue::IntervalDayTime(Some(v)) => {
                v.days as i64 * 86_400_000 + v.milliseconds as i64
            }
            ScalarValue::IntervalYearMonth(Some(_)) => {
                return Err(bad("months have no fixed length; use days"));
            }
            _ => return Err(bad("it must be a constant INTERVAL")),
        };
        if ms <= 0 {
            return Err(bad("it must be at least 1 millisecond"));
        }
        Ok(ms)
    }

    /// Plans a continuous query over the given streams. `text` is the statement as
    /// written (it starts at `q.position`), for errors that point inside it.
    pub fn plan_query(
        &self,
        q: &QueryStatement,
        text: &str,
        streams: &[Arc<StreamInfo>],
    ) -> Result<QueryPlan> {
        let at = q.position;
        let mut query = q.query.as_ref().clone();
        let window_call = rewrite::extract_window(&mut query, at)?;
        let source = rewrite::single_source(&query);
        if let Some((name, alias)) = &source
            && let Some(s) = streams.iter().find(|s| &s.name == name)
        {
            rewrite::expand_wildcards(&mut query, &s.declared, alias.as_deref());
            rewrite::topic_function(&mut query, &s.name, s.topic_column.as_deref(), at)?;
        }

        // A fresh table catalog per plan: only the catalog's streams exist, and
        // planners shared across threads never see each other's tables.
        let fresh = SessionStateBuilder::new_from_existing(self.state.clone())
            .with_config(self.state.config().clone())
            .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
            .build();
        let ctx = SessionContext::new_with_state(fresh);
        let mut read: Option<(String, SchemaRef)> = None;
        for s in streams {
            let mut fields: Vec<Field> = s
                .schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            if window_call.is_some() {
                let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
                fields.push(Field::new(WINDOW_START, ts.clone(), false));
                fields.push(Field::new(WINDOW_END, ts, false));
            }
            let schema = Arc::new(Schema::new(fields));
            if let Some((name, alias)) = &source
                && name == &s.name
            {
                read = Some((
                    alias.clone().unwrap_or_else(|| name.clone()),
                    schema.clone(),
                ));
            }
            // A bare reference: a name given as a string would be parsed as SQL and
            // folded to lower case, so `WEATHERSTREAM` could never be found.
            let table = EmptyTable::new(schema);
            ctx.register_table(TableReference::bare(s.name.as_str()), Arc::new(table))
                .map_err(Error::from)?;
        }
        let state = ctx.state();
        let mut scope = Scope {
            query: Some(&query),
            text: Some((text, at)),
            relations: Some(("stream", streams.iter().map(|s| s.name.clone()).collect())),
            at: Some(at),
            windowed: Some(window_call.is_some()),
            ..Scope::new(&state)
        };
        if let Some((qualifier, schema)) = &read {
            scope = scope.with_table(qualifier, schema);
        }
        diagnose::check_relations(&query, &scope)?;
        // Refused before DataFusion plans it: its complaint would be about ambiguous
        // columns, not about the join.
        if let Some(p) = diagnose::join_position(&query) {
            return Err(Error::user_at(
                "a join is not supported in a continuous query",
                p,
            ));
        }
        if let Some(p) = diagnose::subquery_position(&query, &state) {
            return Err(Error::user_at(
                "a subquery in an expression (IN, EXISTS or a scalar subquery) is not \
                 supported in a continuous query; a subquery in FROM is",
                p,
            ));
        }
        let statement =
            DFStatement::Statement(Box::new(ast::Statement::Query(Box::new(query.clone()))));
        let logical = plan_now(state.statement_to_plan(statement))?
            .map_err(|e| diagnose::explain(e, &scope))?;
        let logical = state
            .optimize(&logical)
            .map_err(|e| diagnose::explain(e, &scope))?;

        let mut lowering = Lowering {
            planner: self,
            state: &state,
            scope: &scope,
            query: &query,
            streams,
            stage: None,
            window: None,
            window_call: window_call.as_ref(),
            at,
        };
        lowering.lower(&logical)?;
        let stage = lowering
            .stage
            .take()
            .ok_or_else(|| Error::user_at("a continuous query must read FROM a stream", at))?;
        if window_call.is_some() && stage.aggregate.is_none() {
            return Err(Error::user_at(
                "a window in GROUP BY needs at least one aggregate or group column",
                at,
            ));
        }
        let output_schema = Arc::new(logical.schema().as_arrow().clone());
        let plan = QueryPlan {
            stream: stage.stream.name.clone(),
            input: stage.input,
            input_schema: stage.input_schema,
            time_index: stage.stream.time_index,
            pre: stage.pre,
            aggregate: stage.aggregate,
            post: stage.post,
            output_schema,
        };
        for e in expressions(&plan) {
            super::bounded::check_constants(&e).map_err(|e| e.or_at(at))?;
        }
        Ok(plan)
    }
}

/// Every physical expression a plan evaluates.
fn expressions(plan: &QueryPlan) -> Vec<Arc<dyn PhysicalExpr>> {
    let mut out = Vec::new();
    for op in plan.pre.iter().chain(&plan.post) {
        match op {
            StatelessOp::Filter(e) => out.push(Arc::clone(e)),
            StatelessOp::Project { exprs, .. } => out.extend(exprs.iter().cloned()),
            StatelessOp::Sort(ordering) => out.extend(ordering.iter().map(|s| Arc::clone(&s.expr))),
        }
    }
    if let Some(a) = &plan.aggregate {
        out.push(Arc::clone(&a.time));
        out.extend(a.keys.iter().cloned());
        for f in &a.aggregates {
            out.extend(f.expressions());
            out.extend(f.order_bys().iter().map(|o| Arc::clone(&o.expr)));
        }
        out.extend(a.filters.iter().flatten().cloned());
    }
    out
}

/// Completes a planning future that cannot wait on anything: the planning tables are
/// in memory. Polling it once (instead of a nested executor) keeps planning callable
/// from any context, async or not.
fn plan_now<T>(fut: impl std::future::Future<Output = T>) -> Result<T> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Ok(v),
        std::task::Poll::Pending => Err(Error::internal("query planning waited on I/O")),
    }
}

struct Stage {
    stream: Arc<StreamInfo>,
    input: Vec<InputColumn>,
    input_schema: SchemaRef,
    pre: Vec<StatelessOp>,
    aggregate: Option<Arc<AggregatePlan>>,
    post: Vec<StatelessOp>,
}

struct Lowering<'a> {
    planner: &'a Planner,
    state: &'a SessionState,
    scope: &'a Scope<'a>,
    query: &'a ast::Query,
    streams: &'a [Arc<StreamInfo>],
    stage: Option<Stage>,
    window: Option<WindowSpec>,
    window_call: Option<&'a rewrite::WindowCall>,
    at: Position,
}

impl Lowering<'_> {
    fn unsupported(&self, what: &str) -> Error {
        self.unsupported_at(what, None)
    }

    /// Refuses what a continuous query cannot run, where it is written when known.
    fn unsupported_at(&self, what: &str, at: Option<Position>) -> Error {
        Error::user_at(
            format!("{what} is not supported in a continuous query"),
            at.unwrap_or(self.at),
        )
    }

    fn physical(&self, e: &Expr, schema: &DFSchema) -> Result<Arc<dyn PhysicalExpr>> {
        create_physical_expr(
            e,
            schema,
            self.state.execution_props(),
            &PhysicalPlanningContext::default(),
        )
        .map_err(|e| diagnose::explain(e, self.scope))
    }

    /// Before aggregation the window columns only carry event time: they may be passed
    /// through, not computed on.
    fn check_no_window_use(&self, e: &Expr, passthrough_ok: bool) -> Result<()> {
        if passthrough_ok && matches!(e.clone().unalias(), Expr::Column(_)) {
            return Ok(());
        }
        let uses = e
            .column_refs()
            .iter()
            .any(|c| c.name == WINDOW_START || c.name == WINDOW_END);
        if uses {
            return Err(Error::user_at(
                "window_start and window_end exist only after aggregation: use them in \
                 SELECT, HAVING or ORDER BY of the windowed query, not in WHERE or inside \
                 an aggregate",
                self.scope
                    .find_identifier(WINDOW_START)
                    .or_else(|| self.scope.find_identifier(WINDOW_END))
                    .unwrap_or(self.at),
            ));
        }
        Ok(())
    }

    fn lower(&mut self, plan: &LogicalPlan) -> Result<()> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                if self.stage.is_some() {
                    return Err(self.unsupported("reading more than one stream (joins, unions)"));
                }
                let name = scan.table_name.table();
                let stream = self
                    .streams
                    .iter()
                    .find(|s| s.name == name)
                    .cloned()
                    .ok_or_else(|| Error::user_at(format!("unknown stream '{name}'"), self.at))?;
                if scan.fetch.is_some() || !scan.filters.is_empty() {
                    return Err(Error::internal("unexpected pushdown into a stream scan"));
                }
                let table = scan.source.schema();
                let indices: Vec<usize> = match &scan.projection {
                    Some(p) => p.clone(),
                    None => (0..table.fields().len()).collect(),
                };
                let decoded = stream.schema.fields().len();
                let input = indices
                    .iter()
                    .map(|&i| {
                        if i < decoded {
                            InputColumn::Stream(i)
                        } else {
                            InputColumn::WindowTime
                        }
                    })
                    .collect();
                self.resolve_window(&stream)?;
                self.stage = Some(Stage {
                    stream,
                    input,
                    input_schema: Arc::new(scan.projected_schema.as_arrow().clone()),
                    pre: Vec::new(),
                    aggregate: None,
                    post: Vec::new(),
                });
                Ok(())
            }
            LogicalPlan::Filter(f) => {
                self.lower(&f.input)?;
                let after = self.after_aggregate();
                if !after {
                    self.check_no_window_use(&f.predicate, false)?;
                }
                let op = StatelessOp::Filter(self.physical(&f.predicate, f.input.schema())?);
                self.push_op(op, after);
                Ok(())
            }
            LogicalPlan::Projection(p) => {
                self.lower(&p.input)?;
                let after = self.after_aggregate();
                let mut exprs = Vec::with_capacity(p.expr.len());
                for e in &p.expr {
                    if !after {
                        self.check_no_window_use(e, true)?;
                    }
                    exprs.push(self.physical(e, p.input.schema())?);
                }
                let schema = Arc::new(p.schema.as_arrow().clone());
                self.push_op(StatelessOp::Project { exprs, schema }, after);
                Ok(())
            }
            LogicalPlan::SubqueryAlias(a) => self.lower(&a.input),
            LogicalPlan::Aggregate(a) => {
                self.lower(&a.input)?;
                self.lower_aggregate(a)
            }
            LogicalPlan::Sort(s) => {
                self.lower(&s.input)?;
                if s.fetch.is_some() {
                    return Err(self.unsupported_at("LIMIT", diagnose::limit_position(self.query)));
                }
                if !self.after_aggregate() {
                    return Err(Error::user_at(
                        "ORDER BY needs a windowed aggregate: an unbounded stream has no end \
                         to sort to (in a windowed query it orders each window's results)",
                        diagnose::order_by_position(self.query).unwrap_or(self.at),
                    ));
                }
                let exprs = create_physical_sort_exprs(
                    &s.expr,
                    s.input.schema(),
                    self.state.execution_props(),
                    &PhysicalPlanningContext::default(),
                )
                .map_err(|e| diagnose::explain(e, self.scope))?;
                if let Some(ordering) = LexOrdering::new(exprs) {
                    self.push_op(StatelessOp::Sort(ordering), true);
                }
                Ok(())
            }
            LogicalPlan::Limit(_) => {
                Err(self.unsupported_at("LIMIT", diagnose::limit_position(self.query)))
            }
            LogicalPlan::Join(_) => {
                Err(self.unsupported_at("a join", diagnose::join_position(self.query)))
            }
            LogicalPlan::Union(_) => Err(self.unsupported("UNION")),
            LogicalPlan::Window(_) => Err(self.unsupported("a window function with OVER")),
            LogicalPlan::Distinct(_) => {
                Err(self.unsupported("DISTINCT without a window (its state would grow forever)"))
            }
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => Err(Error::user_at(
                "a continuous query must read FROM a stream",
                self.at,
            )),
            LogicalPlan::Unnest(_) => Err(self.unsupported("UNNEST")),
            other => Err(self.unsupported(&format!("'{}'", other.display()))),
        }
    }

    fn after_aggregate(&self) -> bool {
        self.stage.as_ref().is_some_and(|s| s.aggregate.is_some())
    }

    fn push_op(&mut self, op: StatelessOp, after: bool) {
        let stage = self.stage.as_mut().expect("lowered input first");
        if after {
            stage.post.push(op);
        } else {
            stage.pre.push(op);
        }
    }

    /// Resolves the GROUP BY window against the stream it reads.
    fn resolve_window(&mut self, stream: &StreamInfo) -> Result<()> {
        let Some(call) = self.window_call else {
            return Ok(());
        };
        let at = call.position;
        if call.time_column != stream.time_column() {
            let hint = if stream.time_column() == ARRIVAL_TIME {
                format!(
                    "stream '{}' declares no event time (no WATERMARK), so it runs on \
                     processing time: use {ARRIVAL_TIME}",
                    stream.name
                )
            } else {
                format!(
                    "stream '{}' keeps event time in '{}'",
                    stream.name,
                    stream.time_column()
                )
            };
            return Err(Error::user_at(
                format!(
                    "windows must use the stream's time column: {hint}, not '{}'",
                    call.time_column
                ),
                at,
            ));
        }
        let ms = |e: &ast::Expr| self.planner.interval_ms(e, at);
        self.window = Some(match call.kind {
            WindowKind::Tumble => WindowSpec::Tumble {
                size: ms(&call.args[0])?,
            },
            WindowKind::Hop => {
                let (slide, size) = (ms(&call.args[0])?, ms(&call.args[1])?);
                if slide > size {
                    return Err(Error::user_at(
                        "HOP(ts, slide, size): the slide must not exceed the size",
                        at,
                    ));
                }
                let spec = WindowSpec::Hop { slide, size };
                // Every record is added to each of its windows, and each open window
                // holds state: a slide far below the size multiplies both.
                let windows = spec.lanes();
                if windows > MAX_WINDOWS_PER_RECORD {
                    return Err(Error::user_at(
                        format!(
                            "HOP(ts, slide, size) puts every record in {windows} windows (size / \
                             slide = {size} ms / {slide} ms); at most {MAX_WINDOWS_PER_RECORD} \
                             are allowed: use a slide of at least {} ms, or a smaller size",
                            (size + MAX_WINDOWS_PER_RECORD - 1) / MAX_WINDOWS_PER_RECORD
                        ),
                        at,
                    ));
                }
                spec
            }
            WindowKind::Session => WindowSpec::Session {
                gap: ms(&call.args[0])?,
            },
        });
        Ok(())
    }

    fn lower_aggregate(&mut self, a: &datafusion::logical_expr::Aggregate) -> Result<()> {
        let Some(window) = self.window else {
            return Err(Error::user_at(
                diagnose::NEEDS_WINDOW,
                diagnose::aggregation_position(self.query, self.state).unwrap_or(self.at),
            ));
        };
        if self.after_aggregate() {
            return Err(self.unsupported("a second aggregation over windowed results"));
        }
        let input_schema = a.input.schema();
        let mut layout = Vec::new();
        let mut keys = Vec::new();
        let mut key_fields = Vec::new();
        let mut time = None;
        for e in &a.group_expr {
            if let Expr::Column(c) = e
                && (c.name == WINDOW_START || c.name == WINDOW_END)
            {
                let is_start = c.name == WINDOW_START;
                layout.push(if is_start {
                    GroupKey::WindowStart
                } else {
                    GroupKey::WindowEnd
                });
                if time.is_none() {
                    time = Some(self.physical(e, input_schema)?);
                }
                continue;
            }
            if matches!(e, Expr::GroupingSet(_)) {
                return Err(self.unsupported("GROUPING SETS, CUBE or ROLLUP"));
            }
            self.check_no_window_use(e, false)?;
            let (_, field) = e.to_field(input_schema).map_err(Error::from)?;
            layout.push(GroupKey::Key(keys.len()));
            key_fields.push(field.as_ref().clone().with_name(format!("k{}", keys.len())));
            keys.push(self.physical(e, input_schema)?);
        }
        let time = time.ok_or_else(|| Error::internal("window columns missing from GROUP BY"))?;
        if keys.is_empty() {
            // GroupValues needs at least one column to count rows: group all rows of a
            // window under one constant key.
            keys.push(self.physical(&lit(true), input_schema)?);
            key_fields.push(Field::new("k0", DataType::Boolean, false));
        }
        let physical_input = Arc::new(input_schema.as_arrow().clone());
        let mut aggregates = Vec::new();
        let mut filters = Vec::new();
        for e in &a.aggr_expr {
            self.check_no_window_use(e, false)?;
            let lowered = LoweredAggregateBuilder::new(
                e,
                input_schema,
                &physical_input,
                self.state.execution_props(),
                &PhysicalPlanningContext::default(),
            )
            .build()
            .map_err(|e| diagnose::explain(e, self.scope))?;
            // Surface "not supported for this type" now, at CREATE time, rather than
            // on the first record (accumulators are otherwise created lazily).
            lowered
                .aggregate
                .create_accumulator()
                .map_err(|e| diagnose::explain(e, self.scope))?;
            aggregates.push(lowered.aggregate);
            filters.push(lowered.filter);
        }
        let plan = AggregatePlan {
            window,
            time,
            group_layout: layout,
            keys,
            key_schema: Arc::new(Schema::new(key_fields)),
            aggregates,
            filters,
            output_schema: Arc::new(a.schema.as_arrow().clone()),
        };
        self.stage.as_mut().expect("lowered input first").aggregate = Some(Arc::new(plan));
        Ok(())
    }
}
