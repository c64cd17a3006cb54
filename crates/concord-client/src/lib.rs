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
//! `wss://` URLs use TLS (rustls) with the default feature `tls`, trusting Mozilla's root
//! certificates (`webpki-roots`), or also the operating system's with the feature
//! `tls-native-roots`. To trust something else — a private CA, a self-signed certificate —
//! give a rustls configuration ([`rustls`] is re-exported, with the `ring` provider):
//!
//! ```no_run
//! # #[cfg(feature = "tls")]
//! # async fn demo(ca_der: Vec<u8>) -> Result<(), Box<dyn std::error::Error>> {
//! use concord_client::{rustls, Client, ClientConfig};
//! use std::sync::Arc;
//! let mut roots = rustls::RootCertStore::empty();
//! roots.add(rustls::pki_types::CertificateDer::from(ca_der))?;
//! let tls = rustls::ClientConfig::builder()
//!     .with_root_certificates(roots)
//!     .with_no_client_auth();
//! let config = ClientConfig::new("wss://concord.internal:7443/v1/ws").with_tls(Arc::new(tls));
//! let client = Client::connect(config).await?;
//! # Ok(()) }
//! ```
//!
//! Without the feature (`default-features = false`) only `ws://` URLs connect.
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
#[cfg(feature = "tls")]
pub use rustls;
/// An event of a room: `data` (stream rooms) or `ops` (doc rooms) are kept as JSON text;
/// [`Json::parse`] reads them into any type.
pub type EventMsg = concord_protocol::outbound::Event<'static>;
pub use config::{random_client_id, ClientConfig, JoinOptions};
pub use doc::{Doc, DocOptions, DocUpdate, ResyncReason};
pub use error::ClientError;
pub use room::{Room, RoomUpdate};
