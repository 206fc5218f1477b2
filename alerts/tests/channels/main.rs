//! Integration tests of the three channels against real local servers: an SMTP server with
//! STARTTLS and AUTH (aiosmtpd), a PagerDuty Events API v2 receiver that validates every event,
//! and a webhook receiver. One test crate, so the dependencies are linked once.

mod email;
mod pagerduty;
mod support;
mod webhook;
