//! `redis` sink: every result row becomes Redis commands (counters, latest values,
//! sorted sets, hashes, streams, pub/sub), the last stage of the data flow for
//! dashboards that read Redis, as in the ElastiCache time-series articles.
//!
//! ```sql
//! CREATE SINK climate WITH (
//!   connector = 'redis',
//!   url = 'redis://127.0.0.1:6379/0',
//!   transaction = 'true',
//!   commands = '
//!     INCRBY climate:{climate} 1;
//!     ZADD SensorData {ts} {deviceId} KEEP 10000;
//!     HSET {deviceId} temperature humidity deviceIP climate timestamp={ts};
//!     PUBLISH Warnings {*}'
//! );
//! ```
//!
//! Layout: `command.rs` parses `commands` at CREATE SINK; `render.rs` binds them to
//! the query's schema on the first batch and renders rows into pipelines; this file
//! holds the options, the connection and the retry loop.
//!
//! **Delivery.** Each `write` sends its batch as one pipeline (split every
//! `pipeline_commands` commands, at row boundaries), each in MULTI/EXEC when
//! `transaction` is on. While Redis is unreachable the same pipeline is retried with
//! backoff (100 ms doubling to 5 s), forever: `write` does not return, so the query
//! and its source wait (backpressure) and nothing is dropped; the sink's health says
//! `retrying` with the last error. A retried pipeline may have been applied in part
//! (or, with MULTI, wholly, if the connection died after EXEC reached Redis), so plain
//! `INCRBY`/`HINCRBY`/`XADD`/`PUBLISH` are at-least-once; `SET`, `HSET`, `ZADD` and
//! `INCRBY … ONCE` are exact (a replay writes the same value, or nothing). An error
//! Redis answers to a command (WRONGTYPE, say) is not retried: the sink fails with it.

mod command;
mod render;

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, ServerErrorKind};

use self::command::{Spec, parse_commands};
use self::render::{Chunk, Limits, MIN_KEY_BYTES, Plan};
use super::Sink;
use crate::error::{Error, Result};
use crate::health::{Backoff, Health};
use crate::reach::{Reach, Service};
use crate::sql::Options;

/// Longest wait between two attempts while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connect that takes longer than this failed (a host that drops packets would
/// otherwise hold the first attempt for the OS's TCP timeout, minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A pipeline not answered within this is treated as a lost connection and retried.
/// Generous: a pipeline of thousands of commands on a busy server takes a while.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// Skipped rows are logged at most this often (they can be every row).
const SKIP_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct RedisSink {
    /// `url`: `redis://[user:password@]host[:port][/db]` (required). Parsed at CREATE
    /// SINK; connected on the first write, so a sink can be created before Redis runs.
    client: redis::Client,
    /// `commands`: `;`-separated command templates run for every row (required).
    specs: Vec<Spec>,
    /// `transaction`: wrap each pipeline in MULTI/EXEC (default false).
    transaction: bool,
    /// `once_ttl` (how long `ONCE` markers live, default 7 days), `max_key_bytes`
    /// (longer keys are hashed, default 256), `pipeline_commands` (commands per
    /// pipeline, default 4096: large enough to amortize round trips, small enough to
    /// keep each MULTI/EXEC short, since Redis serves no other client while it runs
    /// one, and to bound what a retry re-sends; not yet benchmarked against others),
    /// `timestamp_format` (`rfc3339`, default, or `epoch_ms`: times in keys, values and
    /// `{*}`; scores and amounts are epoch ms either way).
    limits: Limits,
    connection: Option<MultiplexedConnection>,
    health: Arc<Health>,
    /// Commands bound to the schemas seen so far (one per query writing here).
    plans: Vec<(SchemaRef, Arc<Plan>)>,
    skipped: u64,
    last_skip: Option<String>,
    last_skip_log: Option<Instant>,
}

impl RedisSink {
    /// A sink that may reach any Redis (SQL the operator wrote).
    pub fn from_options(o: Options) -> Result<Self> {
        Self::reaching(o, &Reach::default())
    }

