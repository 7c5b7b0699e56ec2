//! The alert outbox (`alert_outbox` in the ledger): one row per email meter owes. Claiming a
//! row is an `INSERT ... ON CONFLICT DO NOTHING` on its unique key (kind, subject, period, detail), so however
//! many calls, restarts or meters sharing the ledger see a threshold crossed, one row exists
//! and one email goes out. Sending leases the row first (`lease_until`), so two meters never
//! send it at once; a failure is retried with back-off until it goes through.

use crate::args;
use crate::ledger::db::{Db, DbError};
use chrono::{DateTime, Utc};

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
    db: &mut Db,
    key: &Key,
    recipients: &[String],
    rendered: &Rendered,
    status: Status,
    now: DateTime<Utc>,
) -> Result<bool, DbError> {
    let recipients = serde_json::Value::from(recipients.to_vec()).to_string();
    let status = match status {
        Status::Pending => "pending",
        Status::Skipped => "skipped",
    };
    // A threshold claimed after a higher one of the same budget and period (by another meter,
    // or before a restart) is recorded as skipped: the higher one said more.
    // The threshold as a number (?11) for the comparisons; `detail` is text.
    let level = key.detail.parse::<f64>().unwrap_or(0.0);
    let inserted = db.execute(
        "INSERT INTO alert_outbox (kind, subject_key, period, detail, created_at,
            recipients, subject, body_text, body_html, status, next_attempt)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9,
            CASE WHEN ?1 = 'threshold' AND EXISTS (
                SELECT 1 FROM alert_outbox WHERE kind = 'threshold' AND subject_key = ?2
                AND period = ?3 AND CAST(detail AS REAL) > ?11)
            THEN 'skipped' ELSE ?10 END, ?5
         WHERE true
         ON CONFLICT DO NOTHING",
        &args![
            key.kind,
            key.subject.as_str(),
            key.period.as_str(),
            key.detail.as_str(),
            format_ts(&now),
            recipients,
            rendered.subject.as_str(),
            rendered.text.as_str(),
            rendered.html.as_str(),
            status,
            level,
        ],
    )?;
    if inserted == 1 && key.kind == "threshold" && status == "pending" {
        // Lower thresholds still waiting (an SMTP outage) are superseded by this one.
        db.execute(
            "UPDATE alert_outbox SET status = 'skipped', lease_until = NULL
             WHERE kind = 'threshold' AND subject_key = ?1 AND period = ?2 AND status = 'pending'
               AND CAST(detail AS REAL) < ?3",
            &args![key.subject.as_str(), key.period.as_str(), level],
        )?;
    }
    let pending: bool = match db.query_opt(
        "SELECT CASE WHEN status = 'pending' THEN 1 ELSE 0 END FROM alert_outbox
         WHERE kind = ?1 AND subject_key = ?2 AND period = ?3 AND detail = ?4",
        &args![
            key.kind,
            key.subject.as_str(),
            key.period.as_str(),
            key.detail.as_str()
        ],
    )? {
        Some(row) => row.get(0)?,
        None => false,
    };
    Ok(inserted == 1 && pending)
}

/// Whether `key` was claimed already (by this meter or another).
pub fn exists(db: &mut Db, key: &Key) -> Result<bool, DbError> {
    Ok(db
        .query_opt(
            "SELECT 1 FROM alert_outbox WHERE kind = ?1 AND subject_key = ?2 AND period = ?3 AND detail = ?4",
            &args![key.kind, key.subject.as_str(), key.period.as_str(), key.detail.as_str()],
        )?
        .is_some())
}

