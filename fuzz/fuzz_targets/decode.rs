//! The ring-record decoder on arbitrary bytes: whatever the kernel (or a corrupted ring)
//! hands over, `decode` answers a value or an error, never a panic. What decodes is also
//! rendered as `--print-events` does, so the decoded strings and numbers are usable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use why502::sources::decode::{decode, Decoded};

fuzz_target!(|record: &[u8]| {
    if let Ok(Decoded::Event(event)) = decode(record) {
        serde_json::to_string(&event).expect("a decoded event renders as JSON");
    }
});
