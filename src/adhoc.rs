//! Ad hoc SQL over what the pipelines stored (beside the data flow, reading its ends):
//! every `archive` sink is a table over its objects (a DataFusion ListingTable with the
//! sink's Hive partition columns, so a filter on `dt`/`hour` skips other partitions),
//! and every embedded alert table is a table of its items. Used by `POST /query` and
//! `sluice query`.
//!
//! The SQL is untrusted: only one read-only statement (`SELECT`, `WITH`, `VALUES`,
//! `EXPLAIN` of those) runs; DDL, DML, `COPY` and `SET` are refused before planning, and
//! no table can name a file or URL (only the tables registered here exist). Each
//! query runs in its own session with a memory pool (no spilling to disk), a timeout
//! and a row limit, which every operator of its plan obeys (`guard`), on threads apart
//! from the API and the streams, a bounded number at a time (`executor`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{SetExpr, Statement};
use futures::StreamExt;

use crate::catalog::{Catalog, SinkDef};
use crate::error::{Error, Position, Result};
use crate::render::{self, TimestampFormat};
use crate::sinks::SinkContext;
use crate::sinks::archive::{ArchiveConfig, Format};
use crate::sql::diagnose::{self, Scope};
use crate::tables;

mod executor;
mod guard;

pub use executor::{AdhocError, Executor};
use guard::Stop;

/// Limits of ad hoc queries.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rows returned when the request names no limit.
    pub default_rows: usize,
    /// Most rows a request may ask for.
    pub max_rows: usize,
    /// How long one query may run; every operator stops at it.
    pub timeout: Duration,
    /// Memory for one query's operators (sorts, aggregates, joins, and every batch
    /// each operator hands on); beyond it the query fails instead of growing.
    pub memory_bytes: usize,
    /// Threads the [`Executor`] runs queries on, apart from the API and the streams.
    pub threads: usize,
    /// Queries the [`Executor`] runs at once.
    pub concurrency: usize,
    /// Queries that may wait for a turn; more are refused (503, `Retry-After`).
    pub queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            default_rows: 1_000,
            max_rows: 100_000,
            timeout: Duration::from_secs(30),
            memory_bytes: 256 << 20,
            threads: 1,
            concurrency: 2,
            queue: 4,
        }
    }
}

/// What ad hoc SQL can see.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Sinks of the catalog (the `archive` ones become tables).
    pub sinks: Vec<SinkDef>,
    /// The output schema of a query writing each sink: an archive with no object yet
    /// is an empty table of that schema.
    pub schemas: HashMap<String, SchemaRef>,
    /// Where embedded tables live (the server's data directory).
    pub data_dir: Option<PathBuf>,
    /// How the sinks were built (data dir for default archive paths).
    pub sink_context: SinkContext,
    /// True inside the server: embedded tables are read through the objects its sinks
    /// write; false for a separate process (`sluice query`), which reads their logs.
    pub shared_tables: bool,
}

/// A finished ad hoc query.
#[derive(Debug)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// More rows existed than the limit let through.
    pub truncated: bool,
    pub elapsed: Duration,
}

