//! esg-assembler
