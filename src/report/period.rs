//! Report periods (SPEC §7): ISO weeks, months, quarters and custom ranges, in the configured
//! time zone, as half-open UTC instants `[start, end)`. Pure: "now" is passed in.

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeriodKind {
    Day,
    Week,
    Month,
    Quarter,
    Custom,
}

impl PeriodKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PeriodKind::Day => "day",
            PeriodKind::Week => "week",
            PeriodKind::Month => "month",
            PeriodKind::Quarter => "quarter",
            PeriodKind::Custom => "custom",
        }
    }
}

/// A period: its label (`2026-W48`, `2026-11`, `2026-Q4`, `2026-11-01..2026-11-30`) and its
/// bounds as UTC instants, start inclusive, end exclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    pub kind: PeriodKind,
    pub label: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// First and last local day, for the previous period and for people.
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
}

/// Local midnight of `day` in `tz`, as UTC. On a day whose midnight does not exist (a DST gap
/// at 00:00), the first instant of the day.
fn local_midnight(tz: Tz, day: NaiveDate) -> DateTime<Utc> {
    let mut time = day.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..4 {
        if let Some(instant) = tz.from_local_datetime(&time).earliest() {
            return instant.with_timezone(&Utc);
        }
        time += Duration::minutes(30);
    }
    Utc.from_utc_datetime(&time)
}

impl Period {
    fn from_days(
        kind: PeriodKind,
        label: String,
        first: NaiveDate,
        last: NaiveDate,
        tz: Tz,
    ) -> Period {
        Period {
            kind,
            label,
            start: local_midnight(tz, first),
            end: local_midnight(tz, last.succ_opt().unwrap_or(last)),
            first_day: first,
            last_day: last,
        }
    }

    /// One local day (budgets with `period = "day"`).
    pub fn day(day: NaiveDate, tz: Tz) -> Period {
        Period::from_days(PeriodKind::Day, day.to_string(), day, day, tz)
    }

    pub fn week(year: i32, week: u32, tz: Tz) -> Option<Period> {
        let monday = NaiveDate::from_isoywd_opt(year, week, chrono::Weekday::Mon)?;
        let sunday = monday + Duration::days(6);
        Some(Period::from_days(
            PeriodKind::Week,
            format!("{year}-W{week:02}"),
            monday,
            sunday,
            tz,
        ))
    }

    pub fn month(year: i32, month: u32, tz: Tz) -> Option<Period> {
        let first = NaiveDate::from_ymd_opt(year, month, 1)?;
        let next = if month == 12 {
            NaiveDate::from_ymd_opt(year + 1, 1, 1)?
        } else {
            NaiveDate::from_ymd_opt(year, month + 1, 1)?
        };
        Some(Period::from_days(
            PeriodKind::Month,
            format!("{year}-{month:02}"),
            first,
            next.pred_opt()?,
            tz,
        ))
    }

    pub fn quarter(year: i32, quarter: u32, tz: Tz) -> Option<Period> {
        if !(1..=4).contains(&quarter) {
            return None;
        }
        let first = NaiveDate::from_ymd_opt(year, (quarter - 1) * 3 + 1, 1)?;
        let next = if quarter == 4 {
            NaiveDate::from_ymd_opt(year + 1, 1, 1)?
        } else {
            NaiveDate::from_ymd_opt(year, quarter * 3 + 1, 1)?
        };
        Some(Period::from_days(
            PeriodKind::Quarter,
            format!("{year}-Q{quarter}"),
            first,
            next.pred_opt()?,
            tz,
        ))
    }

    /// `since` to `until`, both days included.
    pub fn custom(since: NaiveDate, until: NaiveDate, tz: Tz) -> Option<Period> {
        (since <= until).then(|| {
            Period::from_days(
                PeriodKind::Custom,
                format!("{since}..{until}"),
                since,
                until,
                tz,
            )
        })
    }

    /// The period of the same kind that contains `now`.
    pub fn current(kind: PeriodKind, now: DateTime<Utc>, tz: Tz) -> Option<Period> {
        let today = now.with_timezone(&tz).date_naive();
        match kind {
            PeriodKind::Day => Some(Period::day(today, tz)),
            PeriodKind::Week => {
                let iso = today.iso_week();
                Period::week(iso.year(), iso.week(), tz)
            }
            PeriodKind::Month => Period::month(today.year(), today.month(), tz),
            PeriodKind::Quarter => Period::quarter(today.year(), (today.month() - 1) / 3 + 1, tz),
            PeriodKind::Custom => Period::custom(today, today, tz),
        }
    }

    /// Parses `2026-W48`, `2026-11` or `2026-Q4` for `kind`.
    pub fn parse(kind: PeriodKind, text: &str, tz: Tz) -> Option<Period> {
        let text = text.trim();
        match kind {
            PeriodKind::Day => NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()
                .map(|day| Period::day(day, tz)),
            PeriodKind::Week => {
                let (year, week) = text.split_once("-W").or_else(|| text.split_once("-w"))?;
                Period::week(year.parse().ok()?, week.parse().ok()?, tz)
            }
            PeriodKind::Month => {
                let (year, month) = text.split_once('-')?;
                Period::month(year.parse().ok()?, month.parse().ok()?, tz)
            }
            PeriodKind::Quarter => {
                let (year, quarter) = text.split_once("-Q").or_else(|| text.split_once("-q"))?;
                Period::quarter(year.parse().ok()?, quarter.parse().ok()?, tz)
            }
            PeriodKind::Custom => None,
        }
    }

