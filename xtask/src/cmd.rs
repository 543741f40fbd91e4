//! Running external commands: announced, waited for, failures named.

use std::path::Path;
use std::process::{Command, ExitStatus};

use anyhow::{bail, Context, Result};

/// Prints `==> {what}`, runs `cmd` with inherited stdio and fails unless it succeeds.
pub fn run(what: &str, cmd: &mut Command) -> Result<()> {
    println!("==> {what}");
    let status = status(cmd)?;
    if !status.success() {
        bail!("{what} failed: `{}` ended with {status}", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its trimmed stdout, or `None` if it could not start or failed.
pub fn stdout(cmd: &mut Command) -> Option<String> {
    let output = cmd.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// A `cargo` command run from the workspace root.
pub fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    cmd
}

/// Spawns `cmd` and waits for it. Ctrl-C goes to the whole foreground process group;
/// SIGINT is ignored here meanwhile, so the child decides how to stop and we still
/// report which step it interrupted.
fn status(cmd: &mut Command) -> Result<ExitStatus> {
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    let _ignored = SigintIgnored::new();
    child
        .wait()
        .with_context(|| format!("cannot wait for `{}`", display(cmd)))
}

/// The command line as one would type it (without quoting).
fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Ignores SIGINT in this process until dropped, then restores the previous disposition.
struct SigintIgnored(libc::sighandler_t);

impl SigintIgnored {
    fn new() -> Self {
        // SAFETY: SIG_IGN installs no handler code; the previous disposition is kept to restore.
        Self(unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) })
    }
}

impl Drop for SigintIgnored {
    fn drop(&mut self) {
        if self.0 != libc::SIG_ERR {
            // SAFETY: restores the disposition that `signal` returned in `new`.
            unsafe { libc::signal(libc::SIGINT, self.0) };
        }
    }
}
