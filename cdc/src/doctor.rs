//! `tessera doctor` and the event pipeline's metrics: what an operator needs to know about it, and whether
//! anything needs them. Read-only; runs as the event system's login (`tessera_replication`).

use std::fmt::Write;

use tokio_postgres::Client;

use crate::dispatch::{self, Subscriber, SubscriberLag};

/// WAL a slot may hold back before the doctor calls for an operator.
pub const RETAINED_WAL_LIMIT: i64 = 1 << 30;
/// Events a subscriber may have waiting before the doctor calls for an operator.
pub const PENDING_LIMIT: i64 = 100_000;

/// The replication slot as the server reports it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SlotStatus {
    pub name: String,
    pub active: bool,
    pub confirmed_flush_lsn: Option<String>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: String,
    /// WAL kept on disk for the slot, in bytes.
    pub retained_wal_bytes: i64,
}

/// Everything the doctor looks at.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub wal_level: String,
    pub slot_name: String,
    pub slot: Option<SlotStatus>,
    pub subscribers: Vec<SubscriberLag>,
    /// Registered subscribers no compiled-in module has; they hold retention back.
    pub unknown_subscribers: Vec<String>,
}

/// One finding.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub name: String,
    /// False when an operator must act.
    pub ok: bool,
    pub detail: String,
}

/// Reads the server's settings, the slot and every subscriber's progress.
pub async fn status(
    client: &Client,
    slot: &str,
    subscribers: &[Subscriber],
) -> Result<Status, tokio_postgres::Error> {
    let wal_level: String = client.query_one("select current_setting('wal_level')", &[]).await?.get(0);
    let slot_status = client
        .query_opt(
            "select active, confirmed_flush_lsn::text, coalesce(wal_status, ''),
                    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint
               from pg_replication_slots where slot_name = $1",
            &[&slot],
        )
        .await?
        .map(|row| SlotStatus {
            name: slot.to_owned(),
            active: row.get(0),
            confirmed_flush_lsn: row.get(1),
            wal_status: row.get(2),
            retained_wal_bytes: row.get(3),
        });
    let unknown_subscribers = dispatch::unknown_subscribers(client, subscribers).await?;
    let subscribers = dispatch::lag(client, subscribers).await?;
    Ok(Status { wal_level, slot_name: slot.to_owned(), slot: slot_status, subscribers, unknown_subscribers })
}

impl Status {
    /// The findings, each saying whether an operator must act.
    pub fn checks(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        let mut push = |name: String, ok: bool, detail: String| checks.push(Check { name, ok, detail });
        push(
            "wal_level".into(),
            self.wal_level == "logical",
            format!("{} (logical is required)", self.wal_level),
        );
        match &self.slot {
            None => push(
                "slot".into(),
                false,
                format!(
                    "replication slot {:?} does not exist: start the CDC worker (`tessera up` or `tessera cdc`)",
                    self.slot_name
                ),
            ),
            Some(slot) => {
                push(
                    "slot".into(),
                    slot.wal_status != "lost",
                    format!(
                        "{}: {}, confirmed up to {}, wal_status {}",
                        slot.name,
                        if slot.active { "active" } else { "inactive (no CDC worker is connected)" },
                        slot.confirmed_flush_lsn.as_deref().unwrap_or("none"),
                        slot.wal_status
                    ),
                );
                push(
                    "retained_wal".into(),
                    slot.retained_wal_bytes <= RETAINED_WAL_LIMIT,
                    format!(
                        "{} bytes of WAL retained for the slot (limit {RETAINED_WAL_LIMIT})",
                        slot.retained_wal_bytes
                    ),
                );
            }
        }
        for lag in &self.subscribers {
            push(
                format!("subscriber {}", lag.subscriber),
                lag.dead_letters == 0 && lag.pending <= PENDING_LIMIT,
                format!(
                    "at log position {}, {} events waiting, {} dead letters{}",
                    lag.position,
                    lag.pending,
                    lag.dead_letters,
                    if lag.dead_letters > 0 { " (see `tessera events dead-letters`)" } else { "" }
                ),
            );
        }
        for name in &self.unknown_subscribers {
            push(
                format!("subscriber {name}"),
                false,
                "registered, but no module of this build has it; its cursor holds retention back. If it is \
                 gone for good, delete its dead letters and its row from events.subscribers (as tessera_events)"
                    .into(),
            );
        }
        checks
    }

    /// Whether no finding needs an operator.
    pub fn healthy(&self) -> bool {
        self.checks().iter().all(|c| c.ok)
    }

    /// The same, in Prometheus' text exposition format.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, samples: Vec<(String, i64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        gauge(
            "tessera_wal_level_logical",
            "Whether wal_level is logical.",
            vec![(String::new(), i64::from(self.wal_level == "logical"))],
        );
        let slot = format!("{{slot=\"{}\"}}", self.slot_name);
        gauge(
            "tessera_cdc_slot_exists",
            "Whether the CDC worker's replication slot exists.",
            vec![(slot.clone(), i64::from(self.slot.is_some()))],
        );
        if let Some(s) = &self.slot {
            gauge(
                "tessera_cdc_slot_active",
                "Whether a CDC worker holds the replication slot.",
                vec![(slot.clone(), i64::from(s.active))],
            );
            gauge(
                "tessera_cdc_retained_wal_bytes",
                "WAL retained for the replication slot.",
                vec![(slot, s.retained_wal_bytes)],
            );
        }
        let per = |f: fn(&SubscriberLag) -> i64| {
            self.subscribers.iter().map(|l| (format!("{{subscriber=\"{}\"}}", l.subscriber), f(l))).collect()
        };
        gauge(
            "tessera_subscriber_position",
            "The last log position a subscriber has finished with.",
            per(|l| l.position),
        );
        gauge(
            "tessera_subscriber_pending_events",
            "Events of a subscriber's types waiting for it.",
            per(|l| l.pending),
        );
        gauge(
            "tessera_subscriber_dead_letters",
            "A subscriber's dead letters not yet replayed.",
            per(|l| l.dead_letters),
        );
        out
    }
}
