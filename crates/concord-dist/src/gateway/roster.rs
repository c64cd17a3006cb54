//! The room rosters of the distributed mode in Redis: each gateway's present clients and their
//! presence in the room's roster hash (`m|{gw}|{client}` → member info, `p|{gw}|{client}` →
//! presence JSON), its changes published on the room's channel, and the gateways' heartbeats
//! (`{prefix}:gw:{id}`, renewed every third of the lease) by which a dead gateway's clients are
//! found and removed.

use crate::RedisLog;
use concord_core::{ClientId, RoomId};
use concord_protocol::outbound::MemberInfo;
use concord_server::cluster::RosterDelta;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A roster delta as published: `{"room":…,"gw":…,"roster":{"members":…,"presence":…}}` (read
/// back by the feed's `Note`).
#[derive(Serialize)]
pub(super) struct RosterNote {
    pub room: String,
    pub gw: String,
    pub roster: Wire,
}

#[derive(Serialize, Deserialize, Default)]
pub(super) struct Wire {
    members: BTreeMap<String, Option<MemberInfo>>,
    presence: BTreeMap<String, Option<Box<RawValue>>>,
}

impl Wire {
    pub fn of(delta: &RosterDelta) -> Wire {
        Wire {
            members: delta
                .members
                .iter()
                .map(|(c, m)| (c.to_string(), m.as_deref().cloned()))
                .collect(),
            presence: delta
                .presence
                .iter()
                .map(|(c, v)| (c.to_string(), v.as_deref().map(|v| v.to_owned())))
                .collect(),
        }
    }

    /// The delta (entries whose client id does not validate are left out).
    pub fn delta(self) -> RosterDelta {
        let mut d = RosterDelta::default();
        for (c, m) in self.members {
            if let Ok(c) = ClientId::new(&c) {
                d.members.insert(c, m.map(Arc::new));
            }
        }
        for (c, v) in self.presence {
            if let Ok(c) = ClientId::new(&c) {
                d.presence.insert(c, v.map(Arc::from));
            }
        }
        d
    }
}

fn field(kind: char, gw: &str, client: &str) -> String {
    format!("{kind}|{gw}|{client}")
}

/// Stores `delta` of gateway `gw` in the room's roster hash, then publishes it.
pub(super) async fn tell(
    log: &RedisLog,
    room: &RoomId,
    gw: &str,
    delta: &RosterDelta,
) -> Result<(), String> {
    let rk = log.keys().room(room.as_str());
    let mut set = redis::cmd("HSET");
    set.arg(&rk.roster);
    let mut del = redis::cmd("HDEL");
    del.arg(&rk.roster);
    let (mut sets, mut dels) = (0, 0);
    for (client, m) in &delta.members {
        match m {
            Some(info) => {
                let json = serde_json::to_string(info.as_ref()).map_err(|e| e.to_string())?;
                set.arg(field('m', gw, client.as_str())).arg(json);
                sets += 1;
            }
            None => {
                del.arg(field('m', gw, client.as_str()))
                    .arg(field('p', gw, client.as_str()));
                dels += 1;
            }
        }
    }
    for (client, v) in &delta.presence {
        match v {
            Some(v) => {
                set.arg(field('p', gw, client.as_str())).arg(v.get());
                sets += 1;
            }
            None => {
                del.arg(field('p', gw, client.as_str()));
                dels += 1;
            }
        }
    }
    if sets > 0 {
        log.call_cmd::<i64>(&set).await.map_err(|e| e.to_string())?;
    }
    if dels > 0 {
        log.call_cmd::<i64>(&del).await.map_err(|e| e.to_string())?;
    }
    let note = RosterNote {
        room: room.to_string(),
        gw: gw.to_string(),
        roster: Wire::of(delta),
    };
    let mut publish = redis::cmd("PUBLISH");
    publish
        .arg(&rk.channel)
        .arg(serde_json::to_string(&note).map_err(|e| e.to_string())?);
    log.call_cmd::<i64>(&publish)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// How long an answer about a gateway's heartbeat is reused: every room with members on
/// other gateways checks them every second, and one `EXISTS` per gateway and second serves
/// them all.
const ALIVE_FOR: Duration = Duration::from_secs(1);

/// The gateway's answers about other gateways' heartbeats (shared by all its rooms).
#[derive(Default)]
pub(super) struct Liveness {
    seen: Mutex<HashMap<String, (Instant, bool)>>,
}

impl Liveness {
    fn cached(&self, gw: &str) -> Option<bool> {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match seen.get(gw) {
            Some((at, alive)) if at.elapsed() < ALIVE_FOR => Some(*alive),
            _ => None,
        }
    }

    fn note(&self, gw: &str, alive: bool) {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: answers past their use are dropped once many pile up.
        if seen.len() > 4096 {
            seen.retain(|_, (at, _)| at.elapsed() < ALIVE_FOR);
        }
        seen.insert(gw.to_string(), (Instant::now(), alive));
    }
}

/// Whether gateway `gw`'s heartbeat is alive (an answer of the last second reused).
async fn alive(log: &RedisLog, live: &Liveness, gw: &str) -> Result<bool, String> {
    if let Some(known) = live.cached(gw) {
        return Ok(known);
    }
    let mut cmd = redis::cmd("EXISTS");
    cmd.arg(log.keys().gateway(gw));
    let alive = log
        .call_cmd::<i64>(&cmd)
        .await
        .map(|n| n > 0)
        .map_err(|e| e.to_string())?;
    live.note(gw, alive);
    Ok(alive)
}

/// The room's stored roster, one delta per other gateway whose heartbeat is alive.
pub(super) async fn load(
    log: &RedisLog,
    live: &Liveness,
    room: &RoomId,
    own: &str,
) -> Result<Vec<(String, RosterDelta)>, String> {
    let rk = log.keys().room(room.as_str());
    let mut cmd = redis::cmd("HGETALL");
    cmd.arg(&rk.roster);
    let all: BTreeMap<String, String> = log.call_cmd(&cmd).await.map_err(|e| e.to_string())?;
    let mut by_gw: BTreeMap<String, RosterDelta> = BTreeMap::new();
    for (f, value) in all {
        let mut parts = f.splitn(3, '|');
        let (Some(kind), Some(gw), Some(client)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if gw == own {
            continue;
        }
        let Ok(client) = ClientId::new(client) else {
            continue;
        };
        let d = by_gw.entry(gw.to_string()).or_default();
        match kind {
            "m" => {
                if let Ok(info) = serde_json::from_str::<MemberInfo>(&value) {
                    d.members.insert(client, Some(Arc::new(info)));
                }
            }
            "p" => {
                if let Ok(v) = RawValue::from_string(value) {
                    d.presence.insert(client, Some(Arc::from(v)));
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (gw, d) in by_gw {
        if alive(log, live, &gw).await? {
            out.push((gw, d));
        }
    }
    Ok(out)
}

/// Takes a seat in the room for the client of `info` through gateway `gw` (`concord_seat`):
/// its roster field written if the room has fewer than `limit` members or lists it already.
pub(super) async fn seat(
    log: &RedisLog,
    room: &RoomId,
    gw: &str,
    info: &MemberInfo,
    limit: usize,
) -> Result<bool, String> {
    let rk = log.keys().room(room.as_str());
    let json = serde_json::to_string(info).map_err(|e| e.to_string())?;
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("concord_seat")
        .arg(1)
        .arg(&rk.roster)
        .arg(limit)
        .arg(gw)
        .arg(&info.client_id)
        .arg(json);
    log.call_cmd::<i64>(&cmd)
        .await
        .map(|n| n == 1)
        .map_err(|e| e.to_string())
}

/// Which of `gateways` lapsed; their fields are removed from the room's roster.
pub(super) async fn gone(
    log: &RedisLog,
    live: &Liveness,
    room: &RoomId,
    gateways: &[String],
) -> Vec<String> {
    let mut dead = Vec::new();
    for gw in gateways {
        match alive(log, live, gw).await {
            Ok(false) => dead.push(gw.clone()),
            Ok(true) => {}
            Err(e) => {
                tracing::warn!(gateway = %gw, error = %e, "checking a gateway's heartbeat failed")
            }
        }
    }
    if dead.is_empty() {
        return dead;
    }
    let rk = log.keys().room(room.as_str());
    let mut keys = redis::cmd("HKEYS");
    keys.arg(&rk.roster);
    if let Ok(fields) = log.call_cmd::<Vec<String>>(&keys).await {
        let stale: Vec<&String> = fields
            .iter()
            .filter(|f| {
                dead.iter()
                    .any(|gw| f.split('|').nth(1) == Some(gw.as_str()))
            })
            .collect();
        if !stale.is_empty() {
            let mut del = redis::cmd("HDEL");
            del.arg(&rk.roster).arg(stale);
            let _ = log.call_cmd::<i64>(&del).await;
        }
    }
    dead
}

/// Keeps gateway `gw`'s heartbeat alive (a task; it ends when the log is dropped elsewhere and
/// the process exits).
pub(super) fn heartbeat(log: Arc<RedisLog>, gw: String, lease: Duration) {
    tokio::spawn(async move {
        let key = log.keys().gateway(&gw);
        let every = (lease / 3).max(Duration::from_millis(50));
        loop {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key)
                .arg(1)
                .arg("PX")
                .arg(u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
            if let Err(e) = log.call_cmd::<String>(&cmd).await {
                tracing::warn!(error = %e, "renewing the gateway's heartbeat failed");
            }
            tokio::time::sleep(every).await;
        }
    });
}
