//! Curated format (being built).
