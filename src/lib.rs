//! The `esg` binary's library: configuration, telemetry and the wiring of the stages. The
//! binary itself (`main.rs`) only parses the command line, installs logging and signal handling,
//! and calls into here, so tests run the real pipeline in-process.

pub mod alerting;
pub mod auditing;
pub mod config;
pub mod delivering;
pub mod erasing;
pub mod history;
pub mod pipeline;
pub mod preflight;
pub mod progress;
pub mod retention;
pub mod runner;
pub mod schedule;
pub mod serving;
pub mod status;
pub mod telemetry;
