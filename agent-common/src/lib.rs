//! Types shared by why502's kernel programs and its userspace agent.
//!
//! Everything here is `#[repr(C)]` and plain old data: the kernel writes these structs into
//! the ring buffer and maps, the agent reads the same bytes back. One file per domain; the
//! userspace-only parts (`aya::Pod` impls) sit behind the `user` feature.
#![no_std]

pub mod budget;
pub mod config;
pub mod connect;
pub mod event;
pub mod header;
pub mod http;
mod layout;
pub mod listener;
pub mod net;
pub mod process;
pub mod proxy;
pub mod tcp;

/// Length of a task's `comm` in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Marks an optional offset in [`config`] as unavailable on the running kernel.
pub const NO_OFFSET: u16 = u16::MAX;

/// Implements `aya::Pod` for types that are plain old data.
#[cfg(feature = "user")]
macro_rules! impl_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            // SAFETY: the type is #[repr(C)], Copy, and every bit pattern is a valid value.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
#[cfg(feature = "user")]
pub(crate) use impl_pod;
