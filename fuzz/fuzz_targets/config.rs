//! The config loader on arbitrary text: `Config::parse` (TOML, then the bounds and the
//! probe pairing) returns a config or an error, never a panic; what it accepts can be used
//! by the agent's start-up (its probe set and signal mask).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use why502::config::Config;

fuzz_target!(|text: &[u8]| {
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    if let Ok(config) = Config::parse(text, Path::new("/etc/why502/why502.toml")) {
        let _ = config.enabled_probes();
        let _ = config.signal_mask();
    }
});
