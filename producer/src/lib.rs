//! esg-producer
