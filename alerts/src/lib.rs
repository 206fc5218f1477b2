//! Alerts of the job: who hears about a late, failed or degraded run, and through which channel.
