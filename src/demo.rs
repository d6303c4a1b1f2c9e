//! Demo source (being built).
