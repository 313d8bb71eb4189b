//! The Keap sandbox's integration tests: one binary, one module per area, over real HTTP.

mod support;

mod binary;
mod contacts;
mod faults;
mod hooks;
mod oauth;
mod tags;
