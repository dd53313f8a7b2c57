//! Sluice: streaming SQL for sensor data.
//!
//! ```text
//!  sources/            decode.rs            engine/                         sinks/
//!  file, simulator ─> bytes → Arrow ─> watermark ─> query operators ─> file, stdout, …
//!  (one file each)     (bad → errors)   per stream   (planned by sql/)   (one file each)
//!
//!  sql/      CREATE STREAM / SINK / QUERY, INSERT INTO … SELECT → QueryPlan (DataFusion)
//!  catalog   streams, sinks, queries by name
//!  runtime   wires a catalog into running tasks: source → decode → queries → sinks
//!  aws       how the Kinesis and DynamoDB connectors reach AWS (or an emulator)
//!  tables    embedded alert tables: written by the `table` sink, read by api/
//! ```
//!
//! Data flows one way, through bounded channels of Arrow `RecordBatch`es, so a slow sink
//! slows its query and, through it, its source. The engine core ([`engine::Query`]) runs
//! without tasks: push batches and watermarks in, take results out; the runtime, the
//! `.slt` tests and the benchmarks all drive that same core.
//!
//! Imports run one way: `main → runtime`; the runtime uses `catalog → sql → engine →
//! decode` on one side and `sources`, `sinks` on the other; everything may use `error`.

pub mod api;
pub mod aws;
pub mod catalog;
pub mod decode;
pub mod engine;
pub mod error;
pub mod health;
pub mod runtime;
pub mod sinks;
pub mod sources;
pub mod sql;
pub mod tables;
