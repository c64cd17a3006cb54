//! Test helpers (feature `testing`): private Redis servers and clusters, unique key prefixes,
//! a fresh PostgreSQL database per test.

pub mod pg;
pub mod redis;
