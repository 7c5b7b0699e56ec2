//! The alert outbox (`alert_outbox` in the ledger): one row per email meter owes. Claiming a
//! row is an `INSERT OR IGNORE` on its unique key (kind, subject, period, detail), so however
//! many calls, restarts or meters sharing the ledger see a threshold crossed, one row exists
//! and one email goes out. Sending leases the row first (`lease_until`), so two meters never
//! send it at once; a failure is retried with back-off until it goes through.

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::email::Rendered;
use crate::ledger::format_ts;

/// The identity of an email: at most one per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    /// `threshold`, `forecast`, `weekly`.
    pub kind: &'static str,
    /// The budget's name, or `weekly`.
    pub subject: String,
    /// The period's label (`2026-11`, `2026-W47`).
    pub period: String,
    /// The threshold (`0.8`), or empty.
    pub detail: String,
}

/// What happens to a claimed row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// To be sent.
    Pending,
    /// Recorded but not sent: nobody to notify, or a higher threshold crossed at the same time.
    Skipped,
}

/// A row due for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub id: i64,
    pub kind: String,
    pub recipients: Vec<String>,
    pub rendered: Rendered,
    pub attempts: i64,
}

/// A claimed row, for `meter budget status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub kind: String,
    pub subject: String,
    pub period: String,
    pub detail: String,
    pub status: String,
    pub created_at: String,
    pub sent_at: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// Claims `key`; returns whether this call created the row as pending (an email to send).
pub fn claim(
    conn: &Connection,
    key: &Key,
    recipients: &[String],
    rendered: &Rendered,
    status: Status,
    now: DateTime<Utc>,
) -> rusqlite::Result<bool> {
    let recipients = serde_json::Value::from(recipients.to_vec()).to_string();
    let status = match status {
        Status::Pending => "pending",
        Status::Skipped => "skipped",
    };
    // A threshold claimed after a higher one of the same budget and period (by another meter,
    // or before a restart) is recorded as skipped: the higher one said more.
    let inserted = conn.execute(
        "INSERT OR IGNORE INTO alert_outbox (kind, subject_key, period, detail, created_at,
            recipients, subject, body_text, body_html, status, next_attempt)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
            CASE WHEN ?1 = 'threshold' AND EXISTS (
                SELECT 1 FROM alert_outbox WHERE kind = 'threshold' AND subject_key = ?2
                AND period = ?3 AND CAST(detail AS REAL) > CAST(?4 AS REAL))
            THEN 'skipped' ELSE ?10 END, ?5",
        params![
            key.kind,
            key.subject,
            key.period,
            key.detail,
            format_ts(&now),
            recipients,
            rendered.subject,
            rendered.text,
            rendered.html,
            status,
        ],
    )?;
    if inserted == 1 && key.kind == "threshold" && status == "pending" {
        // Lower thresholds still waiting (an SMTP outage) are superseded by this one.
        conn.execute(
            "UPDATE alert_outbox SET status = 'skipped', lease_until = NULL
             WHERE kind = 'threshold' AND subject_key = ?1 AND period = ?2 AND status = 'pending'
               AND CAST(detail AS REAL) < CAST(?3 AS REAL)",
            params![key.subject, key.period, key.detail],
        )?;
    }
    let pending: bool = conn
        .query_row(
            "SELECT status = 'pending' FROM alert_outbox
             WHERE kind = ?1 AND subject_key = ?2 AND period = ?3 AND detail = ?4",
            params![key.kind, key.subject, key.period, key.detail],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(false);
    Ok(inserted == 1 && pending)
}

/// Whether `key` was claimed already (by this meter or another).
pub fn exists(conn: &Connection, key: &Key) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM alert_outbox WHERE kind = ?1 AND subject_key = ?2 AND period = ?3 AND detail = ?4",
        params![key.kind, key.subject, key.period, key.detail],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

/// Pending rows whose next attempt is due and that no meter holds a lease on.
pub fn due(conn: &Connection, now: DateTime<Utc>, limit: usize) -> rusqlite::Result<Vec<Due>> {
    let now = format_ts(&now);
    let mut statement = conn.prepare_cached(
        "SELECT id, kind, recipients, subject, body_text, body_html, attempts FROM alert_outbox
         WHERE status = 'pending' AND next_attempt <= ?1
           AND (lease_until IS NULL OR lease_until <= ?1)
         ORDER BY next_attempt, id LIMIT ?2",
    )?;
    let rows = statement
        .query_map(params![now, limit as i64], |row| {
            let recipients: String = row.get(2)?;
            Ok(Due {
                id: row.get(0)?,
                kind: row.get(1)?,
                recipients: serde_json::from_str(&recipients).unwrap_or_default(),
                rendered: Rendered {
                    subject: row.get(3)?,
                    text: row.get(4)?,
                    html: row.get(5)?,
                },
                attempts: row.get(6)?,
            })
        })?
        .collect();
    rows
}

/// A lease on a row: held until `until`, which also identifies it (a meter whose lease ran
/// out and was taken over cannot mark the row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    until: String,
}

