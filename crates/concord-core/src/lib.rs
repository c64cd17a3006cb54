//! Sans-IO core of Concord: identifiers, per-room sequencing, idempotency, hybrid logical clocks,
//! ordered delivery of a shared log (`Follower`).
//!
//! Nothing in this crate performs IO or reads the time by itself: clocks are injected
//! through [`Clock`], so every piece can be tested deterministically.

pub mod doc;
pub mod follower;
pub mod hlc;
pub mod idempotency;
pub mod ids;
pub mod sequencer;

pub use follower::{Fill, Follower};
pub use hlc::{Clock, HlcClock, HlcText, HlcTimestamp, ManualClock};
pub use idempotency::{IdemKey, IdempotencyTable, Lookup};
pub use ids::{ClientId, Epoch, IdError, OpId, RoomId, RoomKind, Seq};
pub use sequencer::{Sequencer, SinceCheck};
