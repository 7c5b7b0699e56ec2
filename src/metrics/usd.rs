//! A USD counter kept in integer nano-dollars and exported as dollars. Summing the dollars as
//! floats call by call would give a total that differs in its last bits from the ledger's exact
//! sum; after a restart (which starts the counter from the ledger) the value could then be a
//! hair lower than before, which Prometheus reads as a counter reset, and `increase()` would
//! count the whole total again. Integers make the value after a restart exactly the value before.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, Opts};

/// An integer counter of nano-dollars (prometheus' own vector: label lookups without
/// allocation), exported divided by 1e9.
pub struct UsdCounterVec {
    nanos: IntCounterVec,
}

impl UsdCounterVec {
    pub fn new(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<UsdCounterVec> {
        Ok(UsdCounterVec {
            nanos: IntCounterVec::new(Opts::new(name, help), labels)?,
        })
    }

    /// Adds `nanos` (1e-9 USD; negative amounts are ignored) to the series with these label
    /// values (in the order given to `new`).
    pub fn add(&self, values: &[&str], nanos: i64) {
        self.nanos
            .with_label_values(values)
            .inc_by(u64::try_from(nanos).unwrap_or(0));
    }

    /// The series' value in nano-dollars (tests).
    pub fn nanos(&self, values: &[&str]) -> Option<i64> {
        self.nanos
            .get_metric_with_label_values(values)
            .ok()
            .and_then(|counter| i64::try_from(counter.get()).ok())
    }
}

impl Collector for UsdCounterVec {
    fn desc(&self) -> Vec<&Desc> {
        self.nanos.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families = self.nanos.collect();
        for family in &mut families {
            for metric in family.mut_metric() {
                let mut counter = metric.get_counter().clone();
                counter.set_value(counter.get_value() / 1e9);
                metric.set_counter(counter);
            }
        }
        families
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_total_after_a_restart_is_exactly_the_total_before() {
        let before = UsdCounterVec::new("t_usd_total", "t", &["a"]).unwrap();
        let mut sum = 0i64;
        for i in 0..10_000i64 {
            let nanos = 1_234_567 + i * 7_919;
            before.add(&["x"], nanos);
            sum += nanos;
        }
        let after = UsdCounterVec::new("t_usd_total", "t", &["a"]).unwrap();
        after.add(&["x"], sum);
        let value = |c: &UsdCounterVec| c.collect()[0].get_metric()[0].get_counter().get_value();
        assert_eq!(value(&before).to_bits(), value(&after).to_bits());
        assert_eq!(before.nanos(&["x"]), Some(sum));
    }
}
