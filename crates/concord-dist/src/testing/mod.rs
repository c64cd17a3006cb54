//! Test helpers (feature `testing`): private Redis servers and clusters, unique key prefixes.

pub mod redis;
