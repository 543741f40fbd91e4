//! Fuzzing with cargo-fuzz (libFuzzer, nightly): the ring-record decoder, the config loader
//! and the API's query parsing (`fuzz/fuzz_targets/`). `cargo xtask test` runs each target
//! briefly over the committed corpus; `cargo xtask fuzz` runs longer and grows and
//! minimises that corpus.

use std::fs;
use std::mem::size_of;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use agent_common::event::{EventKind, Record};
use agent_common::{connect, listener, process, tcp};
use anyhow::{bail, Context, Result};

use crate::cmd;

/// The fuzz targets, in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &["decode", "config", "api_query"];

/// How each run uses the committed corpus.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `cargo xtask test`: new inputs go to a scratch directory, the checkout stays clean.
    Check,
    /// `cargo xtask fuzz`: new inputs go into `fuzz/corpus/<target>`, minimised afterwards.
    Grow,
}

/// Builds the targets, then fuzzes each for `seconds` (after running its whole corpus once).
/// Fails on the first crash, naming the input that caused it.
pub fn run(root: &Path, targets: &[String], seconds: u32, mode: Mode) -> Result<()> {
    let fuzz_dir = root.join("fuzz");
    for target in targets {
        if !TARGETS.contains(&target.as_str()) {
            bail!("no fuzz target {target:?} (known: {})", TARGETS.join(", "));
        }
    }
    let seeds = fuzz_dir.join("target/seeds/decode");
    write_decode_seeds(&seeds)?;
    cmd::run(
        "building the fuzz targets (cargo fuzz build)",
        cargo_fuzz(&fuzz_dir).arg("build"),
    )?;
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        // libFuzzer writes new inputs to the first directory and only reads the others.
        let writable = match mode {
            Mode::Grow => corpus.clone(),
            Mode::Check => {
                let scratch = fuzz_dir.join("target/new-inputs").join(target);
                let _ = fs::remove_dir_all(&scratch);
                fs::create_dir_all(&scratch)
                    .with_context(|| format!("cannot create {}", scratch.display()))?;
                scratch
            }
        };
        // The binary `cargo fuzz build` made, run directly: `cargo fuzz run` would build
        // again first, and the agent's sources may have changed meanwhile.
        let artifacts = fuzz_dir.join("artifacts").join(target);
        fs::create_dir_all(&artifacts)
            .with_context(|| format!("cannot create {}", artifacts.display()))?;
        let mut run = Command::new(binary(&fuzz_dir, target));
        run.current_dir(&fuzz_dir)
            // What cargo fuzz sets: the sanitizer runtime and libstd both define globals
            // that ASan would otherwise report as an ODR violation.
            .env("ASAN_OPTIONS", "detect_odr_violation=0")
            .args([
                format!("-artifact_prefix={}/", artifacts.display()),
                format!("-max_total_time={seconds}"),
                // An input that takes seconds is a hang worth failing on, not a slow case.
                "-timeout=10".into(),
            ])
            .arg(&writable);
        if mode == Mode::Check {
            run.arg(&corpus);
        }
        if target == "decode" {
            run.arg(&seeds);
        }
        let started = SystemTime::now();
        let what = format!("fuzzing {target} for {seconds} s");
        if let Err(err) = cmd::run(&what, &mut run) {
            let found = new_files(&artifacts, started);
            if found.is_empty() {
                return Err(err);
            }
            let inputs: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "fuzz target {target} crashed; the input is in {} (reproduce: cd fuzz && \
                 AYA_BUILD_SKIP=1 cargo +nightly fuzz run {target} {}; once fixed, copy it \
                 into fuzz/corpus/{target}/ as a regression)",
                inputs.join(", "),
                inputs[0]
            );
        }
        if mode == Mode::Grow {
            minimise(&fuzz_dir, target, &corpus)?;
        }
    }
    Ok(())
}

/// Like `cargo fuzz cmin`, with the binary already built and libFuzzer's smaller set-cover
/// merge: the fewest inputs of `corpus` that keep its coverage, merged into it afresh.
fn minimise(fuzz_dir: &Path, target: &str, corpus: &Path) -> Result<()> {
    let previous = fuzz_dir.join("target/cmin").join(target);
    let _ = fs::remove_dir_all(&previous);
    fs::create_dir_all(previous.parent().unwrap_or(fuzz_dir))?;
    fs::rename(corpus, &previous)
        .with_context(|| format!("cannot move {} aside", corpus.display()))?;
    fs::create_dir_all(corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
    cmd::run(
        &format!("minimising the {target} corpus (libFuzzer -set_cover_merge=1)"),
        Command::new(binary(fuzz_dir, target))
            .env("ASAN_OPTIONS", "detect_odr_violation=0")
            .arg("-set_cover_merge=1")
            .arg(corpus)
            .arg(&previous),
    )
}

/// `cargo fuzz` on nightly (it needs `-Zsanitizer`), from the fuzz workspace, with the
/// kernel programs not built: the targets only use the agent's userspace code.
fn cargo_fuzz(fuzz_dir: &Path) -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo", "fuzz"])
        .current_dir(fuzz_dir)
        .env("AYA_BUILD_SKIP", "1");
    command
}

