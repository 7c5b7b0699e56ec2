//! Budgets in memory: each `[[budget]]`'s spend in its current period, kept current as calls
//! are recorded (no ledger scan per request), and the reservations of the calls in flight that
//! enforcement counts against it.
//!
//! Spend = `base + observed`: `observed` is what this process recorded in the period;
//! `base` is the ledger's figure at the last snapshot minus this process's own rows already in
//! it (`committed`). The writer thread takes snapshots between its commits (on its own
//! connection), so a snapshot and `committed` always agree; rows written by other meters on the
//! same ledger, or inserted by hand, show up at the next snapshot (`store.refresh_secs`).
//!
//! Enforcement (`enforce = true`): a call in scope is let through while the budget's spend
//! plus the reservations of the calls already in flight is below the limit; it then holds a
//! reservation of its worst-case cost until its record is priced. A burst can therefore spend
//! past the limit by at most one call's worth.

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::clock::Clock;
use crate::config::{BudgetConfig, BudgetPeriod, Unpriced};
use crate::ledger::query::ScopeRow;
use crate::ledger::LedgerRecord;
use crate::report::{Period, PeriodKind};
use crate::usage::UsageStatus;

/// Every configured budget.
pub struct Budgets {
    tz: Tz,
    clock: Clock,
    items: Vec<Budget>,
    enforced: bool,
}

struct Budget {
    config: BudgetConfig,
    live: Mutex<Live>,
}

/// A budget's figures in its current period.
#[derive(Debug)]
struct Live {
    period: Period,
    base_nanos: i64,
    base_unpriced: i64,
    base_unread: i64,
    observed_nanos: i64,
    observed_unpriced: i64,
    observed_unread: i64,
    committed_nanos: i64,
    committed_unpriced: i64,
    committed_unread: i64,
    reserved_nanos: i64,
    in_flight: u64,
    /// A snapshot of the ledger was taken in this period.
    synced: bool,
}

impl Live {
    fn new(period: Period) -> Live {
        Live {
            period,
            base_nanos: 0,
            base_unpriced: 0,
            base_unread: 0,
            observed_nanos: 0,
            observed_unpriced: 0,
            observed_unread: 0,
            committed_nanos: 0,
            committed_unpriced: 0,
            committed_unread: 0,
            reserved_nanos: 0,
            in_flight: 0,
            synced: false,
        }
    }

    fn spend(&self) -> i64 {
        self.base_nanos + self.observed_nanos
    }

    fn unpriced(&self) -> u64 {
        (self.base_unpriced + self.observed_unpriced).max(0) as u64
    }

    fn unread(&self) -> u64 {
        (self.base_unread + self.observed_unread).max(0) as u64
    }
}

/// A budget as the alerter, the gauges and `meter budget status` see it.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetView {
    pub name: String,
    pub period: Period,
    pub spend_nanos: i64,
    pub limit_nanos: i64,
    pub reserved_nanos: i64,
    pub in_flight: u64,
    /// Calls in scope meter could not price (not counted in the spend).
    pub unpriced_calls: u64,
    /// Calls in scope whose usage could not be read at all (not counted in the spend, though
    /// the provider may bill them).
    pub unread_calls: u64,
    /// The spend projected to the period's end, once `forecast_min_elapsed` of it has passed.
    pub forecast_nanos: Option<i64>,
    /// The ledger has been read for this period (alerts wait for it).
    pub synced: bool,
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockReason {
    /// The budget's spend plus the calls in flight reached the limit.
    Spent,
    /// The call cannot be priced and the budget says `unpriced = "block"`.
    Unpriced,
}

/// A refusal: which budget, and its figures when it refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    pub budget: String,
    pub reason: BlockReason,
    pub spend_nanos: i64,
    pub limit_nanos: i64,
    pub period_label: String,
    pub period_end: DateTime<Utc>,
}

/// The call being admitted, as budgets scope it.
#[derive(Debug, Clone, Copy)]
pub struct CallScope<'a> {
    pub agent: &'a str,
    pub provider: &'a str,
    pub route: &'a str,
    pub model: &'a str,
}

/// What a call in flight holds against enforced budgets; released when dropped (once its
/// record is priced, or however the call ends).
pub struct Reservation {
    budgets: Arc<Budgets>,
    taken: Vec<(usize, i64)>,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("taken", &self.taken)
            .finish()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        for (index, nanos) in self.taken.drain(..) {
            let mut live = self.budgets.lock(index);
            live.reserved_nanos = live.reserved_nanos.saturating_sub(nanos);
            live.in_flight = live.in_flight.saturating_sub(1);
        }
    }
}

