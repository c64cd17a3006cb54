//! Shared JSON documents, sans IO: the op model, atomic apply, operational transformation,
//! the canonical state hash, and invariant checks.
//!
//! - [`ops`]: ops and their wire form (`set`, `del`, `ins`, `move`, `text`, `add`), decoding
//!   with errors that name the op index, limits.
//! - [`apply`]: applying an op list to a `serde_json::Value` atomically, with inverses.
//! - [`transform`]: rebasing op lists (server) and the two-way transform (client); the
//!   per-op rules are in `rules`, `list_rules` and `text_rules`.
//! - [`hash`]: canonical JSON and the state hash every replica computes.
//! - [`measure`]: depth and canonical size of documents and of what an op list does to them.
//! - [`read`]: reading back stored JSON (snapshots, op lists) at any depth the server wrote.
//! - [`check`] and [`sim`]: invariant checks and an in-memory model of the server and client
//!   OT loops, for fuzzing and simulation.

pub mod apply;
pub mod check;
pub mod hash;
mod list_rules;
pub mod measure;
pub mod ops;
pub mod path;
pub mod read;
mod rules;
pub mod sim;
mod text_rules;
pub mod transform;

#[cfg(test)]
mod tests;

pub use apply::{add_numbers, apply, apply_in_place, apply_with_inverse, ApplyError};
pub use hash::{canonical_json, canonical_len, canonical_number, canonical_str_len, state_hash};
pub use measure::{apply_measured, depth, op_list_depth, text_scan_bytes};
pub use ops::{decode_op, decode_ops, encode_ops, DecodeError, Limits, Op, OpKind, TextEdit};
pub use path::{DisplayPath, Path, PathSeg};
pub use read::{read_stored, ReadError, MAX_STORED_DEPTH};
pub use transform::{
    transform, transform_over_many, transform_over_many_bounded, transform_pair, OverBudget,
    Transformed,
};
