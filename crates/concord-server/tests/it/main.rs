//! Integration tests: the server as a library on port 0, spoken to over real WebSockets and HTTP.

mod auth;
mod bad_input;
mod client;
mod client_tls;
mod cluster;
mod cluster_docs;
mod demo;
mod doc_client;
mod docs;
mod durability;
mod frames;
mod http;
mod limits;
mod ordering;
mod presence;
mod recovery;
mod rooms;
mod slow_consumer;
mod store_contract;
mod supervision;
mod support;
