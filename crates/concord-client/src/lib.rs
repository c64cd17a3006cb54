//! Rust client for Concord: one background task per [`Client`] keeps a WebSocket to the server,
//! reconnects with jittered exponential backoff, rejoins rooms from the last seq seen (delivering
//! exactly the missed events, or a [`RoomUpdate::Reset`]) and resends unacked publishes with
//! their original ids, so that nothing is lost or duplicated across disconnects.
//!
//! ```no_run
//! # async fn demo() -> Result<(), concord_client::ClientError> {
//! use concord_client::{Client, ClientConfig, JoinOptions, RoomUpdate};
//! let client = Client::connect(ClientConfig::new("ws://127.0.0.1:7070/v1/ws")).await?;
//! let mut room = client.join("chat:lobby", JoinOptions::stream().with_history(10)).await?;
//! let ack = client.publish("chat:lobby", serde_json::json!({"text": "hi"})).await?;
//! while let Some(update) = room.next().await {
//!     match update {
//!         RoomUpdate::Event(e) if e.seq == ack.seq => break,
//!         _ => {}
//!     }
//! }
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! Doc rooms ([`Client::join_doc`]) keep a local replica of a shared JSON document in sync
//! with operational transformation: edits apply locally at once and are sent in the
//! background; see [`Doc`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), concord_client::ClientError> {
//! use concord_client::{Client, ClientConfig, DocOptions, DocUpdate};
//! use serde_json::json;
//! let client = Client::connect(ClientConfig::new("ws://127.0.0.1:7070/v1/ws")).await?;
//! let mut doc = client.join_doc("doc:notes", DocOptions { create: true }).await?;
//! doc.edit_json(json!([{"op":"set","path":["title"],"value":"Notes"}]))?;
//! doc.flushed().await?; // committed
//! while let Some(update) = doc.next().await {
//!     match update {
//!         DocUpdate::Changed { .. } => println!("{}", doc.state()),
//!         DocUpdate::Rejected { code, .. } => eprintln!("refused: {code}"),
//!         DocUpdate::Resynced { reason, .. } => eprintln!("resynced: {reason:?}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod client;
mod config;
mod conn;
mod doc;
mod error;
mod pending;
mod replica;
mod room;
mod task;
mod track;
mod wire;

pub use client::{Ack, AckFuture, Client, Stats};
pub use concord_core::doc::{ApplyError, DecodeError, Op, PathSeg, TextEdit};
pub use concord_protocol::Json;
/// An event of a room: `data` (stream rooms) or `ops` (doc rooms) are kept as JSON text;
/// [`Json::parse`] reads them into any type.
pub type EventMsg = concord_protocol::outbound::Event<'static>;
pub use config::{random_client_id, ClientConfig, JoinOptions};
pub use doc::{Doc, DocOptions, DocUpdate, ResyncReason};
pub use error::ClientError;
pub use room::{Room, RoomUpdate};
