//! Azure adapters (being built).