/// Runs one read-only statement; `limit` defaults to and is capped by `limits`, and
/// every operator stops at the timeout and counts its batches against the memory
/// limit (see `guard`). This runs on the caller's runtime; the server and `sluice
/// query` run it through an [`Executor`], on threads of its own.
pub async fn run(
    sql: &str,
    limit: Option<usize>,
    sources: &Sources,
    limits: &Limits,
) -> Result<QueryOutput> {
    let stop = Stop {
        deadline: Instant::now() + limits.timeout,
        cancelled: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    // The guards stop the work at the deadline; this stops waiting for it, should
    // the query be somewhere no guard is (listing a slow store).
    let grace = Duration::from_secs(1);
    match tokio::time::timeout(
        limits.timeout + grace,
        run_until(sql, limit, sources, limits, stop),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(timeout_error(limits)),
    }
}

/// The refusal of a query that reached its time limit.
fn timeout_error(limits: &Limits) -> Error {
    Error::user(format!(
        "the query ran longer than {} s and was stopped; narrow it (a filter on the \
         partition columns skips whole partitions)",
        limits.timeout.as_secs()
    ))
}

/// [`run`], stopping at `stop`.
async fn run_until(
    sql: &str,
    limit: Option<usize>,
    sources: &Sources,
    limits: &Limits,
    stop: Stop,
) -> Result<QueryOutput> {
    let started = Instant::now();
    let limit = limit.unwrap_or(limits.default_rows);
    if limit > limits.max_rows {
        return Err(Error::user(format!(
            "limit {limit} is above the most rows a query may return ({})",
            limits.max_rows
        )));
    }
    // Whatever failed once the deadline passed, failed because of it.
    let stopped = |e: Error| {
        if stop.cancelled.load(std::sync::atomic::Ordering::Relaxed)
            || Instant::now() >= stop.deadline
        {
            timeout_error(limits)
        } else {
            e
        }
    };
    let ctx = session(limits)?;
    let state = ctx.state();
    let parsed = parse(&state, sql)?;
    let references = state
        .resolve_table_references(&parsed)
        .map_err(|e| sql_error(e, None))?;
    for r in references {
        register(&ctx, r.table(), sources).await.map_err(stopped)?;
    }
    let state = ctx.state();
    let query = match &parsed {
        DfStatement::Statement(s) => match s.as_ref() {
            Statement::Query(q) => Some(q.as_ref().clone()),
            _ => None,
        },
        _ => None,
    };
    let names = table_names(sources).into_iter().map(|(n, _)| n).collect();
    let scope = Scope {
        query: query.as_ref(),
        text: Some((sql, Position { line: 1, column: 1 })),
        relations: Some(("table", names)),
        ..Scope::new(&state)
    };
    let plan = state
        .statement_to_plan(parsed)
        .await
        .map_err(|e| sql_error(e, Some(&scope)))?;
    // Defence in depth: the statement check above already refused these.
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| sql_error(e, Some(&scope)))?;
    let df = ctx
        .execute_logical_plan(plan)
        .await
        .map_err(|e| sql_error(e, Some(&scope)))?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    // Optimizing happens here, and with it constant folding: `seq > 'many'`.
    let physical = df
        .create_physical_plan()
        .await
        .map_err(|e| sql_error(e, Some(&scope)))?;
    check_constants(&physical)?;
    let physical = guard::guard_plan(physical, &stop, limits.memory_bytes)?;
    let mut stream = datafusion::physical_plan::execute_stream(physical, ctx.task_ctx())
        .map_err(|e| execution_error(e, limits))?;
    let (mut batches, mut rows, mut truncated) = (Vec::new(), 0usize, false);
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| stopped(execution_error(e, limits)))?;
        let room = limit - rows;
        if b.num_rows() > room {
            truncated = true;
            if room > 0 {
                batches.push(b.slice(0, room));
                rows += room;
            }
            break;
        }
        rows += b.num_rows();
        batches.push(b);
    }
    Ok(QueryOutput {
        schema,
        batches,
        rows,
        truncated,
        elapsed: started.elapsed(),
    })
}

/// Refuses a plan holding a constant too large to copy into every row of a batch.
fn check_constants(plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut found = Ok(());
    plan.apply(|node| {
        node.apply_expressions(&mut |e| {
            found = crate::sql::bounded::check_constants(e);
            Ok(match found {
                Ok(()) => TreeNodeRecursion::Continue,
                Err(_) => TreeNodeRecursion::Stop,
            })
        })
    })?;
    found
}

/// An error met while the query ran, in Sluice's words when it is about a limit.
fn execution_error(e: DataFusionError, limits: &Limits) -> Error {
    let root = e.find_root();
    if let DataFusionError::ResourcesExhausted(_) = root {
        return Error::user(format!(
            "the query needs more than the {} of memory an ad hoc query may use; narrow it \
             (fewer rows or columns, a LIMIT, a filter on the partition columns) ({root})",
            crate::limits::fmt_bytes(limits.memory_bytes as u128),
        ));
    }
    Error::from(e)
}

/// The names ad hoc SQL can query: archive sinks and embedded tables, with what
/// each is.
pub fn table_names(sources: &Sources) -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = sources
        .sinks
        .iter()
        .filter(|s| s.connector == "archive")
        .map(|s| (s.name.clone(), "archive"))
        .collect();
    if let Some(dir) = &sources.data_dir {
        for t in tables::names(dir) {
            if !out.iter().any(|(n, _)| *n == t) {
                out.push((t, "table"));
            }
        }
    }
    out.sort();
    out
}

