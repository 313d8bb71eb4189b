use std::path::{Path, PathBuf};

/// The Cargo workspace root (the directory holding `Cargo.lock`), found at compile time so a
/// test binary works from any current directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// Whether this run is CI's (`CI=true`, as CI services and `.ci/run`'s caller set it): there a
/// test that needs a tool (node, npm, pip, `script`) fails when the tool is missing instead of
/// printing a skip, so a green CI run has really run every check.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}
