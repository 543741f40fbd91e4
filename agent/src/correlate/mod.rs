//! Correlation: from events to incidents that say why a proxy failed.

pub mod incident;