fn session(limits: &Limits) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_bytes, 1.0)
        // A query over the memory limit fails; it never fills the disk either.
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()?;
    let mut config = SessionConfig::new()
        .with_information_schema(false)
        .with_target_partitions(2)
        // The batch length constants and value limits are sized for (limits.rs).
        .with_batch_size(crate::limits::MAX_BATCH_ROWS);
    // Positions for planning errors. URL tables (`SELECT * FROM 'file.csv'`) stay
    // off (DataFusion's default): only the tables registered here exist.
    let opts = config.options_mut();
    opts.sql_parser.collect_spans = true;
    // Case-sensitive identifiers, as in continuous queries: `deviceId` as written.
    opts.sql_parser.enable_ident_normalization = false;
    // Nesting is limited as for continuous queries (`sql::depth`), with the same
    // backstop in the parser.
    opts.sql_parser.recursion_limit = datafusion::common::config::ConfigNonZeroUsize::try_new(
        crate::sql::parser::RECURSION_LIMIT,
    )?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    // Functions whose output a number decides check its size before they run
    // (`range(0, 3e8)` would make a 2.4 GB list outside the memory pool).
    for f in crate::sql::bounded::bounded_functions(ctx.state().scalar_functions()) {
        ctx.register_udf(f);
    }
    Ok(ctx)
}

/// Parses the one statement, within the size and depth limits of `sql::depth` and
/// read-only. On a stack sized for those limits: a refused statement is dropped here.
fn parse(state: &datafusion::execution::SessionState, sql: &str) -> Result<DfStatement> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;
    crate::limits::with_stack(|| {
        let tokens = Tokenizer::new(&GenericDialect {}, sql)
            .tokenize_with_location()
            .map_err(|e| crate::sql::parser::parser_error(e.into()))?;
        crate::sql::depth::check_tokens(&tokens)?;
        drop(tokens);
        let parsed = state
            .sql_to_statement(sql, &datafusion::config::Dialect::Generic)
            .map_err(|e| sql_error(e, None))?;
        let statement = check_read_only(&parsed)?;
        crate::sql::depth::check_depth(statement, Position { line: 1, column: 1 })?;
        Ok(parsed)
    })
}