    /// A sink whose `url` must be a Redis `reach` allows.
    pub fn reaching(mut o: Options, reach: &Reach) -> Result<Self> {
        let url = o
            .take("url")
            .ok_or_else(|| Error::user_at("the redis sink needs option 'url'", o.position))?;
        let client = redis::Client::open(url.value.trim()).map_err(|e| {
            Error::user_at(
                format!(
                    "option 'url' of the redis sink is not a Redis URL ({}); write \
                     redis://[user:password@]host[:port][/db]",
                    e.detail().unwrap_or(e.category())
                ),
                url.position,
            )
        })?;
        let commands = o.take("commands").ok_or_else(|| {
            Error::user_at(
                "the redis sink needs option 'commands', e.g. 'SET latest:{deviceId} {*}'",
                o.position,
            )
        })?;
        let specs =
            parse_commands(&commands.value).map_err(|e| Error::user_at(e, commands.position))?;
        let transaction = o.take_bool("transaction")?.unwrap_or(false);
        let once_ttl = o
            .take_duration("once_ttl")?
            .unwrap_or(Duration::from_secs(7 * 24 * 3600));
        let max_key_bytes = take_at_least(&mut o, "max_key_bytes", 256, MIN_KEY_BYTES as u64)?;
        let pipeline_commands = take_at_least(&mut o, "pipeline_commands", 4096, 1)?;
        let timestamps = super::take_timestamp_format(&mut o)?;
        o.finish("sink connector 'redis'")?;
        // The address as the client parsed it: what is checked is what connects.
        // Checked once every option was read (see `Deferred`).
        match client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port)
            | redis::ConnectionAddr::TcpTls { host, port, .. } => {
                reach.check(Service::Redis, "url", host, *port, 6379, url.position)?;
            }
            redis::ConnectionAddr::Unix(path) if reach.restricted => {
                return Err(Error::user_at(
                    format!(
                        "option 'url' names the local socket '{}', which SQL submitted over \
                         HTTP may not use (it is a file of this server); use a redis:// URL the \
                         server allows (--allow-redis), or load the SQL from a --queries file",
                        path.display()
                    ),
                    url.position,
                ));
            }
            _ => {}
        }
        Ok(RedisSink {
            client,
            specs,
            transaction,
            limits: Limits {
                max_key_bytes: max_key_bytes as usize,
                // Redis expiries are whole seconds, and EX 0 is an error.
                once_ttl_secs: once_ttl.as_secs().max(1),
                pipeline_commands: pipeline_commands as usize,
                timestamps,
            },
            connection: None,
            health: Arc::new(Health::new()),
            plans: Vec::new(),
            skipped: 0,
            last_skip: None,
            last_skip_log: None,
        })
    }

    /// Commands skipped so far because a row had a null where a value is required,
    /// and why the last one was.
    pub fn skipped(&self) -> (u64, Option<&str>) {
        (self.skipped, self.last_skip.as_deref())
    }

    /// The plan for `schema`, bound on its first batch.
    fn plan(&mut self, schema: &SchemaRef) -> Result<Arc<Plan>> {
        if let Some((_, p)) = self
            .plans
            .iter()
            .find(|(s, _)| Arc::ptr_eq(s, schema) || s == schema)
        {
            return Ok(Arc::clone(p));
        }
        let plan = Arc::new(Plan::compile(&self.specs, schema)?);
        self.plans.push((Arc::clone(schema), Arc::clone(&plan)));
        Ok(plan)
    }

    fn note_skipped(&mut self, n: u64, reason: Option<String>) {
        if n == 0 {
            return;
        }
        self.skipped += n;
        self.health.skipped(n, reason.clone());
        self.last_skip = reason;
        let due = self
            .last_skip_log
            .is_none_or(|t| t.elapsed() >= SKIP_LOG_EVERY);
        if due {
            self.last_skip_log = Some(Instant::now());
            tracing::warn!(
                skipped = self.skipped,
                "redis sink: {} (commands skipped so far: {})",
                self.last_skip.as_deref().unwrap_or("a row was skipped"),
                self.skipped
            );
        }
    }

    /// Sends one pipeline, retrying while Redis is unreachable.
    async fn send(&mut self, plan: &Plan, chunk: &Chunk) -> Result<()> {
        let mut backoff = Backoff::new(MAX_BACKOFF);
        loop {
            match self.try_send(chunk).await {
                Ok(()) => {
                    self.health.connected();
                    return Ok(());
                }
                Err(e) if transient(&e) => {
                    // The connection may be half-dead: the next attempt makes a new one.
                    self.connection = None;
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        "redis sink: {e}; retrying in {delay:?} (attempt {})",
                        self.health.retries() + 1
                    );
                    self.health.retrying(e);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(self.fatal(plan, chunk, e)),
            }
        }
    }

    async fn try_send(&mut self, chunk: &Chunk) -> redis::RedisResult<()> {
        let mut conn = match &self.connection {
            Some(c) => c.clone(),
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                let c = self
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                self.connection = Some(c.clone());
                c
            }
        };
        chunk.pipe.exec_async(&mut conn).await
    }

    /// An error retrying will not fix, said so that the user knows what to change.
    fn fatal(&self, plan: &Plan, chunk: &Chunk, e: RedisError) -> Error {
        let addr = self.client.get_connection_info().addr().to_string();
        match e.kind() {
            ErrorKind::AuthenticationFailed | ErrorKind::Server(ServerErrorKind::NoPerm) => {
                return Error::user(format!(
                    "redis sink: Redis at {addr} refused the credentials or permissions of the \
                     sink's url: {e}"
                ));
            }
            ErrorKind::InvalidClientConfig => {
                return Error::user(format!("redis sink: cannot use the url's settings: {e}"));
            }
            _ => {}
        }
        let Some(errors) = e.clone().into_server_errors() else {
            return Error::external(format!("redis sink: Redis at {addr} failed: {e}"));
        };
        let Some((index, first)) = errors.first() else {
            return Error::external(format!("redis sink: Redis at {addr} failed: {e}"));
        };
        let command = chunk
            .origins
            .get(*index)
            .and_then(|&n| plan.describe(n))
            .unwrap_or_else(|| "a command".into());
        let reply = match first.details() {
            Some(d) => format!("{} {d}", first.code()),
            None => first.code().to_string(),
        };
        // Redis refused what the templates produced (a key of another type, a value
        // that is not a number): the commands or the data in Redis must change.
        Error::user(format!(
            "redis sink: {command} failed in Redis at {addr}: {reply} ({} of {} commands in \
             the pipeline failed)",
            errors.len(),
            chunk.origins.len()
        ))
    }
}

