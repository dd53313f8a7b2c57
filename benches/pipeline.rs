//! Pipeline benchmark (being written).
fn main() {}
