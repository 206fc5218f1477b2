//! esg-scorer
