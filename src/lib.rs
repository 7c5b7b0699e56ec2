//! meter: a usage-metering and spend-monitoring sidecar for AI agents.
//!
//! The data path: the proxy's listener accepts a call, the router picks the provider and the
//! agent, the forwarder sends the request upstream untouched (hop-by-hop and `X-Meter-*` headers
//! aside), and the tee streams the response back while a usage parser reads a copy. When the
//! body ends (or fails, or the client leaves) the call's context becomes one ledger record,
//! counted in the metrics and queued to the writer thread, which commits it to SQLite in batches.
//! See ARCHITECTURE.md.

pub mod admin;
pub mod alert;
pub mod app;
pub mod budget;
pub mod ca;
pub mod cli;
pub mod clock;
pub mod config;
pub mod ledger;
pub mod mail;
pub mod metrics;
pub mod money;
pub mod pricing;
pub mod proxy;
pub mod report;
pub mod review;
pub mod usage;
