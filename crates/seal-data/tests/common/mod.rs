//! Shared helpers for integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared real-data directory (`$SEAL_SHARED_DATA` or
/// `<workspace>/../shared/data`), or `None` (with a message) when absent.
pub fn shared_data() -> Option<PathBuf> {
    seal_data::testing::shared_data_dir()
}
