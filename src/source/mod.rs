//! HTTP source (being built).
