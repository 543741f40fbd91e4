//! Everything that publishes on the bus: the kernel programs ([`probes`] loads them and
//! hands out their maps), the event ring buffer ([`ring`]: [`decode`], then [`enrich`]), the
//! pollers of the kernel's aggregate maps ([`kernel_maps`]) and host sampling ([`host`]).

pub mod conntrack;
pub mod decode;
pub mod enrich;
pub mod host;
pub mod kernel_maps;
pub mod kubernetes;
pub mod probes;
pub mod ring;
