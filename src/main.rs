//! The `sluice` command (front door): `run` an application, `check` SQL offline,
//! `serve` the API, `simulate` devices publishing to an MQTT broker.
//!
//! Errors map to exit codes once, here: 1 for the user's mistakes (bad SQL, bad
//! options), 2 for failures of something outside (a file, a broker), 3 for our bugs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::catalog::{Catalog, Change};
use sluice::error::Error;
use sluice::reach::{AllowList, HostPort};
use sluice::runtime::{Connectors, Manager, ManagerOptions};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Streaming SQL for sensor data")]
struct Cli {
    /// How log lines look on stderr: `text` (coloured only when stderr is a
    /// terminal) or `json` (one object a line). The filter comes from SLUICE_LOG, else
    /// RUST_LOG, else `info`.
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run an application (a SQL file) until its inputs end or Ctrl-C.
    Run {
        /// The SQL file: CREATE STREAM / CREATE SINK / INSERT INTO … SELECT statements.
        file: PathBuf,
    },
    /// Validate SQL files offline: parse, plan and check connector options.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the service: HTTP API, dashboard, persistent catalog.
    Serve(ServeArgs),
    /// Simulate devices publishing readings to an MQTT broker, until --count or
    /// Ctrl-C; prints a JSON summary line.
    Simulate(SimulateArgs),
    /// Ad hoc SQL over the archives and embedded tables of a data directory (one
    /// read-only statement; runs beside a server using that directory, or without one).
    Query(QueryArgs),
}

#[derive(clap::Args)]
struct QueryArgs {
    /// One SELECT (or WITH … SELECT, EXPLAIN). Tables: archive sinks and embedded
    /// tables by name.
    sql: String,
    /// The data directory of `sluice serve`: its catalog names the archives.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// table, json, csv or arrow (Arrow IPC stream, binary).
    #[arg(long, default_value = "table")]
    format: String,
    /// Most rows to return.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Seconds before the query is stopped.
    #[arg(long, default_value_t = 30)]
    timeout_secs: u64,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Where the catalog (and later checkpoints and archives) live.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// A directory of .sql applications to load at start, each named after its file:
    /// at every start a file is its application's whole text (an edited file replaces
    /// what changed; an unchanged one changes nothing).
    #[arg(long, env = "SLUICE_QUERIES")]
    queries: Option<PathBuf>,
    /// Most queries that may exist at once.
    #[arg(long, env = "SLUICE_MAX_QUERIES", default_value_t = 100)]
    max_queries: usize,
    /// Window state one query may hold, MB; a query over it fails.
    #[arg(long, env = "SLUICE_QUERY_MEMORY_MB", default_value_t = 256)]
    query_memory_mb: usize,
    /// Largest body POST /streams/{name}/records accepts, MB.
    #[arg(long, env = "SLUICE_MAX_INGEST_MB", default_value_t = 16)]
    max_ingest_mb: usize,
    /// Seconds an ad hoc query (POST /query) may run.
    #[arg(long, env = "SLUICE_ADHOC_TIMEOUT_SECS", default_value_t = 30)]
    adhoc_timeout_secs: u64,
    /// Memory one ad hoc query may use for sorts, aggregates and joins, MB.
    #[arg(long, env = "SLUICE_ADHOC_MEMORY_MB", default_value_t = 256)]
    adhoc_memory_mb: usize,
    /// A host SQL submitted over HTTP may name as the `endpoint` of a kinesis or
    /// dynamodb connector or an S3 archive (with its own credentials); repeatable,
    /// comma-separated in the variable. None by default. See docs/api.md.
    #[arg(long, value_name = "HOST[:PORT]", env = "SLUICE_ALLOW_ENDPOINT", value_delimiter = ',', value_parser = host_port)]
    allow_endpoint: Vec<HostPort>,
    /// A Redis server SQL submitted over HTTP may write to; repeatable. None by default.
    #[arg(long, value_name = "HOST[:PORT]", env = "SLUICE_ALLOW_REDIS", value_delimiter = ',', value_parser = host_port)]
    allow_redis: Vec<HostPort>,
    /// An MQTT broker SQL submitted over HTTP may read from or publish to;
    /// repeatable. None by default.
    #[arg(long, value_name = "HOST[:PORT]", env = "SLUICE_ALLOW_MQTT", value_delimiter = ',', value_parser = host_port)]
    allow_mqtt: Vec<HostPort>,
    /// Threads ad hoc queries run on, apart from the API and the streams.
    #[arg(long, env = "SLUICE_ADHOC_THREADS", default_value_t = 1)]
    adhoc_threads: usize,
    /// Ad hoc queries that run at once.
    #[arg(long, env = "SLUICE_ADHOC_CONCURRENCY", default_value_t = 2)]
    adhoc_concurrency: usize,
    /// Ad hoc queries that may wait for a turn; more are refused with 503 and
    /// Retry-After.
    #[arg(long, env = "SLUICE_ADHOC_QUEUE", default_value_t = 4)]
    adhoc_queue: usize,
}

