//! Attack scenarios against the real `concord` binary: each test plays a hostile (or careless)
//! client — slowloris, never-reading sockets, fd exhaustion, stalled HTTP readers, deep docs,
//! stale op lists, room floods — and asserts that the server's memory and file descriptors stay
//! bounded and that well-behaved clients are still served (`/healthz`, a publish and its ack)
//! while the attack goes on.
//!
//! Every module here reproduces one reported attack; each test failed on the code before its fix.

#[path = "../support/mod.rs"]
#[allow(dead_code)]
mod support;

#[allow(dead_code)]
mod probe;

mod baseline;
mod cross_origin;
mod data_dir;
mod deep_docs;
mod doc_client;
mod drift_flood;
mod fd_exhaustion;
mod http_edges;
mod never_reading;
mod publish_flood;
mod room_floods;
mod room_load;
mod shutdown;
mod slowloris;
mod stale_lists;
mod stalled_readers;
mod startup;
