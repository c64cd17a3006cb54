//! A server that ends a client's membership of a joined room and asks it to join again (an
//! `unavailable` error naming the room and no id: the room came back in a new epoch, or its
//! actor failed) gets a join from the client's position on the same connection, and the
//! client delivers what that join answers (here a reset to the new epoch), then the room's
//! next events; publishes keep flowing.

use concord_client::{Client, ClientConfig, JoinOptions, RoomUpdate};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(10);

/// One connection of a scripted server: answers hello, the first join (epoch e1 at seq 2),
/// then asks for a rejoin and reports each later `join` it receives to `joins`; answers it
/// with a reset to epoch e2 at seq 10 and sends event 11; acks publishes at 12, 13…
async fn serve(listener: TcpListener, joins: mpsc::UnboundedSender<Value>) {
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let mut joined_once = false;
    let mut next_seq = 12;
    while let Some(Ok(Message::Text(text))) = ws.next().await {
        let msg: Value = serde_json::from_str(&text).unwrap();
        let room = msg["room"].clone();
        let out: Vec<Value> = match msg["type"].as_str().unwrap_or_default() {
            "hello" => vec![
                json!({"type":"welcome","client_id":msg["client_id"],"node":"fake","server_time":1}),
            ],
            "join" if !joined_once => {
                joined_once = true;
                vec![
                    json!({"type":"joined","room":room,"kind":"stream","epoch":"e1","seq":2,
                           "recovered":true,"events":[]}),
                    json!({"type":"error","room":room,"code":"unavailable",
                           "message":"the room's history was reset (new epoch); join again"}),
                ]
            }
            "join" => {
                joins.send(msg.clone()).unwrap();
                let event = |seq: u64| {
                    json!({"type":"event","room":room,"seq":seq,"hlc":format!("h{seq}"),
                           "from":"other","id":format!("o{seq}"),"data":{"n":seq}})
                };
                vec![
                    json!({"type":"joined","room":room,"kind":"stream","epoch":"e2","seq":10,
                           "recovered":false,"events":[event(10)]}),
                    event(11),
                ]
            }
            "publish" => {
                let seq = next_seq;
                next_seq += 1;
                vec![json!({"type":"ack","room":room,"id":msg["id"],"seq":seq,
                            "hlc":format!("h{seq}")})]
            }
            _ => vec![],
        };
        for frame in out {
            ws.send(Message::text(frame.to_string())).await.unwrap();
        }
    }
}

async fn next(room: &mut concord_client::Room) -> RoomUpdate {
    tokio::time::timeout(WAIT, room.next())
        .await
        .expect("an update in time")
        .expect("the room goes on")
}

#[tokio::test]
async fn a_room_the_server_asks_to_join_again_is_rejoined_from_its_position() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    let (joins_tx, mut joins) = mpsc::unbounded_channel();
    tokio::spawn(serve(listener, joins_tx));
    let client = Client::connect(ClientConfig::new(url).with_client_id("c1"))
        .await
        .expect("connect");
    let mut room = client.join("r", JoinOptions::stream()).await.expect("join");
    let rejoin = tokio::time::timeout(WAIT, joins.recv())
        .await
        .expect("the client joins again when asked")
        .unwrap();
    assert_eq!(
        rejoin["since"],
        json!({"epoch":"e1","seq":2}),
        "from its position: {rejoin}"
    );
    match next(&mut room).await {
        RoomUpdate::Reset { epoch, seq, .. } => assert_eq!((epoch.as_str(), seq), ("e2", 10)),
        other => panic!("a reset first, got {other:?}"),
    }
    match next(&mut room).await {
        RoomUpdate::Event(e) => assert_eq!(e.seq, 11),
        other => panic!("event 11, got {other:?}"),
    }
    let ack = tokio::time::timeout(WAIT, client.publish_with_id("r", "p1", json!({"n": 1})))
        .await
        .expect("an ack in time")
        .expect("acked");
    assert_eq!(ack.seq, 12);
    client.close().await;
}