/// A whole number option with a default and a floor.
fn take_at_least(o: &mut Options, key: &'static str, default: u64, min: u64) -> Result<u64> {
    let position = o.position;
    let v = o.take_u64(key)?.unwrap_or(default);
    if v < min {
        return Err(Error::user_at(
            format!("option '{key}' of the redis sink must be at least {min}"),
            position,
        ));
    }
    Ok(v)
}

/// Errors a later attempt can succeed after: the connection (refused, reset, timed
/// out), and a server that is starting or failing over.
fn transient(e: &RedisError) -> bool {
    match e.kind() {
        ErrorKind::Io | ErrorKind::Parse => true,
        ErrorKind::Server(k) => matches!(
            k,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::ReadOnly
        ),
        _ => e.is_connection_dropped() || e.is_timeout(),
    }
}

impl Sink for RedisSink {
    fn write<'a>(&'a mut self, batch: &'a RecordBatch) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if batch.num_rows() == 0 {
                return Ok(());
            }
            let plan = self.plan(&batch.schema())?;
            let rendered = plan.render(batch, &self.limits, self.transaction)?;
            self.note_skipped(rendered.skipped, rendered.last_skip);
            // Pipelines go one after the other: a later one never overtakes an earlier
            // one that is being retried, so rows reach Redis in order.
            for chunk in &rendered.chunks {
                self.send(&plan, chunk).await?;
            }
            Ok(())
        })
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        // Every write is in Redis when it returns: nothing is buffered.
        Box::pin(async { Ok(()) })
    }

    fn health(&self) -> Option<Arc<Health>> {
        Some(Arc::clone(&self.health))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Position;

    fn options(pairs: &[(&str, &str)]) -> Options {
        let mut o = Options::new(Position { line: 1, column: 1 });
        for (i, (k, v)) in pairs.iter().enumerate() {
            let at = Position {
                line: 2 + i as u64,
                column: 3,
            };
            o.insert(k, v.to_string(), at).unwrap();
        }
        o
    }

    fn err(pairs: &[(&str, &str)]) -> String {
        match RedisSink::from_options(options(pairs)) {
            Ok(_) => panic!("{pairs:?} should be refused"),
            Err(e) => {
                assert!(e.is_user(), "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn options_are_checked_at_create_sink() {
        let ok = RedisSink::from_options(options(&[
            ("url", "redis://user:pw@127.0.0.1:1/3"),
            ("commands", "SET a {b}"),
            ("transaction", "true"),
            ("once_ttl", "1h"),
        ]))
        .unwrap();
        assert!(ok.transaction);
        assert_eq!(ok.limits.once_ttl_secs, 3600);
        assert_eq!(ok.health().unwrap().status(), "connecting");

        assert_eq!(
            err(&[("commands", "SET a b")]),
            "1:1: the redis sink needs option 'url'"
        );
        assert!(
            err(&[("url", "http://x"), ("commands", "SET a b")]).starts_with("2:3: option 'url'")
        );
        assert!(
            err(&[("url", "redis://h"), ("commands", "SET a")])
                .starts_with("3:3: command 1 (`SET a`) of the redis sink: wrong arguments")
        );
        assert!(err(&[("url", "redis://h")]).contains("needs option 'commands'"));
        assert!(
            err(&[("url", "redis://h"), ("commands", "SET a b"), ("ttl", "1")])
                .starts_with("4:3: unknown option 'ttl' for sink connector 'redis'")
        );
        assert!(
            err(&[
                ("url", "redis://h"),
                ("commands", "SET a b"),
                ("max_key_bytes", "10")
            ])
            .contains("must be at least 48")
        );
    }
}
