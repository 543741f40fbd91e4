//! Idempotent set-up of everything needed to build, run and test why502.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Result};

use crate::cmd;

/// What the set-up is for; testing and benchmarking need more packages than running.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Run,
    Test,
    Bench,
}

/// Debian packages `cargo xtask run` needs (`ip`, `ss`, `ps`, `sysctl`).
const RUN_PACKAGES: &[&str] = &["iproute2", "procps"];

/// Debian packages `cargo xtask test` needs: the run set plus a real nginx, the tools the
/// end-to-end tests drive it with, Prometheus (the server and promtool) to check the
/// metrics and alert rules against, and the lab's other real servers: HAProxy, and php-fpm
/// behind nginx (`php-fpm` depends on the release's own, `php8.2-fpm` on Debian 12; the lab
/// runs them with configurations of its own, never their packaged services).
const TEST_PACKAGES: &[&str] = &[
    "nginx-light",
    "haproxy",
    "php-fpm",
    "iptables",
    "iproute2",
    "procps",
    "util-linux",
    "curl",
    "psmisc",
    "prometheus",
    // The unit's test (tests/tests/unit_file/): systemd-analyze, and strace for its calls.
    "systemd",
    "strace",
    // The package's test (tests/tests/package.rs): Debian policy checks, `man -l`.
    "lintian",
    "man-db",
    // The DaemonSet's test (tests/tests/kubernetes.rs): a venv for kubernetes-validate.
    "python3-venv",
];

/// Debian packages `cargo xtask bench` needs: the load generator, the reference tracer, a
/// real nginx to proxy through, `ps`/`sysctl`, and bpftool to name the kernel programs in
/// the profile.
const BENCH_PACKAGES: &[&str] = &["wrk", "bpftrace", "nginx-light", "procps", "bpftool"];

/// Newer bpf-linker releases need a system LLVM 21+, which Debian 12 does not have.
const BPF_LINKER_VERSION: &str = "0.10.1";

pub fn run(level: Level) -> Result<()> {
    if !Path::new("/etc/debian_version").exists() {
        bail!(
            "not a Debian/Ubuntu host (no /etc/debian_version); install by hand: rustup nightly \
             with rust-src, bpf-linker {BPF_LINKER_VERSION}, and the packages {}",
            TEST_PACKAGES.join(" ")
        );
    }
    debian_packages(match level {
        Level::Run => RUN_PACKAGES,
        Level::Test => TEST_PACKAGES,
        Level::Bench => BENCH_PACKAGES,
    })?;
    nightly_rust_src()?;
    if level == Level::Test {
        rustfmt_and_clippy()?;
        cargo_fuzz()?;
        cargo_deb()?;
    }
    bpf_linker()
}

fn debian_packages(packages: &[&str]) -> Result<()> {
    let mut missing = Vec::new();
    for &package in packages {
        let installed =
            cmd::stdout(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
                .is_some_and(|status| status.contains("install ok installed"));
        report(&format!("Debian package {package}"), installed);
        if !installed {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing Debian packages: {0}; run as root (sudo -E cargo xtask ...) or `apt-get install {0}`",
            missing.join(" ")
        );
    }
    cmd::run("apt-get update", Command::new("apt-get").arg("update"))?;
    cmd::run(
        &format!("installing {}", missing.join(" ")),
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
    )
}

/// The kernel crate builds `core` from source for the BPF target, which needs nightly's rust-src.
fn nightly_rust_src() -> Result<()> {
    let Some(toolchains) = cmd::stdout(Command::new("rustup").args(["toolchain", "list"])) else {
        bail!("`rustup toolchain list` failed; install rustup from https://rustup.rs");
    };
    let has_nightly = toolchains.lines().any(|line| line.starts_with("nightly"));
    report("nightly Rust toolchain", has_nightly);
    if !has_nightly {
        return cmd::run(
            "installing nightly with rust-src",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]),
        );
    }
    let has_rust_src = cmd::stdout(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|components| components.lines().any(|line| line.starts_with("rust-src")));
    report("nightly rust-src", has_rust_src);
    if has_rust_src {
        return Ok(());
    }
    cmd::run(
        "installing nightly rust-src",
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
    )
}

/// `cargo xtask test` runs `cargo fmt` and `cargo clippy` with the current toolchain.
fn rustfmt_and_clippy() -> Result<()> {
    let ok = |tool: &str| cmd::stdout(Command::new("cargo").args([tool, "--version"])).is_some();
    let present = ok("fmt") && ok("clippy");
    report("rustfmt and clippy", present);
    if present {
        return Ok(());
    }
    cmd::run(
        "installing rustfmt and clippy",
        Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]),
    )
}

/// aya-build links the kernel programs with bpf-linker.
fn bpf_linker() -> Result<()> {
    let present = cmd::stdout(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|version| version.split_whitespace().last() == Some(BPF_LINKER_VERSION));
    report(&format!("bpf-linker {BPF_LINKER_VERSION}"), present);
    if present {
        return Ok(());
    }
    cmd::run(
        &format!(
            "installing bpf-linker {BPF_LINKER_VERSION} (takes about 4 minutes; pinned because \
             newer versions need a system LLVM 21+)"
        ),
        Command::new("cargo").args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
        ]),
    )
}

/// Pinned like bpf-linker, so that every run fuzzes with the same libFuzzer driver.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// The fuzz step of `cargo xtask test` and `cargo xtask fuzz` run `cargo fuzz`.
pub fn cargo_fuzz() -> Result<()> {
    let present = cmd::stdout(Command::new("cargo").args(["fuzz", "--version"]))
        .is_some_and(|version| version.split_whitespace().last() == Some(CARGO_FUZZ_VERSION));
    report(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}"), present);
    if present {
        return Ok(());
    }
    cmd::run(
        &format!("installing cargo-fuzz {CARGO_FUZZ_VERSION} (takes about a minute)"),
        Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]),
    )
}

fn report(what: &str, present: bool) {
    let verdict = if present {
        "already installed"
    } else {
        "missing"
    };
    println!("==> checking {what} ... {verdict}");
}

/// Pinned like bpf-linker: the package's layout and maintainer scripts are cargo-deb's.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// `cargo xtask deb` (and the suite, which builds the package first) run `cargo deb`.
pub fn cargo_deb() -> Result<()> {
    let present = cmd::stdout(Command::new("cargo").args(["deb", "--version"]))
        .is_some_and(|version| version.split_whitespace().last() == Some(CARGO_DEB_VERSION));
    report(&format!("cargo-deb {CARGO_DEB_VERSION}"), present);
    if present {
        return Ok(());
    }
    cmd::run(
        &format!("installing cargo-deb {CARGO_DEB_VERSION} (takes about a minute)"),
        Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
            "--locked",
        ]),
    )
}
