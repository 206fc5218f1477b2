//! esg-simulator
