//! Budget alerts and the weekly report: the alerter watches the budgets' live figures, claims
//! each email it owes in the ledger's outbox ([`outbox`]) so that it exists once per budget,
//! threshold and period whatever happens, and sends what is pending over SMTP, retrying with
//! back-off while the server is down. It never touches the request path.

pub mod email;
pub mod outbox;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ledger::db::{Db, DbError};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use chrono_tz::Tz;
use tokio::sync::{watch, Notify};

use crate::budget::{BudgetView, Budgets};
use crate::clock::Clock;
use crate::config::{BudgetConfig, SmtpConfig, WeeklyConfig};
use crate::ledger::query::{self, ScopeRow};
use crate::mail::{Email, Mailer};
use crate::metrics::Metrics;
use crate::report::{GroupBy, Period};
use email::{AlertKind, BudgetAlert, Rendered, Spender};
use outbox::{Key, Status};

/// How often budgets are checked against their thresholds (and the gauges set).
const TICK: Duration = Duration::from_secs(1);

/// Owns the alerter's connection and state; `run` drives it until shutdown.
pub struct Alerter {
    conn: Arc<Mutex<Option<Db>>>,
    /// Where to reconnect after a PostgreSQL connection broke (an outage, a restart).
    store: crate::ledger::db::Store,
    budgets: Arc<Budgets>,
    weekly: Option<WeeklyConfig>,
    smtp: SmtpConfig,
    /// The transport, or why it could not be set up (a missing password variable, a bad CA
    /// file): each email then fails with that reason and is retried.
    mailer: Result<Mailer, String>,
    metrics: Arc<Metrics>,
    clock: Clock,
    tz: Tz,
    started: DateTime<Utc>,
    /// Keys this process has already claimed or seen claimed.
    seen: Mutex<HashSet<Key>>,
    wake: Notify,
}

impl Alerter {
    /// `conn`: the ledger connection to start with; `None` (a PostgreSQL ledger unreachable at
    /// start) opens one from `store` at the first use.
    pub fn new(
        conn: Option<Db>,
        store: crate::ledger::db::Store,
        budgets: Arc<Budgets>,
        weekly: Option<WeeklyConfig>,
        smtp: SmtpConfig,
        metrics: Arc<Metrics>,
    ) -> Alerter {
        let mailer = Mailer::new(&smtp).map_err(|err| err.to_string());
        if let Err(err) = &mailer {
            tracing::error!(error = %err, "email is not set up; alerts will be retried until it is fixed");
        }
        let clock = budgets.clock();
        Alerter {
            conn: Arc::new(Mutex::new(conn)),
            store,
            tz: budgets.timezone(),
            budgets,
            weekly,
            smtp,
            mailer,
            metrics,
            clock,
            started: clock.now(),
            seen: Mutex::new(HashSet::new()),
            wake: Notify::new(),
        }
    }

    /// Takes the alerter's ledger connection (at shutdown, to close it off the async threads).
    pub fn take_connection(&self) -> Option<Db> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Whether there is anything to watch: budgets or a weekly report.
    pub fn is_idle(&self) -> bool {
        self.budgets.is_empty() && self.weekly.is_none()
    }

