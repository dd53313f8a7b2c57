//! Differential test (being written).
