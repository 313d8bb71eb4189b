//! The binaries under test: the functions and the hello-world baseline, found next to
//! the bench's own executable (one `cargo build --bins` puts them all in `target/<profile>/`).
//!
//! Deliberately not `keapalive_tests::runtime_api::binary_path`: that rebuilds each function
//! alone, and a lone build resolves different crate features than the Makefile's one build, so
//! it would recompile the dependencies and replace the binaries being measured.

use std::path::PathBuf;

pub const HELLO: &str = "hello-lambda";
pub const REFRESHER: &str = "token-refresher";
pub const UPSERT: &str = "contact-upsert";
pub const CALLBACK: &str = "oauth-callback";
pub const PROXY: &str = "keap-proxy";
pub const ACCESS_TOKEN: &str = "access-token";
pub const HOOKS: &str = "keap-hooks";

pub fn locate(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the bench's path: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: build it with the bench (`make bench` runs `cargo build --release --bins -p oauth-callback -p token-refresher -p contact-upsert -p keap-proxy -p access-token -p keap-hooks -p keapalive-bench`)",
            path.display()
        ))
    }
}

/// The file size: what a `bootstrap` zipped for Lambda starts from.
pub fn size_bytes(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}
