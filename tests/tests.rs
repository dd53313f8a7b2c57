//! Integration tests: one binary, one module per area (ripgrep's layout), so the
//! suite links DataFusion once.

mod api;
mod browser;
mod cli;
mod differential;
mod mosquitto;
mod service;
mod simulate;
