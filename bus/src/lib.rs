//! esg-bus