fn host_port(s: &str) -> Result<HostPort, String> {
    HostPort::parse(s)
}

/// `sluice simulate`; the options are documented in docs/simulate.md.
#[derive(clap::Args)]
struct SimulateArgs {
    /// Broker URL, mqtt://host:port.
    #[arg(long, env = "MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    url: String,
    #[arg(long, env = "MQTT_USERNAME")]
    username: Option<String>,
    #[arg(long, env = "MQTT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// MQTT client id [default: sluice-sim-<pid>].
    #[arg(long)]
    client_id: Option<String>,
    /// Messages per second, all devices together; 0 = as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Stop after this many messages [default: until Ctrl-C].
    #[arg(long)]
    count: Option<u64>,
    /// 0 = at most once, 1 = at least once (acknowledged).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Most QoS 1 messages awaiting acknowledgement at once.
    #[arg(long, default_value_t = 1000)]
    inflight: u16,
    /// Seconds to wait at the end for unsent and unacknowledged messages.
    #[arg(long, default_value_t = 10)]
    drain_timeout: u64,
    /// Readings mode: number of distinct deviceIds.
    #[arg(long, default_value_t = 5000)]
    devices: u64,
    /// Readings mode: topic, with an optional {deviceId} placeholder.
    #[arg(long, default_value = "temp_readings")]
    topic: String,
    /// Readings mode: readings per message (more than 1: a JSON array).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Readings mode: random seed (the same seed gives the same readings).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Replay mode: a JSON array of events, published in a loop.
    #[arg(long, requires = "device_id", conflicts_with_all = ["devices", "topic", "batch", "seed"])]
    replay: Option<PathBuf>,
    /// Replay mode: replaces each event's deviceId; the topic is <prefix>/<id>.
    #[arg(long, requires = "replay")]
    device_id: Option<String>,
    /// Replay mode: topic prefix.
    #[arg(long, default_value = "sensors", requires = "replay")]
    topic_prefix: String,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Run { file } => run(file),
        Command::Check { files } => check(files),
        Command::Serve(args) => serve(args),
        Command::Simulate(args) => simulate(args),
        Command::Query(args) => query(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((path, e)) => {
            let prefix = path
                .map(|p| format!("{}:", p.display()))
                .unwrap_or_default();
            eprintln!("error: {prefix}{e}");
            ExitCode::from(match e {
                Error::User { .. } | Error::Conflict { .. } => 1,
                Error::External(_) => 2,
                Error::Internal(_) => 3,
            })
        }
    }
}

type CliResult = Result<(), (Option<PathBuf>, Error)>;

/// The log on stderr. The filter is SLUICE_LOG when set and not empty (ours, so it
/// wins), else the usual RUST_LOG, else `info`; a filter that does not parse is said once and `info`
/// is used, rather than a service that will not start over its log settings.
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let (var, text) = match ["SLUICE_LOG", "RUST_LOG"].into_iter().find_map(|v| {
        std::env::var(v)
            .ok()
            .filter(|t| !t.is_empty())
            .map(|t| (v, t))
    }) {
        Some((var, text)) => (Some(var), text),
        None => (None, "info".to_string()),
    };
    let (filter, bad) = match EnvFilter::try_new(&text) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e)),
    };
    // Colour codes only for a person at a terminal: in a file or a pipe they are noise.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(ansi).init(),
        LogFormat::Json => builder.json().init(),
    }
    if let (Some(var), Some(e)) = (var, bad) {
        tracing::warn!("{var}='{text}' is not a log filter ({e}); logging at info");
    }
}

fn load(
    path: &PathBuf,
    catalog: &mut Catalog,
    connectors: &Connectors,
) -> Result<Vec<Change>, (Option<PathBuf>, Error)> {
    let sql = std::fs::read_to_string(path).map_err(|e| {
        (
            None,
            Error::external(format!("cannot read {}: {e}", path.display())),
        )
    })?;
    catalog
        .replace_application(&application_of(path), &sql, connectors)
        .map_err(|e| (Some(path.clone()), e))
}

