//! Builds the kernel programs (`agent-ebpf`) for the BPF target with the nightly toolchain.
//! `AYA_BUILD_SKIP=1` skips that for userspace-only work (`cargo clippy`, unit tests): the
//! binary then carries an empty object and refuses to start the agent, saying why.
//!
//! It also records the commit built (`WHY502_COMMIT`, for `why502 --version`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};

fn main() -> anyhow::Result<()> {
    emit_commit();
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        let out =
            PathBuf::from(std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
        std::fs::write(out.join("why502"), []).context("cannot write the empty object")?;
        return Ok(());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("agent/ has no parent directory"))?
        .join("agent-ebpf");
    let root_dir = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("nightly"),
    )
}

/// Sets `WHY502_COMMIT` for `why502 --version`: `$WHY502_COMMIT` when the packager gives
/// one (a source tarball has no `.git`), else `git rev-parse`, else "unknown". Rebuilds
/// when `HEAD` moves (a commit, a checkout), not on every edit: the tree may be dirty.
fn emit_commit() {
    println!("cargo:rerun-if-env-changed=WHY502_COMMIT");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|out| out.status.success())
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .map(|text| text.trim().to_string())
            .filter(|text| !text.is_empty())
    };
    let commit = std::env::var("WHY502_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]));
    // The paths to watch are read from the checkout itself, not asked of git: a git that
    // failed once (a lock held by a concurrent commit) must not leave "unknown" stuck.
    // (A worktree's `.git` is a file naming its git directory: asked of git then.)
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git");
    let git_dir = match checkout.is_dir() {
        true => checkout,
        false => git(&["rev-parse", "--absolute-git-dir"]).map_or(checkout, PathBuf::from),
    };
    if let Ok(head) = std::fs::read_to_string(git_dir.join("HEAD")) {
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        // HEAD names a branch: its ref file (or packed-refs) moves with each commit.
        if let Some(branch) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed={}", git_dir.join(branch).display());
        }
        println!(
            "cargo:rerun-if-changed={}",
            git_dir.join("packed-refs").display()
        );
    }
    println!(
        "cargo:rustc-env=WHY502_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
}