/// Refuses everything but a query (or EXPLAIN of one): SET would change limits, and
/// DDL/DML/COPY would read or write files.
/// Returns the statement that holds the query.
fn check_read_only(s: &DfStatement) -> Result<&Statement> {
    let query = match s {
        DfStatement::Statement(st) => match st.as_ref() {
            Statement::Query(q) => Some((q, st.as_ref())),
            Statement::Explain { statement, .. } => match statement.as_ref() {
                Statement::Query(q) => Some((q, statement.as_ref())),
                _ => None,
            },
            _ => None,
        },
        DfStatement::Explain(e) => match e.statement.as_ref() {
            DfStatement::Statement(st) => match st.as_ref() {
                Statement::Query(q) => Some((q, st.as_ref())),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    };
    match query {
        Some((q, statement))
            if !matches!(
                q.body.as_ref(),
                SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
            ) =>
        {
            if let SetExpr::Select(sel) = q.body.as_ref()
                && sel.into.is_some()
            {
                return Err(Error::user(
                    "SELECT INTO creates a table: ad hoc SQL is read-only",
                ));
            }
            Ok(statement)
        }
        _ => Err(Error::user_at(
            "ad hoc SQL is read-only: one SELECT (or WITH … SELECT, VALUES, EXPLAIN) per request",
            Position { line: 1, column: 1 },
        )),
    }
}

/// Registers the table `name` if it is an archive sink or an embedded table; an
/// unknown name is left to the planner, whose error lists no files.
async fn register(ctx: &SessionContext, name: &str, sources: &Sources) -> Result<()> {
    if let Some(def) = sources
        .sinks
        .iter()
        .find(|s| s.name == name && s.connector == "archive")
    {
        return register_archive(ctx, def, sources).await;
    }
    let Some(dir) = &sources.data_dir else {
        return Ok(());
    };
    if !tables::exists(dir, name) {
        return Ok(());
    }
    let batches = if sources.shared_tables {
        tables::open(dir, name)?.to_record_batches()?
    } else {
        tables::read_from_disk(dir, name)?.to_record_batches()?
    };
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Err(Error::user(format!("table '{name}' holds no items yet")));
    };
    let table = MemTable::try_new(schema, vec![batches])?;
    // A bare reference keeps the name's case (a string would be folded to lower case).
    ctx.register_table(TableReference::bare(name), Arc::new(table))?;
    Ok(())
}

async fn register_archive(ctx: &SessionContext, def: &SinkDef, sources: &Sources) -> Result<()> {
    let mut options = def.options.clone();
    options.expand_env()?;
    let config = ArchiveConfig::from_options(&def.name, &mut options, &sources.sink_context)?;
    let loc = &config.location;
    let url = ListingTableUrl::parse(loc.table_url())?;
    if loc.root_url != "file:///" {
        let root = ObjectStoreUrl::parse(&loc.root_url)?;
        ctx.register_object_store(root.as_ref(), Arc::clone(&loc.store));
    }
    let partition_cols = config
        .partitions
        .columns
        .iter()
        .map(|c| (c.clone(), DataType::Utf8))
        .collect();
    let listing = match config.format {
        Format::Parquet(_) => ListingOptions::new(Arc::new(ParquetFormat::default())),
        Format::Json { gzip } => {
            let compression = if gzip {
                FileCompressionType::GZIP
            } else {
                FileCompressionType::UNCOMPRESSED
            };
            ListingOptions::new(Arc::new(
                JsonFormat::default().with_file_compression_type(compression),
            ))
        }
    }
    .with_file_extension(config.format.extension())
    .with_table_partition_cols(partition_cols);
    let state = ctx.state();
    // JSON text has no types: read it with the writing query's schema, so timestamps
    // come back as timestamps (inference would make them strings).
    let json_schema = match config.format {
        Format::Json { .. } => sources.schemas.get(&def.name),
        Format::Parquet(_) => None,
    };
    if let Some(schema) = json_schema {
        let schema = match config.timestamps {
            TimestampFormat::Rfc3339 => Arc::clone(schema),
            // Written as epoch milliseconds: read as such, whatever the query's unit.
            TimestampFormat::EpochMs => Arc::new(Schema::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| match f.data_type() {
                        DataType::Timestamp(_, tz) => f
                            .as_ref()
                            .clone()
                            .with_data_type(DataType::Timestamp(TimeUnit::Millisecond, tz.clone())),
                        _ => f.as_ref().clone(),
                    })
                    .collect::<Vec<_>>(),
            )),
        };
        let config = ListingTableConfig::new(url)
            .with_listing_options(listing)
            .with_schema(schema);
        ctx.register_table(
            TableReference::bare(def.name.as_str()),
            Arc::new(ListingTable::try_new(config)?),
        )?;
        return Ok(());
    }
    let table_config = match ListingTableConfig::new(url.clone())
        .with_listing_options(listing.clone())
        .infer_schema(&state)
        .await
    {
        Ok(c) => c,
        // No object yet (before the first flush): an empty table with the schema of
        // the query that writes the archive.
        Err(e) => match sources.schemas.get(&def.name) {
            Some(schema) => ListingTableConfig::new(url)
                .with_listing_options(listing)
                .with_schema(Arc::clone(schema)),
            None => {
                return Err(Error::user(format!(
                    "archive '{}' ({}) cannot be read yet: {} (no query writes it, and it \
                     has no objects)",
                    def.name,
                    config.describe,
                    Error::from(e)
                )));
            }
        },
    };
    let table = ListingTable::try_new(table_config)?;
    ctx.register_table(TableReference::bare(def.name.as_str()), Arc::new(table))?;
    Ok(())
}

/// A parse or planning error, positioned where the parser says or at the offending
/// token, in Sluice's words (see `sql::diagnose`).
fn sql_error(e: DataFusionError, scope: Option<&Scope>) -> Error {
    if let DataFusionError::SQL(p, _) = e.find_root() {
        return crate::sql::parser::parser_error(p.as_ref().clone());
    }
    match scope {
        Some(scope) => diagnose::explain(e, scope),
        None => Error::from(e),
    }
}

impl Sources {
    /// The archive sinks (and schemas) of a catalog, the embedded tables of the data
    /// directory in `ctx`.
    pub fn of_catalog(catalog: &Catalog, ctx: &SinkContext, shared_tables: bool) -> Self {
        let mut schemas = HashMap::new();
        for q in catalog.queries.values() {
            if let Some(sink) = &q.sink {
                schemas
                    .entry(sink.clone())
                    .or_insert_with(|| Arc::clone(&q.plan.output_schema));
            }
        }
        Sources {
            sinks: catalog.sinks.values().cloned().collect(),
            schemas,
            data_dir: ctx.data_dir.clone(),
            sink_context: ctx.clone(),
            shared_tables,
        }
    }
}