fn check(files: Vec<PathBuf>) -> CliResult {
    // Connectors that keep state in the data directory (embedded tables) are checked
    // against a scratch one, removed afterwards: checking writes nothing that stays.
    let scratch = std::env::temp_dir().join(format!("sluice-check-{}", std::process::id()));
    let mut connectors = Connectors::default();
    connectors.sinks.data_dir = Some(scratch.clone());
    connectors.sources.data_dir = Some(scratch.clone());
    let result = check_with(&files, &connectors);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Files are checked in the order given into one catalog, as `serve --queries` loads
/// a directory: a file may use what an earlier one declared.
fn check_with(files: &[PathBuf], connectors: &Connectors) -> CliResult {
    let mut catalog = Catalog::new();
    for f in files {
        let changes = load(f, &mut catalog, connectors)?;
        let queries = changes
            .iter()
            .filter(|c| matches!(c, Change::Created(sluice::sql::ObjectKind::Query, _)))
            .count();
        println!(
            "{}: ok ({} statements, {queries} queries)",
            f.display(),
            changes.len()
        );
    }
    Ok(())
}

fn run(file: PathBuf) -> CliResult {
    let sql = std::fs::read_to_string(&file).map_err(|e| {
        (
            None,
            Error::external(format!("cannot read {}: {e}", file.display())),
        )
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Queries are evaluated on these threads: room for their deepest expressions.
        .thread_stack_size(sluice::limits::WORKER_STACK_BYTES)
        .build()
        .map_err(|e| (None, Error::internal(e.to_string())))?;
    rt.block_on(async {
        let manager = Manager::new(ManagerOptions {
            print_previews: true,
            ..Default::default()
        });
        manager.apply(&sql).map_err(|e| (Some(file.clone()), e))?;
        if manager.query_states().is_empty() {
            return Err((
                Some(file.clone()),
                Error::user("the application has no queries to run"),
            ));
        }
        let signals = std::sync::Arc::clone(&manager);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("stopping (Ctrl-C)");
                signals.signal_shutdown();
            }
        });
        manager.wait_inputs_end().await;
        manager.shutdown(std::time::Duration::from_secs(10)).await;
        let mut failed = None;
        for q in manager.query_states() {
            use std::sync::atomic::Ordering::Relaxed;
            tracing::info!(
                query = %q.name,
                rows_in = q.rows_in.load(Relaxed),
                rows_out = q.rows_out.load(Relaxed),
                late = q.late.load(Relaxed),
                errors = q.errors.load(Relaxed),
                status = ?q.status(),
                "query finished"
            );
            if let sluice::runtime::manager::QueryStatus::Failed(e) = q.status() {
                failed.get_or_insert(Error::external(format!("query '{}' failed: {e}", q.name)));
            }
        }
        match failed {
            Some(e) => Err((None, e)),
            None => Ok(()),
        }
    })
}

fn serve(args: ServeArgs) -> CliResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Queries are evaluated on these threads: room for their deepest expressions.
        .thread_stack_size(sluice::limits::WORKER_STACK_BYTES)
        .build()
        .map_err(|e| (None, Error::internal(e.to_string())))?;
    rt.block_on(async move {
        std::fs::create_dir_all(&args.data_dir).map_err(|e| {
            (
                None,
                Error::external(format!("cannot create {}: {e}", args.data_dir.display())),
            )
        })?;
        let mut connectors = Connectors::default();
        // Trusted files (--queries) may still only reach files under the data dir.
        connectors.sources.file_root = Some(args.data_dir.clone());
        connectors.sinks.file_root = Some(args.data_dir.clone());
        connectors.sources.data_dir = Some(args.data_dir.clone());
        connectors.sinks.data_dir = Some(args.data_dir.clone());
        // What SQL from the network may reach; files loaded with --queries reach any host.
        let list = |l: &[HostPort]| l.iter().map(ToString::to_string).collect::<Vec<_>>();
        tracing::info!(
            endpoints = ?list(&args.allow_endpoint),
            redis = ?list(&args.allow_redis),
            mqtt = ?list(&args.allow_mqtt),
            "hosts SQL submitted over HTTP may reach"
        );
        connectors.allow(AllowList {
            endpoints: args.allow_endpoint,
            redis: args.allow_redis,
            mqtt: args.allow_mqtt,
        });
        let manager = Manager::new(ManagerOptions {
            connectors,
            max_queries: args.max_queries,
            query_memory_bytes: args.query_memory_mb << 20,
            catalog_file: Some(args.data_dir.join("catalog.json")),
            ..Default::default()
        });
        let restored = manager.restore().map_err(|e| (None, e))?;
        if restored > 0 {
            tracing::info!(
                queries = restored,
                "restored the catalog and restarted its running queries"
            );
        }
        if let Some(dir) = &args.queries {
            load_dir(&manager, dir)?;
        }
        let token = std::env::var("SLUICE_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let app = sluice::api::app(
            std::sync::Arc::clone(&manager),
            sluice::api::ApiOptions {
                token,
                max_ingest_bytes: args.max_ingest_mb << 20,
                data_dir: Some(args.data_dir.clone()),
                adhoc: sluice::adhoc::Limits {
                    timeout: std::time::Duration::from_secs(args.adhoc_timeout_secs),
                    memory_bytes: args.adhoc_memory_mb << 20,
                    threads: args.adhoc_threads,
                    concurrency: args.adhoc_concurrency,
                    queue: args.adhoc_queue,
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| {
                (
                    None,
                    Error::external(format!("cannot listen on {}: {e}", args.listen)),
                )
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| (None, Error::external(e.to_string())))?;
        tracing::info!("listening on http://{addr} (dashboard at /)");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut server_stop = stop_rx.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = server_stop.wait_for(|s| *s).await;
                })
                .await
        });
        wait_for_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
        // Graceful, but bounded: open WebSockets would otherwise hold the server up.
        let grace = std::time::Duration::from_secs(5);
        let abort = server.abort_handle();
        if tokio::time::timeout(grace, server).await.is_err() {
            abort.abort();
        }
        manager.shutdown(grace).await;
        Ok(())
    })
}

