//! The shared corpus of real istiod output (`$NODE_PROXY_CORPUS`, else
//! `../shared/corpus` beside the repository). Never copied into the repository.

use std::path::PathBuf;

/// The corpus folder. `None` (the test is skipped, and says so) when it is absent
/// outside CI; under `CI=true` its absence fails the test.
pub fn dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("NODE_PROXY_CORPUS") {
        Some(d) => PathBuf::from(d),
        None => crate::binary::workspace_root().join("../shared/corpus"),
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