    /// Checks and sends until `shutdown` turns true.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let sender = tokio::spawn(self.clone().send_loop(shutdown.clone()));
        let mut shutdown = shutdown;
        let mut interval = tokio::time::interval(TICK);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = shutdown.changed() => break,
            }
            if let Err(err) = self.check().await {
                tracing::warn!(error = %err, "checking budgets and schedules failed; will retry");
            }
        }
        // The sender finishes the email in progress (each send is bounded by the SMTP timeout)
        // and stops; cutting it mid-send could send that email again after a restart.
        let limit = self.smtp.timeout + Duration::from_secs(10);
        let abort = sender.abort_handle();
        if tokio::time::timeout(limit, sender).await.is_err() {
            abort.abort();
        }
    }

    /// Runs `work` on the alerter's connection, off the async threads.
    async fn db<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Db) -> Result<T, DbError> + Send + 'static,
    ) -> anyhow::Result<T> {
        let conn = self.conn.clone();
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut conn = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if conn.is_none() {
                *conn = Some(store.open().map_err(|err| DbError::Open(err.to_string()))?);
            }
            let result = match conn.as_mut() {
                Some(db) => work(db),
                None => Err(DbError::NoRow),
            };
            // A broken PostgreSQL connection is replaced at the next use.
            if let Err(err) = &result {
                if err.is_transient() && matches!(conn.as_ref(), Some(Db::Postgres(_))) {
                    *conn = None;
                }
            }
            result
        })
        .await?;
        Ok(result?)
    }

    fn seen(&self, key: &Key) -> bool {
        self.seen
            .lock()
            .map(|seen| seen.contains(key))
            .unwrap_or(false)
    }

    fn mark_seen(&self, key: Key) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(key);
        }
    }

    /// One pass: gauges, thresholds, forecasts, the weekly schedule.
    pub async fn check(&self) -> anyhow::Result<()> {
        let views = self.budgets.views();
        self.metrics.set_budgets(&views);
        let configs: Vec<BudgetConfig> = self.budgets.configs().cloned().collect();
        let mut claimed_any = false;
        for (config, view) in configs.iter().zip(views) {
            if view.synced {
                claimed_any |= self.check_budget(config, &view).await?;
            }
        }
        if let Some(weekly) = self.weekly.clone() {
            claimed_any |= self.check_weekly(&weekly).await?;
        }
        if claimed_any {
            self.wake.notify_one();
        }
        Ok(())
    }

    async fn check_budget(&self, config: &BudgetConfig, view: &BudgetView) -> anyhow::Result<bool> {
        let key = |kind: &'static str, detail: String| Key {
            kind,
            subject: config.name.clone(),
            period: view.period.label.clone(),
            detail,
        };
        let crossed: Vec<(f64, Key)> = config
            .alert_at
            .iter()
            .filter(|f| view.spend_nanos >= threshold_nanos(config.limit_nanos, **f))
            .map(|f| (*f, key("threshold", format_fraction(*f))))
            .filter(|(_, k)| !self.seen(k))
            .collect();
        let forecast_due = config.forecast_alert
            && view.spend_nanos < config.limit_nanos
            && view.forecast_nanos.is_some_and(|f| f > config.limit_nanos);
        let forecast_key = key("forecast", String::new());
        let forecast_due = forecast_due && !self.seen(&forecast_key);
        if crossed.is_empty() && !forecast_due {
            return Ok(false);
        }
        let period = view.period.clone();
        let rows = self
            .db(move |c| query::scope_sums(c, &period, false))
            .await?;
        let mut claimed_any = false;
        // Crossed together (a restart mid-period, a burst), only the highest threshold mails;
        // the lower ones are recorded as skipped.
        let highest = crossed.iter().map(|(f, _)| *f).fold(0.0, f64::max);
        for (fraction, key) in crossed {
            let alert = self.budget_alert(config, view, AlertKind::Threshold(fraction), &rows);
            let status = if fraction == highest && !config.notify.is_empty() {
                Status::Pending
            } else {
                Status::Skipped
            };
            claimed_any |= self
                .claim(
                    key,
                    config.notify.clone(),
                    email::budget_alert(&alert),
                    status,
                )
                .await?;
        }
        if forecast_due {
            let alert = self.budget_alert(config, view, AlertKind::Forecast, &rows);
            let status = if config.notify.is_empty() {
                Status::Skipped
            } else {
                Status::Pending
            };
            claimed_any |= self
                .claim(
                    forecast_key,
                    config.notify.clone(),
                    email::budget_alert(&alert),
                    status,
                )
                .await?;
        }
        Ok(claimed_any)
    }

    /// Claims `key` in the outbox; true when this process created a pending row.
    async fn claim(
        &self,
        key: Key,
        recipients: Vec<String>,
        rendered: Rendered,
        status: Status,
    ) -> anyhow::Result<bool> {
        let now = self.clock.now();
        let claim_key = key.clone();
        let created = self
            .db(move |c| outbox::claim(c, &claim_key, &recipients, &rendered, status, now))
            .await?;
        if created {
            tracing::info!(kind = key.kind, subject = %key.subject, period = %key.period, detail = %key.detail, pending = (status == Status::Pending), "alert claimed");
        }
        self.mark_seen(key);
        Ok(created && status == Status::Pending)
    }

    fn budget_alert(
        &self,
        config: &BudgetConfig,
        view: &BudgetView,
        kind: AlertKind,
        rows: &[ScopeRow],
    ) -> BudgetAlert {
        let (top_agents, top_models) = top_spenders(config, rows, 5);
        BudgetAlert {
            budget: config.name.clone(),
            scope: config.scope.describe(),
            kind,
            period_kind: config.period.as_str(),
            period_label: view.period.label.clone(),
            period_start: view.period.start,
            period_end: view.period.end,
            timezone: self.tz,
            spend_nanos: view.spend_nanos,
            limit_nanos: view.limit_nanos,
            forecast_nanos: view.forecast_nanos,
            unpriced_calls: view.unpriced_calls,
            unread_calls: view.unread_calls,
            enforce: config.enforce,
            top_agents,
            top_models,
            now: self.clock.now(),
        }
    }

    /// The weekly report: due at its time; after downtime, sent once at start when meter was
    /// in use before the missed time.
    async fn check_weekly(&self, weekly: &WeeklyConfig) -> anyhow::Result<bool> {
        let now = self.clock.now();
        let Some(scheduled) = last_scheduled(weekly, now, self.tz) else {
            return Ok(false);
        };
        let Some(week) = reported_week(scheduled, self.tz) else {
            return Ok(false);
        };
        let key = Key {
            kind: "weekly",
            subject: "weekly".to_string(),
            period: week.label.clone(),
            detail: String::new(),
        };
        if self.seen(&key) {
            return Ok(false);
        }
        if scheduled <= self.started {
            // The next report is due within a day: it will say more than last week's would.
            if scheduled + chrono::Duration::days(6) <= now {
                self.mark_seen(key);
                return Ok(false);
            }
            let exists_key = key.clone();
            let (claimed, used) = self
                .db(move |c| {
                    Ok((
                        outbox::exists(c, &exists_key)?,
                        outbox::used_before(c, scheduled)?,
                    ))
                })
                .await?;
            if claimed || !used {
                // Sent before the restart, or meter was not in use then: nothing to catch up.
                self.mark_seen(key);
                return Ok(false);
            }
        }
        let tz = self.tz;
        let report_week = week.clone();
        let rendered = self
            .db(move |c| {
                let by = [GroupBy::Agent, GroupBy::Provider, GroupBy::Model];
                let report = query::build_report(c, &report_week, &by, tz, now)?;
                let previous_groups = match report_week.previous(tz) {
                    Some(previous) => query::report_groups(c, &previous, &by)?,
                    None => Vec::new(),
                };
                Ok(email::weekly_report(&email::Weekly {
                    report,
                    previous_groups,
                    now,
                }))
            })
            .await?;
        self.claim(key, weekly.to.clone(), rendered, Status::Pending)
            .await
    }

    /// Sends pending emails as they come due, until shutdown.
    async fn send_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(err) = self.send_due(&shutdown).await {
                tracing::warn!(error = %err, "reading the alert outbox failed; will retry");
            }
        }
    }

    /// Records the outcome of a send, retrying a busy ledger for a while: a sent email left
    /// marked pending would go out again.
    async fn mark(
        &self,
        what: &'static str,
        work: impl Fn(&mut Db) -> Result<bool, DbError> + Send + Sync + Clone + 'static,
    ) {
        for attempt in 0..10u32 {
            match self.db(work.clone()).await {
                Ok(true) => return,
                Ok(false) => {
                    tracing::warn!(
                        what,
                        "the email's lease ran out and another meter took it over"
                    );
                    return;
                }
                Err(err) => {
                    tracing::warn!(what, attempt, error = %err, "recording an email's outcome failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt + 1))).await;
                }
            }
        }
    }

    async fn send_due(&self, shutdown: &watch::Receiver<bool>) -> anyhow::Result<()> {
        let now = self.clock.now();
        let due = self.db(move |c| outbox::due(c, now, 16)).await?;
        for row in due {
            if *shutdown.borrow() {
                return Ok(());
            }
            let now = self.clock.now();
            let lease = chrono::Duration::from_std(self.smtp.timeout * 2 + Duration::from_secs(30))
                .unwrap_or(chrono::Duration::minutes(2));
            let id = row.id;
            let Some(lease) = self
                .db(move |c| outbox::lease(c, id, now, now + lease))
                .await?
            else {
                continue;
            };
            let email = Email {
                to: row.recipients.clone(),
                subject: row.rendered.subject.clone(),
                text: row.rendered.text.clone(),
                html: row.rendered.html.clone(),
            };
            let result = match &self.mailer {
                Ok(mailer) => mailer.send(&email).await.map_err(|err| err.to_string()),
                Err(reason) => Err(reason.clone()),
            };
            let kind = metric_kind(&row.kind);
            match result {
                Ok(()) => {
                    let sent = self.clock.now();
                    self.mark("sent", move |c| outbox::mark_sent(c, &lease, sent))
                        .await;
                    self.metrics
                        .alerts_sent_total
                        .with_label_values(&[kind])
                        .inc();
                    tracing::info!(kind = %row.kind, subject = %row.rendered.subject, recipients = row.recipients.len(), "email sent");
                }
                Err(reason) => {
                    let wait = backoff(&self.smtp, row.attempts);
                    let next = self.clock.now()
                        + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::minutes(10));
                    let error = reason.clone();
                    self.mark("failed", move |c| {
                        outbox::mark_failed(c, &lease, next, &error)
                    })
                    .await;
                    self.metrics
                        .alert_failures_total
                        .with_label_values(&[kind])
                        .inc();
                    tracing::warn!(kind = %row.kind, subject = %row.rendered.subject, attempt = row.attempts + 1, retry_in_secs = wait.as_secs(), error = %reason, "sending an email failed; will retry");
                }
            }
        }
        Ok(())
    }
}

