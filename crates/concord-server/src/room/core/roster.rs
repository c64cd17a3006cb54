//! The distributed mode's members of a room on other gateways, and what this gateway tells
//! them about its own.
//!
//! The model: a client is present in a room when it has a connection to the room on some
//! gateway. Each gateway knows its own connections ([`Members`]) and learns the others' from
//! their roster deltas (`{joined, left, presence}` of their own clients, published on the
//! room's channel): a client present through several gateways is one member. Membership notices
//! go to this gateway's connections exactly when a client becomes present anywhere or is gone
//! everywhere, so every gateway tells its members the same story. A gateway that dies without
//! saying so is found by its lapsed heartbeat (the shell asks), and its clients leave
//! ([`Members::gateway_gone`]) — presence `null` once, `member_left` once, on every gateway.
//! Presence is the client's latest value, whichever gateway set it; this gateway's own changes
//! go out at its presence flush (coalesced, like presence to its own members).

use super::members::{MemberConn, Members};
use concord_core::ClientId;
use concord_protocol::outbound::MemberInfo;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// What one gateway tells the others about its own clients of a room.
#[derive(Debug, Clone, Default)]
pub struct RosterDelta {
    /// Clients whose first connection here joined (`Some(info)`) or whose last one left
    /// (`None`); the last change of each client wins.
    pub members: BTreeMap<ClientId, Option<Arc<MemberInfo>>>,
    /// Presence set (`Some`) or cleared (`None`) through this gateway.
    pub presence: BTreeMap<ClientId, Option<Arc<RawValue>>>,
}

impl RosterDelta {
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.presence.is_empty()
    }
}

/// The room's clients on other gateways, and this gateway's changes not yet told.
#[derive(Debug, Default)]
pub struct Roster {
    /// Clients present through other gateways: the gateways, and who the client is.
    remote: HashMap<ClientId, (BTreeSet<String>, Arc<MemberInfo>)>,
    out: RosterDelta,
    /// Clients whose presence changed here since the last flush.
    presence_dirty: HashSet<ClientId>,
}

impl Roster {
    pub(super) fn joined_here(&mut self, info: Arc<MemberInfo>) {
        if let Ok(client) = ClientId::new(&info.client_id) {
            self.out.members.insert(client, Some(info));
        }
    }

    pub(super) fn left_here(&mut self, client: ClientId) {
        self.presence_dirty.remove(&client);
        self.out.presence.remove(&client);
        self.out.members.insert(client, None);
    }

    pub(super) fn presence_here(&mut self, client: ClientId) {
        self.presence_dirty.insert(client);
    }

    /// Moves this gateway's presence changes into the delta to tell (at the presence flush).
    pub(super) fn flush(&mut self, presence: &HashMap<ClientId, Arc<RawValue>>) {
        for client in self.presence_dirty.drain() {
            let value = presence.get(&client).cloned();
            self.out.presence.insert(client, value);
        }
    }

    /// Clients present only through other gateways.
    pub(super) fn remote_only<'a, V>(
        &'a self,
        local: &'a HashMap<ClientId, V>,
    ) -> impl Iterator<Item = &'a Arc<MemberInfo>> + 'a {
        self.remote
            .iter()
            .filter(move |(c, _)| !local.contains_key(*c))
            .map(|(_, (_, info))| info)
    }
}

impl<C: MemberConn> Members<C> {
    /// Whether `client` is present through another gateway.
    pub fn remote_present(&self, client: &ClientId) -> bool {
        self.roster
            .as_ref()
            .is_some_and(|r| r.remote.contains_key(client))
    }

    /// What `max_members_per_room` counts: this gateway's member connections plus the
    /// clients present only through other gateways (each counted once: how many connections
    /// they have there is theirs to know). In the embedded mode, the connections.
    pub fn cluster_len(&self) -> usize {
        let remote_only = self.roster.as_ref().map_or(0, |r| {
            r.remote.keys().filter(|c| !self.local_present(c)).count()
        });
        self.len() + remote_only
    }

    /// Whether clients are present through other gateways.
    pub fn has_remote(&self) -> bool {
        self.roster.as_ref().is_some_and(|r| !r.remote.is_empty())
    }

    /// What this gateway must tell the others about its clients (taken: told once).
    pub fn take_roster(&mut self) -> Option<RosterDelta> {
        let r = self.roster.as_mut()?;
        (!r.out.is_empty()).then(|| std::mem::take(&mut r.out))
    }

