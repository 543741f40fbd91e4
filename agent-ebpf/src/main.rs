//! why502's kernel programs: tracepoints on TCP connects, resets, retransmits, listeners,
//! `connect(2)`/`listen(2)`, process exec/exit, signals and OOM kills.
//!
//! Hot paths (every TCP state change, every `connect(2)`) only touch maps; the ring buffer
//! carries the rare events: failures, resets, exits, kills, and proxies' upstream
//! connections that ended without a response.
#![no_std]
#![no_main]

mod connect;
mod http;
mod listen;
mod maps;
mod process;
mod read;
mod sock;
mod tcp;
mod upstream;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that reaches here; there is nothing to unwind to.
    loop {}
}
