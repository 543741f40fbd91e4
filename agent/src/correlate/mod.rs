//! Correlation: from events to incidents that say why a proxy failed to reach its upstream.

pub mod engine;
pub mod explain;
pub mod history;
pub mod incident;
pub mod listeners;
pub mod proxy;
pub mod task;

#[cfg(test)]
mod tests;
