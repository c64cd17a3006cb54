//! Integration tests of the Redis half of concord-dist, against real Redis servers: the shared
//! one at 127.0.0.1:6379 (one key prefix per test) and private ones started by the tests.

mod ambiguous;
mod cluster;
mod commit;
mod conn;
mod durability;
mod functions;
mod gateway_docs;
mod gateways;
mod helpers;
mod lease;
mod notify;
mod persisted;
mod store_roles;
mod support;
