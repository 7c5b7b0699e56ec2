//! `/metrics` with 50 agents x 30 models of traffic: the time to render one scrape and its
//! size. Run: `cargo bench --bench metrics`.
#![allow(clippy::unwrap_used)]

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use meter::ledger::LedgerRecord;
use meter::metrics::Metrics;

fn scrape(c: &mut Criterion) {
    let metrics = Metrics::new().unwrap();
    for agent in 0..50 {
        for model in 0..30 {
            let mut record =
                LedgerRecord::new(Utc::now(), &format!("agent-{agent}"), "openai", "direct");
            record.model = Some(format!("model-{model}"));
            record.usage.input_tokens = 1000;
            record.usage.output_tokens = 500;
            record.cost_nanos = Some(1_234_567);
            record.latency_ms = 800;
            record.ttft_ms = Some(200);
            metrics.observe(&record);
        }
    }
    let body = metrics.render();
    let series = String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .count();
    println!(
        "/metrics with 50 agents x 30 models: {} bytes, {} series",
        body.len(),
        series
    );
    c.bench_function("render_50_agents_x_30_models", |b| {
        b.iter(|| metrics.render())
    });
}

criterion_group!(benches, scrape);
criterion_main!(benches);
