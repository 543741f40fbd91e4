//! Python tools from PyPI for the tests (`kubernetes-validate`), in a virtual environment of
//! the tests' own under the target directory: created once, with Debian's `python3` (and
//! `python3-venv`, installed with apt-get when missing), and reused while its pinned
//! requirements stay the same.

use std::{
    fs::File,
    io::Write,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Instant,
};

/// Debian's interpreter, not whatever `python3` is first on PATH (pyenv shims and the like
/// differ between machines; this one is what apt-get installs).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// A virtual environment with `requirements` installed.
pub struct Venv {
    dir: PathBuf,
}

impl Venv {
    /// The virtual environment at `dir` with exactly `requirements` (pip specifiers, pinned:
    /// `name==version`), created and installed into now if it does not have them yet. Safe
    /// to call from several test threads and processes at once (an flock on `dir.lock`).
    pub fn with(dir: &Path, requirements: &[&str]) -> Venv {
        let parent = dir.parent().expect("a venv directory has a parent");
        std::fs::create_dir_all(parent).expect("create the venv's parent directory");
        let lock_path = dir.with_extension("lock");
        let lock = File::create(&lock_path)
            .unwrap_or_else(|err| panic!("create {}: {err}", lock_path.display()));
        // SAFETY: flock on a descriptor this function owns; released when `lock` closes.
        let locked = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(locked, 0, "flock {}", lock_path.display());

        let venv = Venv {
            dir: dir.to_path_buf(),
        };
        let wanted = requirements.join("\n") + "\n";
        let marker = dir.join("why502-requirements.txt");
        if std::fs::read_to_string(&marker).ok().as_deref() == Some(wanted.as_str())
            && venv.python().exists()
        {
            return venv;
        }
        let start = Instant::now();
        // Not captured by the test harness: the one-time install shows in every run's log.
        let _ = writeln!(
            std::io::stderr(),
            "installing {} from PyPI into {} (once: reused while the pins stay the same)",
            requirements.join(" "),
            dir.display()
        );
        ensure_system_venv();
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .unwrap_or_else(|err| panic!("remove the old venv {}: {err}", dir.display()));
        }
        let created = run(Command::new(SYSTEM_PYTHON).args(["-m", "venv"]).arg(dir));
        assert!(
            created.status.success(),
            "{SYSTEM_PYTHON} -m venv {}: {}",
            dir.display(),
            text(&created)
        );
        let installed = run(Command::new(venv.python())
            .args(["-m", "pip", "install", "--quiet", "--no-input"])
            .args(requirements));
        assert!(
            installed.status.success(),
            "pip install {} (PyPI must be reachable): {}",
            requirements.join(" "),
            text(&installed)
        );
        std::fs::write(&marker, wanted).expect("write the venv's requirements marker");
        let _ = writeln!(
            std::io::stderr(),
            "installed {} in {:.1} s",
            requirements.join(" "),
            start.elapsed().as_secs_f64()
        );
        venv
    }

    /// The venv's interpreter: `python -m tool` runs its tools without relying on the
    /// scripts' shebang lines.
    pub fn python(&self) -> PathBuf {
        self.dir.join("bin").join("python")
    }

    /// Runs `python -m module ARGS`.
    pub fn module(&self, module: &str, args: &[&str]) -> Output {
        run(Command::new(self.python()).args(["-m", module]).args(args))
    }

    /// The YAML documents in `path` as JSON values (empty documents left out), read by
    /// PyYAML's safe loader: the same reading `kubernetes-validate` makes of them, so that
    /// what the tests check is what was validated.
    pub fn yaml_documents(&self, path: &Path) -> Vec<serde_json::Value> {
        const SCRIPT: &str = "import json, sys, yaml\n\
            with open(sys.argv[1]) as f:\n    \
                docs = [d for d in yaml.safe_load_all(f) if d is not None]\n\
            json.dump(docs, sys.stdout)\n";
        let out = run(Command::new(self.python()).args(["-c", SCRIPT]).arg(path));
        assert!(
            out.status.success(),
            "{} is not YAML: {}",
            path.display(),
            text(&out)
        );
        serde_json::from_slice(&out.stdout).expect("PyYAML's documents as JSON")
    }
}

/// `python3` with its `venv` module (Debian splits ensurepip into `python3-venv`), installed
/// with apt-get when missing: the tests run as root on a fresh Debian in CI.
fn ensure_system_venv() {
    let has_venv = || {
        Path::new(SYSTEM_PYTHON).exists()
            && run(Command::new(SYSTEM_PYTHON).args(["-c", "import venv, ensurepip"]))
                .status
                .success()
    };
    if has_venv() {
        return;
    }
    let _ = writeln!(
        std::io::stderr(),
        "installing python3 and python3-venv (apt-get install)"
    );
    let install = || {
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "python3",
                "python3-venv",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    let mut out = install();
    if !out.status.success() {
        // A fresh machine may have no package lists yet.
        let _ = run(Command::new("apt-get").arg("update"));
        out = install();
    }
    assert!(
        out.status.success() && has_venv(),
        "apt-get install python3 python3-venv (as root): {}",
        text(&out)
    );
}

fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|err| panic!("run {command:?}: {err}"))
}

/// A command's stdout and stderr, for messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
