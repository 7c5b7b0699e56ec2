//! Budgets and alerts.
pub mod email;
