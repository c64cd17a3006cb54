//! Doc-room ownership: the lease (`SET NX PX`, renewed by its holder) and the fence that every
//! acquisition increments and `concord_commit` checks.

use crate::log::{LogError, RedisLog};
use concord_core::RoomId;
use std::time::Duration;

/// Who holds a room's lease, and for how much longer (by Redis's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub owner: String,
    pub remaining: Duration,
}

impl RedisLog {
    /// Acquires or renews the room's lease for `owner`: the fence to commit with, or `None`
    /// while another owner holds it. An acquisition (not a renewal) increments the fence.
    pub async fn acquire_lease(
        &self,
        room: &RoomId,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<u64>, LogError> {
        let ms = lease.as_millis();
        if ms == 0 || owner.is_empty() {
            return Err(LogError::Config(
                "a lease needs an owner and at least 1 ms".into(),
            ));
        }
        let rk = self.keys().room(room.as_str());
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("concord_lease")
            .arg(2)
            .arg(&rk.meta)
            .arg(&rk.owner)
            .arg(owner)
            .arg(ms as u64);
        let fence: u64 = self.call_cmd(&cmd).await?;
        Ok((fence > 0).then_some(fence))
    }

    /// Drops the lease if `owner` holds it; whether it did.
    pub async fn release_lease(&self, room: &RoomId, owner: &str) -> Result<bool, LogError> {
        let rk = self.keys().room(room.as_str());
        let mut cmd = redis::cmd("FCALL");
        cmd.arg("concord_release").arg(1).arg(&rk.owner).arg(owner);
        let dropped: i64 = self.call_cmd(&cmd).await?;
        Ok(dropped == 1)
    }

    /// The lease's holder and remaining time, `None` when nobody holds it.
    pub async fn lease_holder(&self, room: &RoomId) -> Result<Option<LeaseHolder>, LogError> {
        let rk = self.keys().room(room.as_str());
        let mut get = redis::cmd("GET");
        get.arg(&rk.owner);
        let owner: Option<String> = self.call_cmd(&get).await?;
        let mut pttl = redis::cmd("PTTL");
        pttl.arg(&rk.owner);
        let ttl: i64 = self.call_cmd(&pttl).await?;
        Ok(match (owner, u64::try_from(ttl)) {
            (Some(owner), Ok(ms)) => Some(LeaseHolder {
                owner,
                remaining: Duration::from_millis(ms),
            }),
            _ => None,
        })
    }
}
