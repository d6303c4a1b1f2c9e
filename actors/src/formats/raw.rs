//! Raw format (being built).
