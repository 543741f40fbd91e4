//! A full ring buffer loses events, and says exactly how many.

mod common;

use std::net::TcpStream;

use common::closed_port;
use why502::{
    config::Config,
    model::event::EventDetail,
    sources::{
        decode::{decode, Decoded},
        probes::ProbeSet,
    },
};

#[test]
fn drops_are_counted_exactly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: not root: kernel tests need root to load eBPF programs");
        return;
    }
    let mut config = Config::default();
    config.probes.ring_buffer_bytes = 65536;
    let mut probes = ProbeSet::load(&config).expect("probes load");
    // Nobody reads the ring while the failures happen: it fills after a few hundred.
    let mut maps = probes.take_maps().unwrap();
    let ring = &mut maps.events;
    let port = closed_port();
    const ATTEMPTS: u64 = 2000;
    for _ in 0..ATTEMPTS {
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    let mut delivered = 0;
    while let Some(record) = ring.next() {
        if let Ok(Decoded::Event(event)) = decode(&record) {
            if matches!(&event.detail, EventDetail::TcpConnectFailure(f) if f.dst.port() == port) {
                delivered += 1;
            }
        }
    }
    let dropped = maps.counters.read().unwrap().dropped["tcp_connect_failure"];
    assert!(dropped > 0, "a 64 KiB ring should have overflowed");
    assert!(delivered > 0);
    assert_eq!(
        delivered + dropped,
        ATTEMPTS,
        "delivered {delivered} + dropped {dropped}"
    );
}
