//! A USD counter kept in integer nano-dollars and exported as dollars. Summing the dollars as
//! floats call by call would give a total that differs in its last bits from the ledger's exact
//! sum; after a restart (which starts the counter from the ledger) the value could then be a
//! hair lower than before, which Prometheus reads as a counter reset, and `increase()` would
//! count the whole total again. Integers make the value after a restart exactly the value before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, LabelPair, Metric, MetricFamily, MetricType};

pub struct UsdCounterVec {
    desc: Desc,
    labels: Vec<String>,
    values: RwLock<HashMap<Vec<String>, Arc<AtomicI64>>>,
}

impl UsdCounterVec {
    pub fn new(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<UsdCounterVec> {
        let labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
        Ok(UsdCounterVec {
            desc: Desc::new(
                name.to_string(),
                help.to_string(),
                labels.clone(),
                HashMap::new(),
            )?,
            labels,
            values: RwLock::new(HashMap::new()),
        })
    }

    /// Adds `nanos` (1e-9 USD) to the series with these label values (in the order given to
    /// `new`).
    pub fn add(&self, values: &[&str], nanos: i64) {
        if let Ok(map) = self.values.read() {
            if let Some(cell) = map.get(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>()) {
                cell.fetch_add(nanos, Ordering::Relaxed);
                return;
            }
        }
        if let Ok(mut map) = self.values.write() {
            map.entry(values.iter().map(|v| v.to_string()).collect())
                .or_insert_with(|| Arc::new(AtomicI64::new(0)))
                .fetch_add(nanos, Ordering::Relaxed);
        }
    }

    /// The series' value in nano-dollars (tests).
    pub fn nanos(&self, values: &[&str]) -> Option<i64> {
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        self.values
            .read()
            .ok()?
            .get(&key)
            .map(|cell| cell.load(Ordering::Relaxed))
    }
}

impl Collector for UsdCounterVec {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut family = MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::COUNTER);
        let Ok(map) = self.values.read() else {
            return vec![family];
        };
        let mut metrics: Vec<Metric> = map
            .iter()
            .map(|(values, cell)| {
                let mut pairs: Vec<LabelPair> = self
                    .labels
                    .iter()
                    .zip(values)
                    .map(|(name, value)| {
                        let mut pair = LabelPair::default();
                        pair.set_name(name.clone());
                        pair.set_value(value.clone());
                        pair
                    })
                    .collect();
                pairs.sort_by(|a, b| a.name().cmp(b.name()));
                let mut counter = Counter::default();
                counter.set_value(cell.load(Ordering::Relaxed) as f64 / 1e9);
                let mut metric = Metric::default();
                metric.set_label(pairs);
                metric.set_counter(counter);
                metric
            })
            .collect();
        metrics.sort_by(|a, b| {
            let key = |m: &Metric| {
                m.get_label()
                    .iter()
                    .map(|p| p.value().to_string())
                    .collect::<Vec<_>>()
            };
            key(a).cmp(&key(b))
        });
        family.set_metric(metrics);
        vec![family]
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
