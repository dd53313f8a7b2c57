//! Sluice: streaming SQL for sensor data.
//!
//! ```text
//!  sources/            decode.rs            engine/                         sinks/
//!  mqtt, kinesis,  ─> bytes → Arrow ─> watermark ─> query operators ─> redis, mqtt, kinesis,
//!  http, file, sim     (bad → errors)   per stream   (planned by sql/)   dynamodb, table, archive…
//!  (one file each)                                                       (one file each)
//!
//!  sql/      CREATE STREAM / SINK / QUERY, INSERT INTO … SELECT → QueryPlan (DataFusion)
//!  catalog   streams, sinks, queries by name
//!  runtime   wires a catalog into running tasks: source → decode → queries → sinks
//!  simulate  devices publishing readings to an MQTT broker (`sluice simulate`): the
//!            load in front of the MQTT source, outside the pipeline
//!  aws       how the Kinesis and DynamoDB connectors reach AWS (or an emulator)
//!  reach     which hosts SQL submitted over HTTP may make the server connect to
//!            (the operator's allow-lists; below sources and sinks, imports neither)
//!  tables    embedded alert tables: written by the `table` sink, read by api/
//!  adhoc     ad hoc SQL over what sinks stored (archives, tables): POST /query,
//!            `sluice query`, on an executor of its own
//!  limits    the hard limits on statements and records (expression depth, windows
//!            per record, value sizes) and the stack statements run on (below all)
//!  render    values as text and rows as JSON, one way for every sink, the WebSocket,
//!            `sluice run`, error payloads and ad hoc output (below sinks, api, runtime
//!            and adhoc; imports none of them)
//! ```
//!
//! Data flows one way, through bounded channels of Arrow `RecordBatch`es, so a slow sink
//! slows its query and, through it, its source. The engine core ([`engine::Query`]) runs
//! without tasks: push batches and watermarks in, take results out; the runtime, the
//! `.slt` tests and the benchmarks all drive that same core.
//!
//! Imports run one way: `main → runtime`; the runtime uses `catalog → sql → engine →
//! decode` on one side and `sources`, `sinks` on the other; `simulate` borrows only the
//! simulator source's readings; `adhoc` reads what `sinks/archive.rs` and `tables`
//! wrote, with their settings; everything may use `error` and `render`.

pub mod adhoc;
pub mod api;
pub mod aws;
pub mod catalog;
pub mod clock;
pub mod decode;
pub mod engine;
pub mod error;
pub mod health;
pub mod limits;
pub mod reach;
pub mod render;
pub mod runtime;
pub mod simulate;
pub mod sinks;
pub mod sources;
pub mod sql;
pub mod tables;
