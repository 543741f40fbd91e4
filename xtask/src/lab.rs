//! `cargo xtask lab`: one scenario of the 502 lab (a real nginx, small backends, a bounded
//! load, one injected fault) under an agent of its own, told step by step, then the
//! agent's own explanation. The same code as `tests/tests/lab.rs`.

use std::path::Path;

use anyhow::{bail, Context, Result};
use why502_e2e::lab::{self, Scenario};

use crate::bootstrap::{self, Level};
use crate::cmd;

pub fn run(root: &Path, list: bool, scenario: Option<&str>) -> Result<()> {
    if list {
        print_list();
        return Ok(());
    }
    let Some(name) = scenario else {
        bail!("name a scenario (`cargo xtask lab --list` shows them)");
    };
    let scenario = Scenario::from_name(name)
        .with_context(|| format!("no scenario {name:?} (`cargo xtask lab --list` shows them)"))?;
    if !crate::is_root() {
        bail!(
            "the lab loads the agent's eBPF programs, creates network namespaces, cgroups and \
             firewall rules: run as root (sudo -E cargo xtask lab {name})"
        );
    }
    bootstrap::run(Level::Test)?;
    cmd::run(
        "building the agent and the test backend (cargo build -p why502 -p why502-e2e)",
        cmd::cargo(root).args(["build", "-p", "why502", "-p", "why502-e2e"]),
    )?;
    // cargo resolves a relative CARGO_TARGET_DIR against its working directory, the root.
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    let bin_dir = root.join(target).join("debug");
    // Before any thread starts: the lab finds `why502` and the backend there.
    std::env::set_var(why502_e2e::BIN_DIR_ENV, &bin_dir);
    stop_on_ctrl_c();

    let outcome = match lab::run(scenario) {
        Ok(outcome) => outcome,
        Err(lab::Interrupted) => {
            println!("==> interrupted: nginx, the backends, namespaces and cgroups are gone");
            bail!("interrupted");
        }
    };
    println!("==> why502 explain --last");
    print!("{}", outcome.explain_text);
    let failed = outcome.failed_checks();
    println!(
        "==> {} in {:.1} s; expected {}",
        scenario,
        outcome.elapsed.as_secs_f64(),
        match scenario.expected_causes() {
            [] => "no incident".to_string(),
            causes => causes.join(" or "),
        }
    );
    if failed.is_empty() {
        println!("==> all checks passed; everything the lab started is stopped and removed");
        Ok(())
    } else {
        for check in &failed {
            println!("    FAILED {check}");
        }
        bail!("{} of the scenario's checks failed", failed.len())
    }
}

fn print_list() {
    let width = Scenario::ALL
        .iter()
        .map(|s| s.name().len())
        .max()
        .unwrap_or(0);
    for scenario in Scenario::ALL {
        let expected = match scenario.expected_causes() {
            [] => "no incident".to_string(),
            causes => causes.join(" | "),
        };
        println!(
            "{:width$}  → {expected}\n{:width$}    {}",
            scenario.name(),
            "",
            scenario.description()
        );
    }
}

/// Ctrl-C asks the lab to stop at its next step; it then tears everything down itself.
fn stop_on_ctrl_c() {
    extern "C" fn on_sigint(_: libc::c_int) {
        lab::request_stop();
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        )
    };
}
