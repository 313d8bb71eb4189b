//! `keapalive-admin`: the operator's view of a deployment's connections table.
//!
//! - [`status`]: one [`status::StatusRow`] per connection, built from the stored record without
//!   ever touching a token.
//! - [`format`]: the human table (relative times, like "in 23h 10m") and the `--json` form.
//! - [`confirm`]: the confirmation `remove` asks for, and when it refuses to ask.
//! - [`cli`]: argument parsing and the commands.
//!
//! The table is read with the standard AWS configuration chain (`AWS_PROFILE`, `AWS_REGION`,
//! `AWS_ENDPOINT_URL`, ...), so the same binary works against a deployed stage and the local
//! emulator.

pub mod cli;
pub mod confirm;
pub mod format;
pub mod status;
