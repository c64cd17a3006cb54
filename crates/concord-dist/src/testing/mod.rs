//! Test helpers (feature `testing`).

pub mod pg;
