//! Test harness: the AWS emulator, fresh AWS resources, log capture and a local Lambda
//! Runtime API that runs the real function binaries.

pub mod aws;
pub mod emulator;
pub mod fixture;
pub mod http_front;
pub mod local;
pub mod logs;
pub mod runtime_api;
pub mod workspace;