fn metric_kind(kind: &str) -> &'static str {
    crate::metrics::ALERT_KINDS
        .into_iter()
        .find(|k| *k == kind)
        .unwrap_or("threshold")
}

/// The wait before attempt `attempts + 1`: doubling from `retry_min`, at most `retry_max`.
pub fn backoff(smtp: &SmtpConfig, attempts: i64) -> Duration {
    let factor = 2u32.saturating_pow(u32::try_from(attempts).unwrap_or(u32::MAX).min(20));
    smtp.retry_min.saturating_mul(factor).min(smtp.retry_max)
}

/// The spend at which a threshold fraction is crossed, in nano-dollars.
pub fn threshold_nanos(limit_nanos: i64, fraction: f64) -> i64 {
    (limit_nanos as f64 * fraction).round() as i64
}

/// `0.8`, `1`, `0.95`: a threshold as its key and people read it.
pub fn format_fraction(fraction: f64) -> String {
    let text = format!("{fraction:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The top agents and `provider/model`s in a budget's scope, most spend first.
pub fn top_spenders(
    config: &BudgetConfig,
    rows: &[ScopeRow],
    count: usize,
) -> (Vec<Spender>, Vec<Spender>) {
    let mut agents: std::collections::BTreeMap<String, (i64, u64)> = Default::default();
    let mut models: std::collections::BTreeMap<String, (i64, u64)> = Default::default();
    for row in rows.iter().filter(|r| {
        config
            .scope
            .matches(&r.agent, &r.provider, &r.model, &r.route)
    }) {
        let requests = row.requests.max(0) as u64;
        let agent = agents.entry(row.agent.clone()).or_default();
        agent.0 += row.cost_nanos;
        agent.1 += requests;
        let model = models
            .entry(format!("{}/{}", row.provider, row.model))
            .or_default();
        model.0 += row.cost_nanos;
        model.1 += requests;
    }
    let top = |map: std::collections::BTreeMap<String, (i64, u64)>| {
        let mut list: Vec<Spender> = map
            .into_iter()
            .map(|(name, (cost_nanos, requests))| Spender {
                name,
                cost_nanos,
                requests,
            })
            .collect();
        list.sort_by(|a, b| {
            b.cost_nanos
                .cmp(&a.cost_nanos)
                .then(b.requests.cmp(&a.requests))
                .then(a.name.cmp(&b.name))
        });
        list.truncate(count);
        list
    };
    (top(agents), top(models))
}

/// The latest scheduled instant of the weekly report at or before `now`.
pub fn last_scheduled(weekly: &WeeklyConfig, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
    let today = now.with_timezone(&tz).date_naive();
    let back =
        (7 + today.weekday().num_days_from_monday() - weekly.weekday.num_days_from_monday()) % 7;
    let mut day = today - chrono::Duration::days(i64::from(back));
    for _ in 0..3 {
        let local = day.and_time(weekly.at);
        // A time skipped by a DST change moves to the first instant after the gap.
        let instant = tz
            .from_local_datetime(&local)
            .earliest()
            .or_else(|| {
                tz.from_local_datetime(&(local + chrono::Duration::hours(1)))
                    .earliest()
            })?
            .with_timezone(&Utc);
        if instant <= now {
            return Some(instant);
        }
        day -= chrono::Duration::days(7);
    }
    None
}

/// The week a weekly report sent at `scheduled` covers: the last whole ISO week before it.
pub fn reported_week(scheduled: DateTime<Utc>, tz: Tz) -> Option<Period> {
    let local = scheduled.with_timezone(&tz).date_naive();
    let monday = local - chrono::Duration::days(i64::from(local.weekday().num_days_from_monday()));
    let sunday_before = monday.pred_opt()?;
    let iso = sunday_before.iso_week();
    Period::week(iso.year(), iso.week(), tz)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::{NaiveTime, Weekday};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn the_weekly_schedule_finds_the_last_slot_and_its_week() {
        let weekly = WeeklyConfig {
            to: vec!["ops@example.com".into()],
            weekday: Weekday::Mon,
            at: NaiveTime::from_hms_opt(9, 0, 0).unwrap(),
        };
        let tz: Tz = "Europe/Paris".parse().unwrap();
        // Wednesday 2026-11-25: the last slot is Monday 2026-11-23 09:00 CET = 08:00 UTC.
        let slot = last_scheduled(&weekly, at("2026-11-25T12:00:00Z"), tz).unwrap();
        assert_eq!(slot, at("2026-11-23T08:00:00Z"));
        assert_eq!(reported_week(slot, tz).unwrap().label, "2026-W47");
        // A minute before Monday's slot: the week before's.
        let slot = last_scheduled(&weekly, at("2026-11-23T07:59:00Z"), tz).unwrap();
        assert_eq!(slot, at("2026-11-16T08:00:00Z"));
        assert_eq!(reported_week(slot, tz).unwrap().label, "2026-W46");
        // Exactly at the slot.
        let slot = last_scheduled(&weekly, at("2026-11-23T08:00:00Z"), tz).unwrap();
        assert_eq!(slot, at("2026-11-23T08:00:00Z"));
        // A Friday report covers the last whole week too.
        let friday = WeeklyConfig {
            weekday: Weekday::Fri,
            ..weekly
        };
        let slot = last_scheduled(&friday, at("2026-11-28T12:00:00Z"), tz).unwrap();
        assert_eq!(slot, at("2026-11-27T08:00:00Z"));
        assert_eq!(reported_week(slot, tz).unwrap().label, "2026-W47");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let smtp = crate::config::Config::from_toml("", "t.toml").unwrap().smtp;
        assert_eq!(backoff(&smtp, 0), smtp.retry_min);
        assert_eq!(backoff(&smtp, 1), smtp.retry_min * 2);
        assert_eq!(backoff(&smtp, 60), smtp.retry_max);
    }

    #[test]
    fn thresholds_and_fractions() {
        assert_eq!(threshold_nanos(500_000_000_000, 0.8), 400_000_000_000);
        assert_eq!(format_fraction(0.8), "0.8");
        assert_eq!(format_fraction(1.0), "1");
        assert_eq!(format_fraction(0.95), "0.95");
    }
}
