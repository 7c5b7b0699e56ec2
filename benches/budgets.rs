//! What budget tracking adds to a call: admission (scope matching, the worst-case price,
//! a reservation) and settling (the cost added to every budget in scope), with 0, 1 and 100
//! budgets configured. Run: `cargo bench --bench budgets`.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion};
use meter::budget::{Budgets, CallScope};
use meter::clock::Clock;
use meter::ledger::writer::Pricer;
use meter::ledger::LedgerRecord;

/// `count` budgets: one over everything (enforced), the rest one per agent, a few per model.
fn config(count: usize) -> meter::config::Config {
    let mut toml = String::new();
    for i in 0..count {
        let scope = match i {
            0 => String::new(),
            i if i % 10 == 0 => format!("model = \"gpt-4o*\"\nagent = \"agent-{i}\"\n"),
            i => format!("agent = \"agent-{i}\"\n"),
        };
        toml.push_str(&format!(
            "[[budget]]\nname = \"b{i}\"\nperiod = \"month\"\nlimit_usd = 1000000.0\nenforce = {}\n{scope}\n",
            i % 2 == 0
        ));
    }
    meter::config::Config::from_toml(&toml, "bench.toml").unwrap()
}

fn per_call(c: &mut Criterion) {
    let mut group = c.benchmark_group("budget_per_call");
    for count in [0usize, 1, 100] {
        let config = config(count);
        let clock = Clock::starting_at(Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap());
        let budgets = Arc::new(Budgets::new(&config.budgets, config.timezone, clock));
        let pricer = Pricer::new(&config, config.rate_table().unwrap());
        let date = clock.now().date_naive();
        let mut record = LedgerRecord::new(clock.now(), "agent-20", "openai", "direct");
        record.model = Some("gpt-4o-2024-08-06".to_string());
        record.cost_nanos = Some(12_345_000);
        group.bench_function(format!("{count}_budgets"), |b| {
            b.iter(|| {
                let scope = CallScope {
                    agent: "agent-20",
                    provider: "openai",
                    route: "direct",
                    model: "gpt-4o-2024-08-06",
                };
                let reservation = budgets
                    .admit(scope, |output| {
                        pricer.worst_case(
                            "openai",
                            Some("gpt-4o-2024-08-06"),
                            date,
                            500,
                            output,
                            &meter::usage::Quantities::default(),
                        )
                    })
                    .unwrap();
                let hits = budgets.observe(&record);
                drop(reservation);
                hits
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_call);
criterion_main!(benches);
