//! Shared helpers for integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The shared real-data directory (`$SEAL_SHARED_DATA` or
/// `<workspace>/../shared/data`), or `None` (with a message) when absent.
pub fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("SEAL_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        });
    if dir.join("gsm8k").is_dir() {
        Some(dir)
    } else {
        seal_data::testing::skip(
            "data",
            &format!(
                "shared data not found at {} (set SEAL_SHARED_DATA)",
                dir.display()
            ),
        );
        None
    }
}