/// Takes the row for sending until `until`; `None` when another meter holds it, sent it, or
/// its next attempt is not due yet.
pub fn lease(
    conn: &Connection,
    id: i64,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> rusqlite::Result<Option<Lease>> {
    let until = format_ts(&until);
    let changed = conn.execute(
        "UPDATE alert_outbox SET lease_until = ?3
         WHERE id = ?1 AND status = 'pending' AND next_attempt <= ?2
           AND (lease_until IS NULL OR lease_until <= ?2)",
        params![id, format_ts(&now), until],
    )?;
    Ok((changed == 1).then_some(Lease { id, until }))
}

/// Marks a leased row sent; false if the lease was lost (it ran out and another meter took it).
pub fn mark_sent(conn: &Connection, lease: &Lease, now: DateTime<Utc>) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        "UPDATE alert_outbox SET status = 'sent', sent_at = ?3, attempts = attempts + 1,
            lease_until = NULL, last_error = NULL WHERE id = ?1 AND lease_until = ?2",
        params![lease.id, lease.until, format_ts(&now)],
    )?;
    Ok(changed == 1)
}

/// Records a failed attempt on a leased row and when to try again.
pub fn mark_failed(
    conn: &Connection,
    lease: &Lease,
    next_attempt: DateTime<Utc>,
    error: &str,
) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt = ?3, lease_until = NULL,
            last_error = ?4 WHERE id = ?1 AND lease_until = ?2",
        params![lease.id, lease.until, format_ts(&next_attempt), error],
    )?;
    Ok(changed == 1)
}

/// The rows claimed for a subject (a budget) in a period.
pub fn claimed(conn: &Connection, subject: &str, period: &str) -> rusqlite::Result<Vec<Claimed>> {
    let mut statement = conn.prepare_cached(
        "SELECT kind, subject_key, period, detail, status, created_at, sent_at, attempts, last_error
         FROM alert_outbox WHERE subject_key = ?1 AND period = ?2 ORDER BY id",
    )?;
    let rows = statement
        .query_map(params![subject, period], |row| {
            Ok(Claimed {
                kind: row.get(0)?,
                subject: row.get(1)?,
                period: row.get(2)?,
                detail: row.get(3)?,
                status: row.get(4)?,
                created_at: row.get(5)?,
                sent_at: row.get(6)?,
                attempts: row.get(7)?,
                last_error: row.get(8)?,
            })
        })?
        .collect();
    rows
}

/// Whether the ledger holds calls before `ts` (meter was in use then).
pub fn used_before(conn: &Connection, ts: DateTime<Utc>) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM usage WHERE ts < ?1 LIMIT 1",
        params![format_ts(&ts)],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn conn() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::ledger::schema::migrate(&mut conn).unwrap();
        conn
    }

    fn rendered() -> Rendered {
        Rendered {
            subject: "s".into(),
            text: "t".into(),
            html: "h".into(),
        }
    }

    #[test]
    fn a_lower_threshold_after_a_higher_one_is_skipped_and_a_higher_one_supersedes() {
        let conn = conn();
        let key = |detail: &str| Key {
            kind: "threshold",
            subject: "team".into(),
            period: "2026-11".into(),
            detail: detail.into(),
        };
        let now = Utc::now();
        let to = vec!["ops@example.com".to_string()];
        assert!(claim(&conn, &key("0.5"), &to, &rendered(), Status::Pending, now).unwrap());
        assert!(claim(&conn, &key("1"), &to, &rendered(), Status::Pending, now).unwrap());
        // 0.5 was still pending: superseded by 1.
        assert!(!claim(&conn, &key("0.8"), &to, &rendered(), Status::Pending, now).unwrap());
        let rows = claimed(&conn, "team", "2026-11").unwrap();
        let states: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.detail.as_str(), r.status.as_str()))
            .collect();
        assert_eq!(
            states,
            [("0.5", "skipped"), ("1", "pending"), ("0.8", "skipped")]
        );
    }

    #[test]
    fn a_key_is_claimed_once_and_leased_by_one() {
        let conn = conn();
        let key = Key {
            kind: "threshold",
            subject: "team".into(),
            period: "2026-11".into(),
            detail: "0.8".into(),
        };
        let now = Utc::now();
        let to = vec!["ops@example.com".to_string()];
        assert!(claim(&conn, &key, &to, &rendered(), Status::Pending, now).unwrap());
        assert!(!claim(&conn, &key, &to, &rendered(), Status::Pending, now).unwrap());
        assert!(exists(&conn, &key).unwrap());
        let due_now = due(&conn, now, 10).unwrap();
        assert_eq!(due_now.len(), 1);
        assert_eq!(due_now[0].recipients, to);
        let id = due_now[0].id;
        let until = now + chrono::Duration::seconds(60);
        let held = lease(&conn, id, now, until).unwrap().unwrap();
        assert!(
            lease(&conn, id, now, until).unwrap().is_none(),
            "a lease is exclusive"
        );
        assert!(due(&conn, now, 10).unwrap().is_empty());
        // A failure frees it for a later attempt, not before.
        let later = now + chrono::Duration::seconds(10);
        assert!(mark_failed(&conn, &held, later, "connection refused").unwrap());
        assert!(due(&conn, now, 10).unwrap().is_empty());
        assert!(
            lease(&conn, id, now, until).unwrap().is_none(),
            "backed off"
        );
        assert_eq!(due(&conn, later, 10).unwrap()[0].attempts, 1);
        let first = lease(&conn, id, later, until).unwrap().unwrap();
        // The lease runs out and another meter takes the row: the first cannot mark it.
        let after = until + chrono::Duration::seconds(1);
        let second = lease(&conn, id, after, after + chrono::Duration::seconds(60))
            .unwrap()
            .unwrap();
        assert!(!mark_sent(&conn, &first, later).unwrap());
        assert!(mark_sent(&conn, &second, after).unwrap());
        assert!(due(&conn, after, 10).unwrap().is_empty());
        let rows = claimed(&conn, "team", "2026-11").unwrap();
        assert_eq!(rows[0].status, "sent");
        assert_eq!(rows[0].attempts, 2);
    }
}
