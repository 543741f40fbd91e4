//! `cargo xtask run`: build the agent and replace this process with it.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::bootstrap::{self, Level};
use crate::cmd;

pub fn run(root: &Path, debug: bool, args: &[String]) -> Result<()> {
    if !crate::is_root() {
        bail!("the agent loads eBPF programs: run as root (sudo -E cargo xtask run)");
    }
    bootstrap::run(Level::Run)?;

    let profile = if debug { "debug" } else { "release" };
    let mut build = cmd::cargo(root);
    build.args(["build", "-p", "why502"]);
    if !debug {
        build.arg("--release");
    }
    cmd::run(&format!("building why502 ({profile})"), &mut build)?;

    // cargo resolves a relative CARGO_TARGET_DIR against its working directory, the root.
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    let binary = root.join(target).join(profile).join("why502");
    println!("==> running {} agent {}", binary.display(), args.join(" "));
    // exec: signals (Ctrl-C) and the exit code belong to the agent itself.
    let err = Command::new(&binary).arg("agent").args(args).exec();
    Err(err).with_context(|| format!("cannot execute {}", binary.display()))
}