    /// The period just before this one, of the same kind (a custom range: the same number of
    /// days before it).
    pub fn previous(&self, tz: Tz) -> Option<Period> {
        let day_before = self.first_day.pred_opt()?;
        match self.kind {
            PeriodKind::Day => Some(Period::day(day_before, tz)),
            PeriodKind::Week => {
                let iso = day_before.iso_week();
                Period::week(iso.year(), iso.week(), tz)
            }
            PeriodKind::Month => Period::month(day_before.year(), day_before.month(), tz),
            PeriodKind::Quarter => {
                Period::quarter(day_before.year(), (day_before.month() - 1) / 3 + 1, tz)
            }
            PeriodKind::Custom => {
                let days = (self.last_day - self.first_day).num_days();
                Period::custom(
                    day_before.checked_sub_signed(Duration::days(days))?,
                    day_before,
                    tz,
                )
            }
        }
    }

    /// The `period` object of the report and review JSON (SPEC §7).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind.as_str(),
            "label": self.label,
            "start": self.start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "end": self.end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    }

    /// Whether `now` falls inside the period (it is still open).
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        self.start <= now && now < self.end
    }

    /// The share of the period elapsed at `now`, in (0, 1].
    pub fn elapsed_fraction(&self, now: DateTime<Utc>) -> f64 {
        let total = (self.end - self.start).num_milliseconds().max(1) as f64;
        let elapsed = (now - self.start).num_milliseconds().clamp(1, total as i64) as f64;
        elapsed / total
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn periods_and_their_bounds() {
        let utc_tz = chrono_tz::UTC;
        let paris = chrono_tz::Europe::Paris;
        let cases = [
            (
                Period::parse(PeriodKind::Month, "2026-11", utc_tz),
                "2026-11",
                "2026-11-01T00:00:00Z",
                "2026-12-01T00:00:00Z",
            ),
            (
                Period::parse(PeriodKind::Month, "2026-12", utc_tz),
                "2026-12",
                "2026-12-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            // ISO week 1 of 2026 starts on Monday 2025-12-29.
            (
                Period::parse(PeriodKind::Week, "2026-W01", utc_tz),
                "2026-W01",
                "2025-12-29T00:00:00Z",
                "2026-01-05T00:00:00Z",
            ),
            (
                Period::parse(PeriodKind::Week, "2020-W53", utc_tz),
                "2020-W53",
                "2020-12-28T00:00:00Z",
                "2021-01-04T00:00:00Z",
            ),
            (
                Period::parse(PeriodKind::Quarter, "2026-Q4", utc_tz),
                "2026-Q4",
                "2026-10-01T00:00:00Z",
                "2027-01-01T00:00:00Z",
            ),
            // Paris: October 2026 starts at UTC+2 and ends at UTC+1 (DST ends 2026-10-25).
            (
                Period::parse(PeriodKind::Month, "2026-10", paris),
                "2026-10",
                "2026-09-30T22:00:00Z",
                "2026-10-31T23:00:00Z",
            ),
            (
                Period::custom(
                    NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
                    NaiveDate::from_ymd_opt(2026, 11, 30).unwrap(),
                    utc_tz,
                ),
                "2026-11-01..2026-11-30",
                "2026-11-01T00:00:00Z",
                "2026-12-01T00:00:00Z",
            ),
        ];
        for (period, label, start, end) in cases {
            let period = period.unwrap();
            assert_eq!(
                (period.label.as_str(), period.start, period.end),
                (label, utc(start), utc(end)),
                "{label}"
            );
        }
        assert!(Period::parse(PeriodKind::Week, "2026-W54", utc_tz).is_none());
        assert!(Period::parse(PeriodKind::Quarter, "2026-Q5", utc_tz).is_none());
        assert!(Period::parse(PeriodKind::Month, "2026-13", utc_tz).is_none());
    }

    #[test]
    fn previous_and_current() {
        let tz = chrono_tz::UTC;
        let previous = |kind, text| {
            Period::parse(kind, text, tz)
                .unwrap()
                .previous(tz)
                .unwrap()
                .label
        };
        assert_eq!(previous(PeriodKind::Month, "2026-01"), "2025-12");
        assert_eq!(previous(PeriodKind::Week, "2026-W01"), "2025-W52");
        assert_eq!(previous(PeriodKind::Quarter, "2026-Q1"), "2025-Q4");
        let custom = Period::custom(
            NaiveDate::from_ymd_opt(2026, 11, 8).unwrap(),
            NaiveDate::from_ymd_opt(2026, 11, 14).unwrap(),
            tz,
        )
        .unwrap();
        assert_eq!(custom.previous(tz).unwrap().label, "2026-11-01..2026-11-07");
        let now = utc("2026-11-25T10:00:00Z");
        assert_eq!(
            Period::current(PeriodKind::Week, now, tz).unwrap().label,
            "2026-W48"
        );
        assert_eq!(
            Period::current(PeriodKind::Quarter, now, tz).unwrap().label,
            "2026-Q4"
        );
        let month = Period::current(PeriodKind::Month, now, tz).unwrap();
        assert!(month.is_open(now));
        // 24 days and 10 hours of 30 days.
        assert!((month.elapsed_fraction(now) - (24.0 * 24.0 + 10.0) / (30.0 * 24.0)).abs() < 1e-9);
        // In Auckland it is already the 25th at 10:00 UTC... and still November.
        let auckland = Period::current(
            PeriodKind::Month,
            utc("2026-11-30T12:00:00Z"),
            chrono_tz::Pacific::Auckland,
        )
        .unwrap();
        assert_eq!(auckland.label, "2026-12");
    }
}
