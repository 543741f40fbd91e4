//! The vocabulary every stage shares: what the kernel and the host saw ([`event`]), the
//! kinds of upstream failure ([`failure`]), and what correlation makes of them
//! ([`incident`]). Plain data, no I/O.

pub mod clock;
pub mod event;
pub mod failure;
pub mod identity;
pub mod incident;
pub mod namespace;
pub mod proxy;
pub mod signal;
pub mod text;
