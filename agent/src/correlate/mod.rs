//! Correlation: from events to incidents that say why a proxy failed to reach its
//! upstream. [`task`] runs the [`engine`] on the bus; the engine learns the host into
//! [`knowledge`], detects [`spike`]s, pairs 5xx [`responses`] and asks [`explain`] why.

pub mod addresses;
pub mod engine;
pub mod explain;
pub mod history;
pub mod knowledge;
pub mod listeners;
pub mod proxy_key;
pub mod responses;
pub mod spike;
pub mod task;

#[cfg(test)]
mod namespace_tests;
#[cfg(test)]
mod tests;
