//! The Rust client over `wss://`: a TLS terminator (a self-signed certificate) in front of the
//! real server; the client, told to trust that certificate, connects and exchanges messages,
//! and a client that does not trust it cannot connect.

use crate::support::*;
use concord_client::{rustls, Client, ClientConfig, ClientError, JoinOptions, RoomUpdate};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// Accepts TLS on a port of its own and relays the plaintext to `backend` (the Concord
/// server), one task per connection, until the test ends.
async fn tls_terminator(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    backend: SocketAddr,
) -> SocketAddr {
    let config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A client that refuses the certificate ends the handshake: nothing to relay.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut plain = TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connects_over_wss_to_a_server_whose_certificate_it_trusts() {
    let server = TestServer::memory(|_| {}).await;
    let signed = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = signed.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(signed.signing_key.serialize_der()).into();
    let tls_addr = tls_terminator(cert.clone(), key, server.addr).await;
    let url = format!("wss://localhost:{}/v1/ws", tls_addr.port());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let trusting = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let client = Client::connect(ClientConfig::new(&url).with_tls(Arc::new(trusting)))
        .await
        .expect("connects over wss");
    let mut room = client
        .join("tls:r", JoinOptions::stream())
        .await
        .expect("joins over wss");
    let ack = client
        .publish("tls:r", json!({"over": "tls"}))
        .await
        .expect("publish acked over wss");
    assert_eq!(ack.seq, 1);
    match tokio::time::timeout(WAIT, room.next()).await.unwrap() {
        Some(RoomUpdate::Event(e)) => {
            assert_eq!(e.seq, 1);
            let data: serde_json::Value = e.data.expect("a stream event").parse().unwrap();
            assert_eq!(data, json!({"over": "tls"}));
        }
        other => panic!("expected the event, got {other:?}"),
    }
    client.close().await;

    // The default roots do not include a self-signed certificate: the handshake fails.
    let mut untrusting = ClientConfig::new(&url);
    untrusting.connect_timeout = Duration::from_secs(5);
    match Client::connect(untrusting).await {
        Err(ClientError::Connect(why)) => {
            assert!(why.to_lowercase().contains("certificate"), "{why}")
        }
        Err(other) => panic!("expected a certificate error, got {other:?}"),
        Ok(_) => panic!("connected to a server whose certificate it does not trust"),
    }
}