    /// The gateways with clients in this room (whose heartbeats the shell checks).
    pub fn remote_gateways(&self) -> BTreeSet<String> {
        let Some(r) = &self.roster else {
            return BTreeSet::new();
        };
        r.remote
            .values()
            .flat_map(|(gws, _)| gws.iter().cloned())
            .collect()
    }

    /// Applies what gateway `gw` told about its own clients (a delta, or its whole roster
    /// when this room loads).
    pub fn apply_roster(&mut self, gw: &str, delta: RosterDelta, now_ms: u64) {
        if self.roster.is_none() {
            return;
        }
        for (client, change) in delta.members {
            match change {
                Some(info) => {
                    let was = self.local_present(&client) || self.remote_present(&client);
                    let r = self.roster.as_mut().expect("checked");
                    let entry = r
                        .remote
                        .entry(client)
                        .or_insert_with(|| (BTreeSet::new(), info.clone()));
                    entry.0.insert(gw.to_string());
                    if !was {
                        self.arrived(&info, now_ms);
                    }
                }
                None => self.remote_left(gw, &client, now_ms),
            }
        }
        for (client, value) in delta.presence {
            if self.local_present(&client) || self.remote_present(&client) {
                self.put_presence(client, value, now_ms);
            }
        }
    }

    /// Replaces what this room knows of the other gateways' clients with their stored rosters
    /// (read again after notifications may have been lost): a client a gateway lists is
    /// present through it, one it no longer lists has left through it (a gateway not listed at
    /// all — none of its clients here, or its heartbeat lapsed — has no clients). Arrivals are
    /// applied before departures, so a client that moved between gateways meanwhile stays.
    pub fn replace_roster(&mut self, loaded: Vec<(String, RosterDelta)>, now_ms: u64) {
        let Some(r) = &self.roster else { return };
        let listed: HashSet<(&str, &ClientId)> = loaded
            .iter()
            .flat_map(|(gw, d)| {
                d.members
                    .iter()
                    .filter(|(_, m)| m.is_some())
                    .map(move |(c, _)| (gw.as_str(), c))
            })
            .collect();
        let stale: Vec<(String, ClientId)> = r
            .remote
            .iter()
            .flat_map(|(c, (gws, _))| {
                gws.iter()
                    .filter(|gw| !listed.contains(&(gw.as_str(), c)))
                    .map(move |gw| (gw.clone(), c.clone()))
            })
            .collect();
        for (gw, delta) in loaded {
            self.apply_roster(&gw, delta, now_ms);
        }
        for (gw, client) in stale {
            self.remote_left(&gw, &client, now_ms);
        }
    }

    /// Everything this gateway has to tell about its clients: each one joined, with its
    /// presence (told again after notifications were lost: the stored roster, or a delta, may
    /// be gone). `None` in the embedded mode or with no client here.
    pub fn own_roster(&self) -> Option<RosterDelta> {
        self.roster.as_ref()?;
        let mut d = RosterDelta::default();
        for (client, (_, info)) in &self.clients {
            d.members.insert(client.clone(), Some(info.clone()));
            if let Some(v) = self.presence.get(client) {
                d.presence.insert(client.clone(), Some(v.clone()));
            }
        }
        (!d.is_empty()).then_some(d)
    }

    /// Gateway `gw` is gone (its heartbeat lapsed): its clients leave.
    pub fn gateway_gone(&mut self, gw: &str, now_ms: u64) {
        let Some(r) = &self.roster else { return };
        let clients: Vec<ClientId> = r
            .remote
            .iter()
            .filter(|(_, (gws, _))| gws.contains(gw))
            .map(|(c, _)| c.clone())
            .collect();
        for client in clients {
            self.remote_left(gw, &client, now_ms);
        }
    }

    fn remote_left(&mut self, gw: &str, client: &ClientId, now_ms: u64) {
        let r = self.roster.as_mut().expect("a shared room");
        let Some((gws, info)) = r.remote.get_mut(client) else {
            return;
        };
        gws.remove(gw);
        if !gws.is_empty() {
            return;
        }
        let info = info.clone();
        r.remote.remove(client);
        if !self.local_present(client) {
            self.gone(client.clone(), &info, now_ms);
        }
    }
}
