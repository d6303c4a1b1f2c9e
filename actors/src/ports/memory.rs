//! In-memory ports (being built).
