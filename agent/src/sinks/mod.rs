//! Everything that subscribes: the incident [`store`], the local [`api`] and the
//! Prometheus [`metrics`].

pub mod api;
pub mod http_server;
pub mod metrics;
pub mod store;
