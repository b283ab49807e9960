//! Shared by the corpus test files.

use std::path::PathBuf;

/// `$NODE_PROXY_CORPUS`, else `../shared/corpus` beside the repository. `None` (test
/// skipped) outside CI when absent; under `CI=true` its absence fails the test.
pub fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("NODE_PROXY_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("corpus not found at {}: set NODE_PROXY_CORPUS to the shared corpus folder", dir.display());
    }
    eprintln!("SKIPPED: corpus not found at {} (set NODE_PROXY_CORPUS)", dir.display());
    None
}