fn query(args: QueryArgs) -> CliResult {
    use sluice::adhoc::{self, Limits, OutputFormat};
    use std::io::Write;
    let format = OutputFormat::parse(&args.format).map_err(|e| (None, e))?;
    let limits = Limits {
        max_rows: args.limit.max(Limits::default().max_rows),
        timeout: std::time::Duration::from_secs(args.timeout_secs),
        ..Default::default()
    };
    // The query runs on the executor's threads (stacks sized for the statement
    // limits); this runtime only waits for it.
    let executor = adhoc::Executor::new(limits);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (None, Error::internal(e.to_string())))?;
    rt.block_on(async move {
        let sources = adhoc::sources_from_data_dir(&args.data_dir).map_err(|e| (None, e))?;
        let out = executor
            .run(&args.sql, Some(args.limit), sources)
            .await
            .map_err(|e| (None, Error::from(e)))?;
        let bytes = out.encode(format).map_err(|e| (None, e))?;
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(&bytes)
            .and_then(|()| stdout.flush())
            .map_err(|e| (None, Error::external(format!("stdout: {e}"))))
    })
}

fn simulate(args: SimulateArgs) -> CliResult {
    use sluice::simulate::{Payload, SimulateOptions};
    let payload = match (&args.replay, &args.device_id) {
        (Some(file), Some(id)) => {
            Payload::replay_file(file, id, &args.topic_prefix).map_err(|e| (None, e))?
        }
        _ => Payload::Readings {
            devices: args.devices,
            topic: args.topic,
            batch: args.batch,
            seed: args.seed,
        },
    };
    let defaults = SimulateOptions::default();
    let options = SimulateOptions {
        url: args.url,
        username: args.username,
        password: args.password,
        client_id: args.client_id.unwrap_or(defaults.client_id),
        payload,
        rate: args.rate,
        count: args.count,
        qos: args.qos,
        inflight: args.inflight,
        drain_timeout: std::time::Duration::from_secs(args.drain_timeout),
        progress: !args.quiet,
        ..defaults
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| (None, Error::internal(e.to_string())))?;
    let summary = rt
        .block_on(sluice::simulate::run_until(options, wait_for_signal()))
        .map_err(|e| (None, e))?;
    println!(
        "{}",
        serde_json::to_string(&summary).map_err(|e| (None, Error::internal(e.to_string())))?
    );
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn load_dir(manager: &std::sync::Arc<Manager>, dir: &std::path::Path) -> CliResult {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| {
            (
                None,
                Error::external(format!("cannot read {}: {e}", dir.display())),
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    for f in files {
        let sql = std::fs::read_to_string(&f).map_err(|e| {
            (
                None,
                Error::external(format!("cannot read {}: {e}", f.display())),
            )
        })?;
        // The file is the application's whole text, at every start: an edited file
        // replaces what changed, a statement taken out drops its object.
        let name = application_of(&f);
        let changes = manager
            .replace_application(&name, &sql, true)
            .map_err(|e| (Some(f.clone()), e))?;
        let count = |verb: &str| changes.iter().filter(|c| c.verb() == verb).count();
        tracing::info!(
            file = %f.display(),
            application = %name,
            created = count("created"),
            replaced = count("replaced"),
            dropped = count("dropped"),
            unchanged = count("unchanged"),
            "loaded"
        );
    }
    Ok(())
}

/// The application a SQL file defines: its name without `.sql`.
fn application_of(path: &std::path::Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
