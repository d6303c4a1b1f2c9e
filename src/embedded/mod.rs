//! Embedded backends (being built).