/// What a record added to a budget, so the writer can mark it committed once it is in the
/// ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetHit {
    index: usize,
    period_start: DateTime<Utc>,
    nanos: i64,
    unpriced: i64,
    unread: i64,
}

/// What a call can cost at most, as admission sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorstCase {
    /// A local model without a price: never stopped by a money budget.
    Free,
    /// At most this many nano-dollars.
    Paid(i64),
    /// Meter cannot tell (no price, or priced per unit the request does not state).
    Unknown,
}

/// The local model name the ledger's rollup uses for a call without one.
pub const UNKNOWN_MODEL: &str = "(unknown)";

pub fn period_kind(period: BudgetPeriod) -> PeriodKind {
    match period {
        BudgetPeriod::Day => PeriodKind::Day,
        BudgetPeriod::Week => PeriodKind::Week,
        BudgetPeriod::Month => PeriodKind::Month,
        BudgetPeriod::Quarter => PeriodKind::Quarter,
    }
}

/// The budget's period containing `now`.
pub fn current_period(period: BudgetPeriod, now: DateTime<Utc>, tz: Tz) -> Period {
    Period::current(period_kind(period), now, tz)
        .unwrap_or_else(|| Period::day(now.date_naive(), tz))
}

/// A budget's figures in a period, from the ledger's sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    pub nanos: i64,
    pub unpriced: i64,
    pub unread: i64,
}

/// A budget's spend, unpriced and unread calls in a period, from the ledger's sums.
pub fn spend_in(config: &BudgetConfig, rows: &[ScopeRow]) -> Spend {
    rows.iter()
        .filter(|r| {
            config
                .scope
                .matches(&r.agent, &r.provider, &r.model, &r.route)
        })
        .fold(Spend::default(), |sum, r| Spend {
            nanos: sum.nanos + r.cost_nanos,
            unpriced: sum.unpriced + r.unpriced,
            unread: sum.unread + r.missing,
        })
}

/// The forecast of a period's spend at its end, once `min_elapsed` of it has passed.
pub fn forecast(spend: i64, period: &Period, now: DateTime<Utc>, min_elapsed: f64) -> Option<i64> {
    if !period.is_open(now) {
        return None;
    }
    let elapsed = period.elapsed_fraction(now);
    (elapsed >= min_elapsed.max(1e-6)).then(|| (spend as f64 / elapsed).round() as i64)
}

