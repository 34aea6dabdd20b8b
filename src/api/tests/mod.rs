//! Tests of the API types against the example manifests, the generated CRDs and bad input.

mod conversion;
mod crds;
mod roundtrip;
mod validation;

use std::path::PathBuf;

/// The project root (the `rafter` package's directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Reads a file under the project root.
pub fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
