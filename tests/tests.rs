//! Integration tests: one binary, one module per area (ripgrep's layout), so the
//! suite links DataFusion once.

mod api;
mod archive;
mod browser;
mod cli;
mod differential;
mod dynamodb;
mod faults;
mod kinesis;
mod limits;
mod mosquitto;
mod moto;
mod mqtt;
mod reach;
mod redis_sink;
mod seeds;
mod service;
mod services;
mod simulate;
mod supervision;
mod support;
