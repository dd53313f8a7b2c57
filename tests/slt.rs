//! SQL logic tests (being written).
fn main() {}
