//! Alerts of the job: who hears about a late, failed or degraded run, and through which channel.
//!
//! The job raises an [`Alert`] for four conditions ([`AlertKind`]): the run did not start in
//! time, it passed its window, a critical error ended it, or too many accounts failed. An
//! [`Alerter`] built from the `[alerts]` configuration ([`AlertsConfig`]) sends it at once to
//! every enabled channel: email to the development team and the business stakeholders by route,
//! PagerDuty (Events API v2, de-duplicated per run and kind) to the operator on call, and a
//! webhook. A [`Resolution`] clears it. Channels that are down never fail the caller: the
//! outcome is an [`AlertReport`], logged and counted ([`Alerter::stats`]).
//!
//! Deciding WHEN a condition holds is the caller's (the binary's monitor and the assembler);
//! [`AlertsConfig::failure_ratio_exceeded`] and `missed_start_grace` are the shared thresholds.

mod alert;
mod alerter;
mod channel;
mod config;
pub mod email;
mod http;
pub mod pagerduty;
mod webhook;

pub use alert::{
    one_line, Alert, AlertKind, Resolution, Severity, MAX_DETAILS, MAX_DETAIL_CHARS,
    MAX_SUMMARY_CHARS,
};
pub use alerter::{AlertReport, AlertStats, Alerter, ChannelStats, MAX_ATTEMPTS};
pub use channel::Channel;
pub use config::{
    default_business_route, default_development_route, default_failure_ratio_threshold,
    default_missed_start_grace, default_pagerduty_kinds, default_pagerduty_url,
    default_retry_backoff, default_smtp_port, default_timeout, AlertConfigError, AlertsConfig,
    EmailConfig, PagerDutyConfig, Recipients, Routes, Secret, WebhookConfig,
    MAX_MISSED_START_GRACE, MAX_RETRY_BACKOFF, MAX_TIMEOUT,
};