/// Where ad hoc SQL finds tables when run outside the server: the data directory's
/// persisted catalog (for archive sinks) and its embedded tables.
pub fn sources_from_data_dir(dir: &Path) -> Result<Sources> {
    let catalog = crate::runtime::manager::persisted_catalog(&dir.join("catalog.json"))?;
    let ctx = SinkContext {
        data_dir: Some(dir.to_path_buf()),
        ..Default::default()
    };
    Ok(Sources::of_catalog(&catalog, &ctx, false))
}

/// How a result is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// `{columns, rows, row_count, truncated, elapsed_ms}`.
    Json,
    Csv,
    /// Arrow IPC stream (`application/vnd.apache.arrow.stream`).
    Arrow,
    /// An aligned text table (the CLI's default).
    Table,
}

impl OutputFormat {
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(OutputFormat::Json),
            "csv" => Ok(OutputFormat::Csv),
            "arrow" | "ipc" | "arrow-ipc" => Ok(OutputFormat::Arrow),
            "table" | "text" => Ok(OutputFormat::Table),
            other => Err(Error::user(format!(
                "format '{other}' is not one of json, csv, arrow, table"
            ))),
        }
    }

    pub fn content_type(&self) -> &'static str {
        match self {
            OutputFormat::Json => "application/json",
            OutputFormat::Csv => "text/csv; charset=utf-8",
            OutputFormat::Arrow => "application/vnd.apache.arrow.stream",
            OutputFormat::Table => "text/plain; charset=utf-8",
        }
    }
}

impl QueryOutput {
    /// The result encoded as `format`.
    pub fn encode(&self, format: OutputFormat) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        match format {
            OutputFormat::Json => {
                let columns: Vec<serde_json::Value> = self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| serde_json::json!({"name": f.name(), "type": f.data_type().to_string()}))
                    .collect();
                // The rows are spliced in as render writes them (not through
                // serde_json's numbers, which would round long decimals).
                out.extend_from_slice(b"{\"columns\":");
                serde_json::to_writer(&mut out, &columns)
                    .map_err(|e| Error::internal(format!("result as JSON: {e}")))?;
                out.extend_from_slice(b",\"rows\":");
                render::json_array(
                    &datafusion::arrow::compute::concat_batches(&self.schema, &self.batches)?,
                    TimestampFormat::Rfc3339,
                    &mut out,
                )?;
                let tail = serde_json::json!({
                    "row_count": self.rows,
                    "truncated": self.truncated,
                    "elapsed_ms": self.elapsed.as_secs_f64() * 1000.0,
                })
                .to_string();
                // `{"row_count":…}` without its `{`, after the rows.
                out.push(b',');
                out.extend_from_slice(&tail.as_bytes()[1..]);
            }
            OutputFormat::Csv => {
                // RFC 4180: a header, then one line per row; a field holding a comma,
                // a quote or a line break is quoted; a null is an empty field.
                let mut text = String::new();
                let names = self.schema.fields().iter().map(|f| f.name().as_str());
                for (i, name) in names.enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    csv_field(name, &mut text);
                }
                text.push('\n');
                let mut value = String::new();
                for b in &self.batches {
                    let columns = b
                        .columns()
                        .iter()
                        .map(|c| render::Values::new(c, TimestampFormat::Rfc3339))
                        .collect::<Result<Vec<_>>>()?;
                    for row in 0..b.num_rows() {
                        for (i, c) in columns.iter().enumerate() {
                            if i > 0 {
                                text.push(',');
                            }
                            value.clear();
                            if c.write_text(row, &mut value) {
                                csv_field(&value, &mut text);
                            }
                        }
                        text.push('\n');
                    }
                }
                out.extend_from_slice(text.as_bytes());
            }
            OutputFormat::Arrow => {
                let mut w =
                    datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut out, &self.schema)?;
                for b in &self.batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            OutputFormat::Table => {
                // Values as every other output writes them, aligned by Arrow's printer.
                let text_schema = Arc::new(Schema::new(
                    self.schema
                        .fields()
                        .iter()
                        .map(|f| Field::new(f.name(), DataType::Utf8, true))
                        .collect::<Vec<_>>(),
                ));
                let mut texts = Vec::with_capacity(self.batches.len());
                for b in &self.batches {
                    let columns = b
                        .columns()
                        .iter()
                        .map(|c| {
                            let text = render::text_column(c, TimestampFormat::Rfc3339)?;
                            Ok(Arc::new(StringArray::from(text)) as ArrayRef)
                        })
                        .collect::<Result<Vec<_>>>()?;
                    texts.push(RecordBatch::try_new(Arc::clone(&text_schema), columns)?);
                }
                let t = datafusion::arrow::util::pretty::pretty_format_batches_with_schema(
                    text_schema,
                    &texts,
                )?;
                out.extend_from_slice(t.to_string().as_bytes());
                out.push(b'\n');
                let more = if self.truncated {
                    " (truncated at the limit)"
                } else {
                    ""
                };
                out.extend_from_slice(
                    format!(
                        "{} row(s){more} in {:.1} ms\n",
                        self.rows,
                        self.elapsed.as_secs_f64() * 1000.0
                    )
                    .as_bytes(),
                );
            }
        }
        Ok(out)
    }
}