/// Where `cargo fuzz build` puts `target` (release, for the host).
fn binary(fuzz_dir: &Path, target: &str) -> PathBuf {
    fuzz_dir
        .join("target")
        .join(format!("{}-unknown-linux-gnu", std::env::consts::ARCH))
        .join("release")
        .join(target)
}

/// Files in `dir` modified since `since` (the crash, leak or timeout libFuzzer just wrote).
fn new_files(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .filter(|entry| {
            entry
                .metadata()
                .and_then(|meta| meta.modified())
                .is_ok_and(|modified| modified >= since)
        })
        .map(|entry| entry.path())
        .collect();
    files.sort();
    files
}

/// The size of each kind's record. The match is exhaustive, so a new kind does not build
/// until it has seeds.
fn record_size(kind: EventKind) -> usize {
    fn size<T: Record>() -> usize {
        size_of::<T>()
    }
    match kind {
        EventKind::TcpConnectFailure => size::<connect::TcpConnectFailure>(),
        EventKind::ConnectSyscallError => size::<connect::ConnectSyscallError>(),
        EventKind::TcpResetReceived => size::<tcp::TcpResetReceived>(),
        EventKind::TcpResetSent => size::<tcp::TcpResetSent>(),
        EventKind::TcpSynRetransmit => size::<tcp::TcpSynRetransmit>(),
        EventKind::TcpSynAckRetransmit => size::<tcp::TcpSynAckRetransmit>(),
        EventKind::ListenerOpened => size::<listener::ListenerOpened>(),
        EventKind::ListenerClosed => size::<listener::ListenerClosed>(),
        EventKind::ListenCall => size::<listener::ListenCall>(),
        EventKind::ProcessExec => size::<process::ProcessExec>(),
        EventKind::ProcessExit => size::<process::ProcessExit>(),
        EventKind::Signal => size::<process::Signal>(),
        EventKind::OomKill => size::<process::OomKill>(),
        EventKind::UpstreamEnd => size::<connect::UpstreamEnd>(),
    }
}

/// A record of `len` bytes of `fill` whose header says `kind` (little-endian, as the
/// kernel writes it on the hosts the agent runs on).
fn record(kind: u32, len: usize, fill: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut bytes: Vec<u8> = (0..len).map(fill).collect();
    let n = bytes.len().min(4);
    bytes[..n].copy_from_slice(&kind.to_le_bytes()[..n]);
    bytes
}

/// The decoder's seeds, from the current record layouts (so they never go stale when a
/// layout changes): for every kind a zeroed record, one of counting bytes, one of 0xff, one
/// byte short and one with trailing bytes; then records of unknown kinds and a bare header.
/// Regenerated on every run, into a directory that is not committed.
fn write_decode_seeds(dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut seeds: Vec<(String, Vec<u8>)> = Vec::new();
    for kind in EventKind::ALL {
        let (number, name, len) = (kind as u32, kind.name(), record_size(kind));
        seeds.push((format!("{name}-zero"), record(number, len, |_| 0)));
        seeds.push((format!("{name}-count"), record(number, len, |i| i as u8)));
        seeds.push((format!("{name}-ones"), record(number, len, |_| 0xff)));
        seeds.push((format!("{name}-short"), record(number, len - 1, |_| 0)));
        seeds.push((
            format!("{name}-long"),
            record(number, len + 16, |i| i as u8),
        ));
    }
    let header = size_of::<agent_common::event::EventHeader>();
    for unknown in [0, 15, 255, u32::MAX] {
        seeds.push((
            format!("unknown-{unknown}"),
            record(unknown, header + 64, |_| 0),
        ));
    }
    seeds.push(("header-only".into(), record(1, header, |_| 0)));
    seeds.push(("empty".into(), Vec::new()));
    for (name, bytes) in seeds {
        let path = dir.join(name);
        fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes the seed directory even when an assertion fails.
    struct Removed(PathBuf);

    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn every_kind_has_seeds_that_say_their_kind() {
        let dir = Removed(std::env::temp_dir().join(format!("xtask-seeds-{}", std::process::id())));
        let dir = &dir.0;
        write_decode_seeds(dir).unwrap();
        for kind in EventKind::ALL {
            let seed = fs::read(dir.join(format!("{}-zero", kind.name()))).unwrap();
            assert_eq!(seed.len(), record_size(kind));
            assert_eq!(
                u32::from_le_bytes(seed[..4].try_into().unwrap()),
                kind as u32
            );
            let short = fs::read(dir.join(format!("{}-short", kind.name()))).unwrap();
            assert_eq!(short.len(), record_size(kind) - 1);
        }
    }
}
