//! keapalive-admin: see [`keapalive_admin::cli::USAGE`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    keapalive_admin::cli::main(std::env::args().skip(1)).await
}
