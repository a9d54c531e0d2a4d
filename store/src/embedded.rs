//! Embedded backend (to be written).
pub struct EmbeddedStore;