/// Appends one CSV field, quoted when it holds a separator, a quote or a line break.
fn csv_field(value: &str, out: &mut String) {
    if value.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

#[cfg(test)]
mod tests {
    use super::{AdhocError, Executor, Limits, Sources};

    /// Every kind of nesting at every size, as ad hoc SQL through the executor: each
    /// runs or is refused with a positioned error, and none overflows a stack.
    #[tokio::test]
    async fn deep_nesting_of_every_kind_is_refused_cleanly() {
        let executor = Executor::new(Limits::default());
        let mut wrong = Vec::new();
        for n in [1, 50, 255, 257, 2_000, 40_000] {
            for (shape, e) in crate::sql::depth::tests::shapes(n) {
                let sql = format!(
                    "SELECT {e} AS y FROM (VALUES (CAST(3 AS BIGINT), TIMESTAMP '2024-01-01')) \
                     AS s(x, ts)"
                );
                let result = executor.run(&sql, None, Sources::default()).await;
                let err = match result {
                    Ok(_) => continue,
                    Err(AdhocError::Query(e)) => e,
                    Err(AdhocError::Busy { message, .. }) => panic!("{message}"),
                };
                // (Some shapes are type errors DataFusion calls internal: that is
                // its classification; what matters here is the refusal.)
                let text = err.to_string();
                let clear = text.contains("nested more than 256 levels deep")
                    || text.contains("nested more than 8 deep")
                    || text.contains("longer than 100000 tokens");
                if n >= 2_000 && shape != "in list" && (!clear || !text.starts_with("1:")) {
                    wrong.push(format!("{shape} × {n}: {text}"));
                }
            }
        }
        assert!(wrong.is_empty(), "unclear refusals:\n{}", wrong.join("\n"));
    }

    /// Statements whose planning time DataFusion doubles with each level (nested
    /// subqueries, WITH queries that each read the one before twice) are refused
    /// before planning, at once, since planning cannot be interrupted.
    #[tokio::test]
    async fn statements_that_take_exponential_time_to_plan_are_refused_at_once() {
        let executor = Executor::new(Limits::default());
        let n = 24;
        let nested_in = format!(
            "SELECT 1 FROM (VALUES (1)) AS t(x) WHERE x IN {} (SELECT 1) {}",
            "(SELECT x FROM (VALUES (1)) AS u(x) WHERE x IN ".repeat(n),
            ")".repeat(n)
        );
        let mut diamond = String::from("WITH c0 AS (SELECT 1 AS x)");
        for i in 1..=n {
            diamond.push_str(&format!(
                ", c{i} AS (SELECT a.x FROM c{} a, c{} b)",
                i - 1,
                i - 1
            ));
        }
        diamond.push_str(&format!(" SELECT count(*) FROM c{n}"));
        for (sql, expected) in [
            (
                nested_in,
                "1:400: subqueries are nested more than 8 deep here",
            ),
            (
                diamond,
                "1:274: the statement reads more than 64 tables once its WITH queries are expanded",
            ),
        ] {
            let started = std::time::Instant::now();
            let err = match executor.run(&sql, None, Sources::default()).await {
                Err(AdhocError::Query(e)) => e.to_string(),
                other => panic!("{other:?}"),
            };
            assert!(err.starts_with(expected), "{err}");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{:?}",
                started.elapsed()
            );
        }
        // Within the limits both plan.
        let mut chain = String::from("WITH c0 AS (SELECT 1 AS x)");
        for i in 1..=5 {
            chain.push_str(&format!(
                ", c{i} AS (SELECT a.x FROM c{} a, c{} b)",
                i - 1,
                i - 1
            ));
        }
        chain.push_str(" SELECT count(*) AS n FROM c5");
        let out = executor
            .run(&chain, None, Sources::default())
            .await
            .unwrap();
        assert_eq!(out.rows, 1);
    }
}
