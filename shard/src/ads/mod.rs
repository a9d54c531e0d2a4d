//! ADS protocol (placeholder until written)
