use std::path::{Path, PathBuf};

/// The Cargo workspace root (the directory holding `Cargo.lock`), found at compile time so a
/// test binary works from any current directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}
