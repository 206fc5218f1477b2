//! The scorer: a horizontally scaled consumer group that rates accounts through the vendor's
//! ESG Portfolio Analysis API.
//!
//! - [`api`]: the API client (token, retries with backoff, strict reading of answers).
//! - `batch`: gathers attempts into batch requests (`POST /v1/esg-analysis:batch`).
//! - [`limiter`]: the tenant rate limit shared by every call of the process.
//! - [`breaker`]: the circuit breaker that stops scoring when tokens are rejected or cannot be had.
//! - [`worker`]: the consume loop, the in-flight window, offsets and crash-safe resume.

pub mod api;
mod batch;
pub mod breaker;
pub mod limiter;
pub mod worker;

pub use worker::{Scorer, ScorerConfig, ScorerError, ScorerStats};
