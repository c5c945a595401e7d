//! Integration tests: one binary of modules.

mod agreement;
mod bad_input;
mod bench;
mod bundle_errors;
mod calibration_golden;
mod cli;
mod common;
mod digits;
mod health;
mod init;
mod langevin;
mod metrics_golden;
mod mqtt;
mod raw;
mod stream;