impl Budgets {
    pub fn new(budgets: &[BudgetConfig], tz: Tz, clock: Clock) -> Budgets {
        let now = clock.now();
        Budgets {
            tz,
            clock,
            enforced: budgets.iter().any(|b| b.enforce),
            items: budgets
                .iter()
                .map(|config| Budget {
                    live: Mutex::new(Live::new(current_period(config.period, now, tz))),
                    config: config.clone(),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether any budget refuses calls (else admission is skipped).
    pub fn any_enforced(&self) -> bool {
        self.enforced
    }

    pub fn configs(&self) -> impl Iterator<Item = &BudgetConfig> {
        self.items.iter().map(|b| &b.config)
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The budget's live figures, moved to the current period if it ended.
    fn lock(&self, index: usize) -> MutexGuard<'_, Live> {
        self.lock_at(index, self.clock.now())
    }

    fn lock_at(&self, index: usize, now: DateTime<Utc>) -> MutexGuard<'_, Live> {
        let mut live = self.items[index]
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now >= live.period.end || now < live.period.start {
            let reserved = live.reserved_nanos;
            let in_flight = live.in_flight;
            *live = Live::new(current_period(
                self.items[index].config.period,
                now,
                self.tz,
            ));
            // Calls in flight keep their reservations into the new period.
            live.reserved_nanos = reserved;
            live.in_flight = in_flight;
        }
        live
    }

    /// Decides whether a call may go out. `worst_case(output_tokens)` prices the call at its
    /// worst; it is asked only when an enforced budget is in scope, with the budget's
    /// `reserve_output_tokens` for calls that set no output cap.
    ///
    /// Free calls always pass. Once a budget's spend plus the reservations in flight reach its
    /// limit, every other call in scope is refused; below it, a call of known worst case
    /// reserves it (capped at the limit), and one of unknown cost passes unreserved unless the
    /// budget says `unpriced = "block"`.
    pub fn admit(
        self: &Arc<Self>,
        call: CallScope<'_>,
        mut worst_case: impl FnMut(u64) -> WorstCase,
    ) -> Result<Option<Reservation>, Blocked> {
        if !self.enforced {
            return Ok(None);
        }
        let mut reservation = Reservation {
            budgets: self.clone(),
            taken: Vec::new(),
        };
        let mut priced: Option<(u64, WorstCase)> = None;
        let now = self.clock.now();
        for (index, budget) in self.items.iter().enumerate() {
            let config = &budget.config;
            if !config.enforce
                || !config
                    .scope
                    .matches(call.agent, call.provider, call.model, call.route)
            {
                continue;
            }
            let cost = match priced {
                Some((tokens, cost)) if tokens == config.reserve_output_tokens => cost,
                _ => {
                    let cost = worst_case(config.reserve_output_tokens);
                    priced = Some((config.reserve_output_tokens, cost));
                    cost
                }
            };
            if cost == WorstCase::Free {
                continue;
            }
            let mut live = self.lock_at(index, now);
            let blocked = |reason, live: &Live| Blocked {
                budget: config.name.clone(),
                reason,
                spend_nanos: live.spend(),
                limit_nanos: config.limit_nanos,
                period_label: live.period.label.clone(),
                period_end: live.period.end,
            };
            if live.spend().saturating_add(live.reserved_nanos) >= config.limit_nanos {
                // Dropping `reservation` releases what earlier budgets reserved.
                return Err(blocked(BlockReason::Spent, &live));
            }
            match cost {
                WorstCase::Free => {}
                WorstCase::Unknown if config.unpriced == Unpriced::Block => {
                    return Err(blocked(BlockReason::Unpriced, &live));
                }
                WorstCase::Unknown => {}
                WorstCase::Paid(nanos) => {
                    // A call cannot hold more than the whole budget (a huge max_tokens).
                    let nanos = nanos.clamp(0, config.limit_nanos);
                    live.reserved_nanos = live.reserved_nanos.saturating_add(nanos);
                    live.in_flight += 1;
                    drop(live);
                    reservation.taken.push((index, nanos));
                }
            }
        }
        Ok((!reservation.taken.is_empty()).then_some(reservation))
    }

    /// Adds a priced record to the budgets it falls in; returns what it added, for
    /// [`Budgets::committed`].
    pub fn observe(&self, record: &LedgerRecord) -> Vec<BudgetHit> {
        let mut hits = Vec::new();
        if self.items.is_empty() {
            return hits;
        }
        let model = record
            .model
            .as_deref()
            .filter(|m| !m.is_empty())
            .unwrap_or(UNKNOWN_MODEL);
        // As the rollup counts them: unpriced (no cost, usage read) and unread (usage missing).
        let unread = i64::from(record.usage_status == UsageStatus::Missing);
        let unpriced = i64::from(record.cost_nanos.is_none() && unread == 0);
        let nanos = record.cost_nanos.unwrap_or(0);
        if nanos == 0 && unpriced == 0 && unread == 0 {
            return hits;
        }
        let now = self.clock.now();
        for (index, budget) in self.items.iter().enumerate() {
            if !budget
                .config
                .scope
                .matches(&record.agent, &record.provider, model, record.route)
            {
                continue;
            }
            let mut live = self.lock_at(index, now);
            if record.ts < live.period.start || record.ts >= live.period.end {
                continue;
            }
            live.observed_nanos += nanos;
            live.observed_unpriced += unpriced;
            live.observed_unread += unread;
            hits.push(BudgetHit {
                index,
                period_start: live.period.start,
                nanos,
                unpriced,
                unread,
            });
        }
        hits
    }

    /// Marks records' budget figures as being in the ledger (the writer calls it after each
    /// commit, on the thread that takes snapshots).
    pub fn committed<'a>(&self, hits: impl IntoIterator<Item = &'a BudgetHit>) {
        for hit in hits {
            let mut live = self.lock(hit.index);
            if live.period.start == hit.period_start {
                live.committed_nanos += hit.nanos;
                live.committed_unpriced += hit.unpriced;
                live.committed_unread += hit.unread;
            }
        }
    }

    /// Takes back what records that never reached the ledger added (rows the database refused,
    /// records lost at shutdown), so the spend keeps agreeing with the ledger.
    pub fn uncount<'a>(&self, hits: impl IntoIterator<Item = &'a BudgetHit>) {
        for hit in hits {
            let mut live = self.lock(hit.index);
            if live.period.start == hit.period_start {
                live.observed_nanos -= hit.nanos;
                live.observed_unpriced -= hit.unpriced;
                live.observed_unread -= hit.unread;
            }
        }
    }

    /// Re-reads every budget's spend from the ledger. Must run where no commit can happen
    /// concurrently (the writer thread, or before it starts).
    pub fn sync(&self, db: &mut crate::ledger::db::Db) -> Result<(), crate::ledger::db::DbError> {
        let mut read: Vec<(Period, Vec<ScopeRow>)> = Vec::new();
        for index in 0..self.items.len() {
            let period = self.lock(index).period.clone();
            let rows = match read.iter().position(|(p, _)| *p == period) {
                Some(i) => &read[i].1,
                None => {
                    let rows = crate::ledger::query::scope_sums(db, &period, false)?;
                    read.push((period.clone(), rows));
                    &read[read.len() - 1].1
                }
            };
            let spend = spend_in(&self.items[index].config, rows);
            let mut live = self.lock(index);
            if live.period == period {
                live.base_nanos = spend.nanos - live.committed_nanos;
                live.base_unpriced = spend.unpriced - live.committed_unpriced;
                live.base_unread = spend.unread - live.committed_unread;
                live.synced = true;
            }
        }
        Ok(())
    }

    /// Every budget's figures now.
    pub fn views(&self) -> Vec<BudgetView> {
        let now = self.clock.now();
        (0..self.items.len())
            .map(|index| {
                let config = &self.items[index].config;
                let live = self.lock(index);
                let spend = live.spend();
                BudgetView {
                    name: config.name.clone(),
                    forecast_nanos: forecast(spend, &live.period, now, config.forecast_min_elapsed),
                    period: live.period.clone(),
                    spend_nanos: spend,
                    limit_nanos: config.limit_nanos,
                    reserved_nanos: live.reserved_nanos,
                    in_flight: live.in_flight,
                    unpriced_calls: live.unpriced(),
                    unread_calls: live.unread(),
                    synced: live.synced,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn budgets(toml: &str, now: &str) -> Arc<Budgets> {
        let config = crate::config::Config::from_toml(toml, "t.toml").unwrap();
        Arc::new(Budgets::new(
            &config.budgets,
            config.timezone,
            Clock::starting_at(at(now)),
        ))
    }

    fn scope<'a>(agent: &'a str, model: &'a str) -> CallScope<'a> {
        CallScope {
            agent,
            provider: "openai",
            route: "direct",
            model,
        }
    }

    fn record(ts: DateTime<Utc>, agent: &str, cost: Option<i64>) -> LedgerRecord {
        let mut record = LedgerRecord::new(ts, agent, "openai", "direct");
        record.model = Some("gpt-4o".to_string());
        record.cost_nanos = cost;
        record
    }

    const ENFORCED: &str = "[[budget]]\nname = \"b\"\nperiod = \"month\"\nlimit_usd = 10.0\nagent = \"a\"\nenforce = true\n";

    #[test]
    fn reservations_fill_the_budget_and_are_released_on_drop() {
        let budgets = budgets(ENFORCED, "2026-11-25T12:00:00Z");
        let two = |_: u64| WorstCase::Paid(2_000_000_000);
        let held: Vec<Reservation> = (0..5)
            .map(|_| budgets.admit(scope("a", "gpt-4o"), two).unwrap().unwrap())
            .collect();
        let blocked = budgets.admit(scope("a", "gpt-4o"), two).unwrap_err();
        assert_eq!(blocked.reason, BlockReason::Spent);
        assert_eq!(blocked.budget, "b");
        assert_eq!(budgets.views()[0].reserved_nanos, 10_000_000_000);
        assert_eq!(budgets.views()[0].in_flight, 5);
        // Out of scope: untouched, and no reservation taken.
        assert!(budgets
            .admit(scope("other", "gpt-4o"), two)
            .unwrap()
            .is_none());
        drop(held);
        assert_eq!(budgets.views()[0].reserved_nanos, 0);
        assert_eq!(budgets.views()[0].in_flight, 0);
        assert!(budgets.admit(scope("a", "gpt-4o"), two).unwrap().is_some());
    }

    #[test]
    fn free_calls_pass_and_unpriced_ones_follow_the_setting() {
        let budgets = budgets(
            &format!("{ENFORCED}\n[[budget]]\nname = \"strict\"\nperiod = \"day\"\nlimit_usd = 1.0\nagent = \"s\"\nenforce = true\nunpriced = \"block\"\n"),
            "2026-11-25T12:00:00Z",
        );
        // Spend the first budget entirely.
        let observed = budgets.observe(&record(
            at("2026-11-25T11:00:00Z"),
            "a",
            Some(10_000_000_000),
        ));
        assert_eq!(observed.len(), 1);
        assert_eq!(budgets.views()[0].spend_nanos, 10_000_000_000);
        assert!(budgets
            .admit(scope("a", "gpt-4o"), |_| WorstCase::Paid(1))
            .is_err());
        // A free (local) call is never blocked by money; once spent, a call of unknown cost is.
        assert!(budgets
            .admit(scope("a", "llama3"), |_| WorstCase::Free)
            .unwrap()
            .is_none());
        assert_eq!(
            budgets
                .admit(scope("a", "dall-e-3"), |_| WorstCase::Unknown)
                .unwrap_err()
                .reason,
            BlockReason::Spent
        );
        // Below the limit, unknown cost passes unreserved ("allow") or is refused ("block").
        assert!(budgets
            .admit(scope("s", "gpt-4o"), |_| WorstCase::Paid(1))
            .unwrap()
            .is_some());
        let refused = budgets
            .admit(scope("s", "mystery"), |_| WorstCase::Unknown)
            .unwrap_err();
        assert_eq!(refused.reason, BlockReason::Unpriced);
        assert_eq!(refused.budget, "strict");
    }

    #[test]
    fn a_huge_worst_case_holds_at_most_the_limit() {
        let budgets = budgets(ENFORCED, "2026-11-25T12:00:00Z");
        let held = budgets
            .admit(scope("a", "gpt-4o"), |_| WorstCase::Paid(i64::MAX))
            .unwrap()
            .unwrap();
        assert_eq!(budgets.views()[0].reserved_nanos, 10_000_000_000);
        assert!(budgets
            .admit(scope("a", "gpt-4o"), |_| WorstCase::Paid(i64::MAX))
            .is_err());
        drop(held);
        assert_eq!(budgets.views()[0].reserved_nanos, 0);
    }

    #[test]
    fn budget_models_match_the_reported_dated_name_and_the_requested_alias() {
        let budgets = budgets(
            "[[budget]]\nname = \"b\"\nperiod = \"month\"\nlimit_usd = 1.0\nmodel = \"gpt-4o\"\nenforce = true\n",
            "2026-11-25T12:00:00Z",
        );
        let mut record = record(at("2026-11-25T11:00:00Z"), "a", Some(2_000_000_000));
        record.model = Some("gpt-4o-2024-08-06".to_string());
        assert_eq!(budgets.observe(&record).len(), 1);
        assert!(budgets
            .admit(scope("a", "gpt-4o"), |_| WorstCase::Paid(1))
            .is_err());
        assert!(budgets
            .admit(scope("a", "gpt-4o-mini"), |_| WorstCase::Paid(1))
            .unwrap()
            .is_none());
    }

    #[test]
    fn unread_calls_are_counted_apart_and_dropped_rows_taken_back() {
        let budgets = budgets(
            "[[budget]]\nname = \"b\"\nperiod = \"month\"\nlimit_usd = 100.0\n",
            "2026-11-25T12:00:00Z",
        );
        let mut unread = record(at("2026-11-25T11:00:00Z"), "a", None);
        unread.usage_status = UsageStatus::Missing;
        budgets.observe(&unread);
        assert_eq!(budgets.views()[0].unread_calls, 1);
        assert_eq!(budgets.views()[0].unpriced_calls, 0);
        let hits = budgets.observe(&record(at("2026-11-25T11:00:00Z"), "a", Some(9)));
        assert_eq!(budgets.views()[0].spend_nanos, 9);
        budgets.uncount(&hits);
        assert_eq!(budgets.views()[0].spend_nanos, 0);
    }

    #[test]
    fn the_output_reserve_is_the_budgets_when_the_call_sets_none() {
        let budgets = budgets(
            "[[budget]]\nname = \"b\"\nperiod = \"month\"\nlimit_usd = 10.0\nenforce = true\nreserve_output_tokens = 777\n",
            "2026-11-25T12:00:00Z",
        );
        let mut asked = Vec::new();
        let _held = budgets
            .admit(scope("a", "m"), |tokens| {
                asked.push(tokens);
                WorstCase::Paid(1)
            })
            .unwrap();
        assert_eq!(asked, [777]);
    }

    #[test]
    fn snapshots_and_commits_never_count_a_call_twice() {
        let budgets = budgets(
            "[[budget]]\nname = \"b\"\nperiod = \"month\"\nlimit_usd = 100.0\n",
            "2026-11-25T12:00:00Z",
        );
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        crate::ledger::schema::migrate(&mut conn).unwrap();
        let mut db = crate::ledger::db::Db::Sqlite(conn);
        // Another meter's call, already in the ledger.
        db.as_sqlite().unwrap().execute(
            "INSERT INTO usage (ts, agent, provider, route, model, status, cost_nanos) VALUES ('2026-11-20T10:00:00.000Z', 'x', 'openai', 'direct', 'gpt-4o', 200, 5)",
            [],
        )
        .unwrap();
        budgets.sync(&mut db).unwrap();
        assert_eq!(budgets.views()[0].spend_nanos, 5);
        assert!(budgets.views()[0].synced);
        // This meter's call: counted at once, before it is written.
        let hits = budgets.observe(&record(at("2026-11-25T11:00:00Z"), "a", Some(7)));
        assert_eq!(budgets.views()[0].spend_nanos, 12);
        budgets.sync(&mut db).unwrap();
        assert_eq!(budgets.views()[0].spend_nanos, 12, "not yet in the ledger");
        // Written, then committed, then re-read: still 12.
        db.as_sqlite().unwrap().execute(
            "INSERT INTO usage (ts, agent, provider, route, model, status, cost_nanos) VALUES ('2026-11-25T11:00:00.000Z', 'a', 'openai', 'direct', 'gpt-4o', 200, 7)",
            [],
        )
        .unwrap();
        budgets.committed(&hits);
        budgets.sync(&mut db).unwrap();
        assert_eq!(budgets.views()[0].spend_nanos, 12);
        // A call of the previous month is not this month's spend.
        assert!(budgets
            .observe(&record(at("2026-10-31T23:00:00Z"), "a", Some(1_000)))
            .is_empty());
        // Unpriced calls are counted apart.
        budgets.observe(&record(at("2026-11-25T11:00:00Z"), "a", None));
        assert_eq!(budgets.views()[0].unpriced_calls, 1);
        assert_eq!(budgets.views()[0].spend_nanos, 12);
    }

    #[test]
    fn a_new_period_starts_from_zero_but_keeps_calls_in_flight() {
        // Two seconds before December in Paris.
        let budgets = budgets(
            &format!("timezone = \"Europe/Paris\"\n{ENFORCED}"),
            "2026-11-30T22:59:58Z",
        );
        budgets.observe(&record(
            at("2026-11-30T22:00:00Z"),
            "a",
            Some(9_000_000_000),
        ));
        let held = budgets
            .admit(scope("a", "gpt-4o"), |_| WorstCase::Paid(500_000_000))
            .unwrap();
        assert_eq!(budgets.views()[0].period.label, "2026-11");
        std::thread::sleep(std::time::Duration::from_millis(2_100));
        let view = &budgets.views()[0];
        assert_eq!(view.period.label, "2026-12");
        assert_eq!(view.spend_nanos, 0);
        assert_eq!(view.reserved_nanos, 500_000_000);
        assert!(
            !view.synced,
            "the new period waits for a ledger read before alerting"
        );
        drop(held);
        assert_eq!(budgets.views()[0].reserved_nanos, 0);
    }

    #[test]
    fn forecasts_wait_for_enough_of_the_period() {
        let period = Period::day(
            chrono::NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(),
            Tz::UTC,
        );
        assert_eq!(
            forecast(6, &period, at("2026-11-25T12:00:00Z"), 0.25),
            Some(12)
        );
        assert_eq!(forecast(6, &period, at("2026-11-25T03:00:00Z"), 0.25), None);
        assert_eq!(forecast(6, &period, at("2026-11-26T03:00:00Z"), 0.25), None);
    }
}