/// Pending rows whose next attempt is due and that no meter holds a lease on.
pub fn due(db: &mut Db, now: DateTime<Utc>, limit: usize) -> Result<Vec<Due>, DbError> {
    let now = format_ts(&now);
    db.query(
        "SELECT id, kind, recipients, subject, body_text, body_html, attempts FROM alert_outbox
         WHERE status = 'pending' AND next_attempt <= ?1
           AND (lease_until IS NULL OR lease_until <= ?1)
         ORDER BY next_attempt, id LIMIT ?2",
        &args![now, limit as i64],
    )?
    .iter()
    .map(|row| {
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
    })
    .collect()
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
    db: &mut Db,
    id: i64,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Option<Lease>, DbError> {
    let until = format_ts(&until);
    let changed = db.execute(
        "UPDATE alert_outbox SET lease_until = ?3
         WHERE id = ?1 AND status = 'pending' AND next_attempt <= ?2
           AND (lease_until IS NULL OR lease_until <= ?2)",
        &args![id, format_ts(&now), until.as_str()],
    )?;
    Ok((changed == 1).then_some(Lease { id, until }))
}

/// Marks a leased row sent; false if the lease was lost (it ran out and another meter took it).
pub fn mark_sent(db: &mut Db, lease: &Lease, now: DateTime<Utc>) -> Result<bool, DbError> {
    let changed = db.execute(
        "UPDATE alert_outbox SET status = 'sent', sent_at = ?3, attempts = attempts + 1,
            lease_until = NULL, last_error = NULL WHERE id = ?1 AND lease_until = ?2",
        &args![lease.id, lease.until.as_str(), format_ts(&now)],
    )?;
    Ok(changed == 1)
}

/// Records a failed attempt on a leased row and when to try again.
pub fn mark_failed(
    db: &mut Db,
    lease: &Lease,
    next_attempt: DateTime<Utc>,
    error: &str,
) -> Result<bool, DbError> {
    let changed = db.execute(
        "UPDATE alert_outbox SET attempts = attempts + 1, next_attempt = ?3, lease_until = NULL,
            last_error = ?4 WHERE id = ?1 AND lease_until = ?2",
        &args![
            lease.id,
            lease.until.as_str(),
            format_ts(&next_attempt),
            error
        ],
    )?;
    Ok(changed == 1)
}

/// The rows claimed for a subject (a budget) in a period.
pub fn claimed(db: &mut Db, subject: &str, period: &str) -> Result<Vec<Claimed>, DbError> {
    db.query(
        "SELECT kind, subject_key, period, detail, status, created_at, sent_at, attempts, last_error
         FROM alert_outbox WHERE subject_key = ?1 AND period = ?2 ORDER BY id",
        &args![subject, period],
    )?
    .iter()
    .map(|row| {
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
        })
        .collect()
}

/// Whether the ledger holds calls before `ts` (meter was in use then).
pub fn used_before(db: &mut Db, ts: DateTime<Utc>) -> Result<bool, DbError> {
    Ok(db
        .query_opt(
            "SELECT 1 FROM usage WHERE ts < ?1 LIMIT 1",
            &args![format_ts(&ts)],
        )?
        .is_some())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn conn() -> Db {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::ledger::schema::migrate(&mut conn).unwrap();
        Db::Sqlite(conn)
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
        let mut conn = conn();
        let key = |detail: &str| Key {
            kind: "threshold",
            subject: "team".into(),
            period: "2026-11".into(),
            detail: detail.into(),
        };
        let now = Utc::now();
        let to = vec!["ops@example.com".to_string()];
        assert!(claim(
            &mut conn,
            &key("0.5"),
            &to,
            &rendered(),
            Status::Pending,
            now
        )
        .unwrap());
        assert!(claim(&mut conn, &key("1"), &to, &rendered(), Status::Pending, now).unwrap());
        // 0.5 was still pending: superseded by 1.
        assert!(!claim(
            &mut conn,
            &key("0.8"),
            &to,
            &rendered(),
            Status::Pending,
            now
        )
        .unwrap());
        let rows = claimed(&mut conn, "team", "2026-11").unwrap();
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
        let mut conn = conn();
        let key = Key {
            kind: "threshold",
            subject: "team".into(),
            period: "2026-11".into(),
            detail: "0.8".into(),
        };
        let now = Utc::now();
        let to = vec!["ops@example.com".to_string()];
        assert!(claim(&mut conn, &key, &to, &rendered(), Status::Pending, now).unwrap());
        assert!(!claim(&mut conn, &key, &to, &rendered(), Status::Pending, now).unwrap());
        assert!(exists(&mut conn, &key).unwrap());
        let due_now = due(&mut conn, now, 10).unwrap();
        assert_eq!(due_now.len(), 1);
        assert_eq!(due_now[0].recipients, to);
        let id = due_now[0].id;
        let until = now + chrono::Duration::seconds(60);
        let held = lease(&mut conn, id, now, until).unwrap().unwrap();
        assert!(
            lease(&mut conn, id, now, until).unwrap().is_none(),
            "a lease is exclusive"
        );
        assert!(due(&mut conn, now, 10).unwrap().is_empty());
        // A failure frees it for a later attempt, not before.
        let later = now + chrono::Duration::seconds(10);
        assert!(mark_failed(&mut conn, &held, later, "connection refused").unwrap());
        assert!(due(&mut conn, now, 10).unwrap().is_empty());
        assert!(
            lease(&mut conn, id, now, until).unwrap().is_none(),
            "backed off"
        );
        assert_eq!(due(&mut conn, later, 10).unwrap()[0].attempts, 1);
        let first = lease(&mut conn, id, later, until).unwrap().unwrap();
        // The lease runs out and another meter takes the row: the first cannot mark it.
        let after = until + chrono::Duration::seconds(1);
        let second = lease(&mut conn, id, after, after + chrono::Duration::seconds(60))
            .unwrap()
            .unwrap();
        assert!(!mark_sent(&mut conn, &first, later).unwrap());
        assert!(mark_sent(&mut conn, &second, after).unwrap());
        assert!(due(&mut conn, after, 10).unwrap().is_empty());
        let rows = claimed(&mut conn, "team", "2026-11").unwrap();
        assert_eq!(rows[0].status, "sent");
        assert_eq!(rows[0].attempts, 2);
    }
}
