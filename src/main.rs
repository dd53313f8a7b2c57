//! The `sluice` command (front door): `run` an application, `check` SQL offline.
//!
//! Errors map to exit codes once, here: 1 for the user's mistakes (bad SQL, bad
//! options), 2 for failures of something outside (a file, a broker), 3 for our bugs.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::catalog::{Catalog, Change};
use sluice::error::Error;
use sluice::runtime::{self, Connectors, RunOptions};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Streaming SQL for sensor data")]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { file } => run(file),
        Command::Check { files } => check(files),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((path, e)) => {
            let prefix = path
                .map(|p| format!("{}:", p.display()))
                .unwrap_or_default();
            eprintln!("error: {prefix}{e}");
            ExitCode::from(match e {
                Error::User { .. } => 1,
                Error::External(_) => 2,
                Error::Internal(_) => 3,
            })
        }
    }
}

type CliResult = Result<(), (Option<PathBuf>, Error)>;

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
        .apply(&sql, connectors)
        .map_err(|e| (Some(path.clone()), e))
}

fn check(files: Vec<PathBuf>) -> CliResult {
    let connectors = Connectors::default();
    for f in &files {
        let mut catalog = Catalog::new();
        let changes = load(f, &mut catalog, &connectors)?;
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
    let connectors = Connectors::default();
    let mut catalog = Catalog::new();
    load(&file, &mut catalog, &connectors)?;
    if catalog.queries.is_empty() {
        return Err((
            Some(file),
            Error::user("the application has no queries to run"),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| (None, Error::internal(e.to_string())))?;
    rt.block_on(async {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("stopping (Ctrl-C)");
                let _ = tx.send(true);
            }
        });
        let report = runtime::run(&catalog, RunOptions { connectors, ..Default::default() }, rx)
            .await
            .map_err(|e| (None, e))?;
        for (q, c) in report {
            tracing::info!(query = %q, rows_in = c.rows_in, rows_out = c.rows_out, late = c.late, errors = c.errors, "query finished");
        }
        Ok(())
    })
}
