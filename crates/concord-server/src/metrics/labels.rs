//! The label values of the labelled counters, one enum per label, so that a typo is a compile
//! error rather than a new time series. Each enum's `as_str()` is the value a scraper sees
//! (snake_case of the variant); docs/protocol.md §19 lists every value, and a test below reads
//! that table so the two cannot drift.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use strum::{IntoStaticStr, VariantArray};

/// `limit` of `concord_limit_hits_total`: a configured limit that refused a request or closed
/// a connection (most are named after their setting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, IntoStaticStr, VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum Limit {
    HandshakeTimeout,
    IdleTimeout,
    MaxFrameBytes,
    MaxDataBytes,
    MaxPresenceBytes,
    MaxHistory,
    MaxRoomsPerConn,
    MaxMembersPerRoom,
    MaxConnsPerIp,
    /// Also a `joined` whose presence did not fit.
    MaxCatchUpBytes,
    MaxQueueBytes,
    /// Writes and joins that had to wait for a free in-flight slot.
    MaxInflightPerConn,
    MaxConns,
    HttpHeaderTimeout,
    HttpBodyTimeout,
    /// Pages of history cut by the byte budget.
    MaxPageBytes,
    /// WebSocket upgrades from a foreign `Origin`.
    Origin,
    /// Requests refused for their `Host`.
    Host,
    DocMaxDepth,
    DocMaxBytes,
    DocMaxRebaseWork,
    DocMaxApplyWork,
    WriteTimeout,
    MaxRooms,
    /// Events dropped from a room's in-memory window by its byte bound.
    RoomWindowBytes,
    /// Rooms trimmed by a retention sweep.
    Retention,
    /// Connections closed after being held back by their frame rate for that long.
    FloodCloseAfter,
}

/// `scope` of `concord_rate_limited_total`: the token bucket that refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, IntoStaticStr, VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum RateScope {
    /// A connection's writes (publishes and op lists).
    Connection,
    /// A room's new events, from all senders.
    Room,
    /// A connection's presence updates.
    Presence,
    /// A connection's drift reports.
    Drift,
    /// Connections refused by the per-IP limit.
    Ip,
    /// Rooms created by one connection.
    RoomCreateConn,
    /// Rooms created by one user.
    RoomCreateUser,
    /// A connection's data frames, before parsing: frames that waited for the rate.
    Frames,
}

/// `reason` of `concord_auth_failures_total`: why a token (or a `hello`) was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, IntoStaticStr, VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum AuthFailure {
    Missing,
    Malformed,
    BadSignature,
    WrongAlgorithm,
    /// Also a connection closed at the end of its grace period.
    Expired,
    NotYetValid,
    MissingClaim,
    BadClaim,
    /// A refreshed token for another user (`auth`).
    OtherUser,
    /// A `client_id` bound to another user.
    ClientIdTaken,
}

/// `outcome` of `concord_joins_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, IntoStaticStr, VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum JoinOutcome {
    /// A join without `since`.
    Fresh,
    /// Every event after `since` was sent.
    Recovered,
    /// `since` could not be recovered: the newest events were sent instead.
    Reset,
}

/// `as_str()` (the label value) and the encoding prometheus-client writes.
macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl $t {
            /// The label value, as a scraper sees it.
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }

        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                self.as_str().encode(encoder)
            }
        }
    )*};
}

label_value!(Limit, RateScope, AuthFailure, JoinOutcome);

#[cfg(test)]
mod tests {
    use super::*;

    const PROTOCOL: &str = include_str!("../../../../docs/protocol.md");

    /// The values the metrics table of `doc` lists for `label` of `metric`: the backquoted
    /// words after `` `label` = `` in the labels cell of that metric's row.
    fn documented(doc: &str, metric: &str, label: &str) -> Vec<String> {
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{metric}` |")))
            .unwrap_or_else(|| panic!("no row for {metric} in docs/protocol.md"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | metric | type | labels | description |
        let labels = cells[3];
        let values = labels
            .strip_prefix(&format!("`{label}` = "))
            .unwrap_or_else(|| panic!("{metric}: no `{label}` = … in {labels:?}"));
        values
            .split(", ")
            .map(|v| {
                v.strip_prefix('`')
                    .and_then(|v| v.strip_suffix('`'))
                    .unwrap_or_else(|| panic!("{metric}: {v:?} is not a `value`"))
                    .to_string()
            })
            .collect()
    }

    /// The enum's values and the documented ones are the same list (in the same order) and
    /// hold no duplicates.
    fn assert_same(metric: &str, label: &str, values: &[&str]) {
        let documented = documented(PROTOCOL, metric, label);
        assert_eq!(
            values, documented,
            "{metric}{{{label}}}: code vs docs/protocol.md §19"
        );
        let mut unique = values.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), values.len(), "{metric}: a value twice");
    }

    #[test]
    fn the_label_values_are_the_documented_ones() {
        let limits: Vec<_> = Limit::VARIANTS.iter().map(|v| v.as_str()).collect();
        assert_same("concord_limit_hits_total", "limit", &limits);
        let scopes: Vec<_> = RateScope::VARIANTS.iter().map(|v| v.as_str()).collect();
        assert_same("concord_rate_limited_total", "scope", &scopes);
        let reasons: Vec<_> = AuthFailure::VARIANTS.iter().map(|v| v.as_str()).collect();
        assert_same("concord_auth_failures_total", "reason", &reasons);
        let outcomes: Vec<_> = JoinOutcome::VARIANTS.iter().map(|v| v.as_str()).collect();
        assert_same("concord_joins_total", "outcome", &outcomes);
    }

    #[test]
    fn the_parser_reads_the_values_of_one_row() {
        let doc = "| metric | type | labels | |\n\
                   |---|---|---|---|\n\
                   | `a_total` | counter | `x` = `one`, `two_words` | the `z` = `no` |\n\
                   | `b_total` | counter | `y` = `three` | |\n";
        assert_eq!(documented(doc, "a_total", "x"), ["one", "two_words"]);
        assert_eq!(documented(doc, "b_total", "y"), ["three"]);
    }

    #[test]
    fn a_value_is_the_snake_case_of_its_variant() {
        assert_eq!(Limit::MaxConnsPerIp.as_str(), "max_conns_per_ip");
        assert_eq!(Limit::DocMaxRebaseWork.as_str(), "doc_max_rebase_work");
        assert_eq!(RateScope::RoomCreateUser.as_str(), "room_create_user");
        assert_eq!(AuthFailure::ClientIdTaken.as_str(), "client_id_taken");
    }
}
