//! Test helpers (feature `testing`): private Redis servers and clusters, unique key prefixes,
//! a fresh PostgreSQL database per test, a private PostgreSQL server to crash and restart.

pub mod pg;
pub mod pg_server;
pub mod redis;
