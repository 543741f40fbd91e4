//! The Debian package (`cargo xtask deb`) and `cargo xtask install`/`uninstall`: contents,
//! control data and lintian; then installed with dpkg on this host, the installed agent
//! run against the installed configuration, its man pages and bash completion loaded, and
//! everything gone after a purge. The package is the one `cargo xtask test` built just
//! before (step 4), so that this test runs no cargo of its own; root only.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MAN_PAGES: [&str; 6] = ["why502", "agent", "incidents", "explain", "watch", "status"];
const ENABLEMENT: &str = "/etc/systemd/system/multi-user.target.wants/why502.service";

/// The files the .deb installs (dpkg-deb -c, directories left out).
fn deb_files() -> BTreeSet<String> {
    let mut files: BTreeSet<String> = [
        "/usr/bin/why502",
        "/etc/why502/why502.toml",
        "/usr/lib/systemd/system/why502.service",
        "/usr/share/why502/why502.rules.yml",
        "/usr/share/why502/why502.json",
        "/usr/share/bash-completion/completions/why502",
        "/usr/share/zsh/vendor-completions/_why502",
        "/usr/share/fish/vendor_completions.d/why502.fish",
        "/usr/share/doc/why502/copyright",
        "/usr/share/doc/why502/changelog.Debian.gz",
        "/usr/share/lintian/overrides/why502",
    ]
    .map(String::from)
    .into();
    files.extend(MAN_PAGES.map(man_page));
    files
}

/// `cargo xtask install`'s: the .deb's, less Debian's /usr/share/doc and lintian
/// overrides, plus its manifest.
fn install_files(prefix: &str) -> BTreeSet<String> {
    let mut files: BTreeSet<String> = deb_files()
        .into_iter()
        .filter(|f| !f.starts_with("/usr/share/doc/") && !f.starts_with("/usr/share/lintian/"))
        .chain(["/usr/share/why502/installed-files".to_string()])
        .collect();
    if prefix != "/usr" {
        files = files
            .into_iter()
            .map(|f| match f.strip_prefix("/usr/") {
                Some(rest) => format!("{prefix}/{rest}"),
                None => f,
            })
            .collect();
    }
    files
}

fn man_page(name: &str) -> String {
    let page = if name == "why502" {
        name.to_string()
    } else {
        format!("why502-{name}")
    };
    format!("/usr/share/man/man1/{page}.1.gz")
}

#[test]
fn deb_installs_runs_and_purges_to_nothing() {
    let Some(deb) = built_package() else { return };
    let _serial = why502_e2e::serial();

    let listed = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let files: BTreeSet<String> = listed
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| !path.ends_with('/'))
        .map(|path| path.trim_start_matches('.').to_string())
        .collect();
    assert_eq!(files, deb_files(), "dpkg-deb -c {}", deb.display());
    let binary_mode = listed.lines().find(|l| l.ends_with("./usr/bin/why502"));
    assert!(
        binary_mode.is_some_and(|l| l.starts_with("-rwxr-xr-x 0/0 ")),
        "{binary_mode:?}"
    );

    let field = |name: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name));
    assert_eq!(field("Package").trim(), "why502");
    assert_eq!(field("Version").trim(), format!("{VERSION}-1"));
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    let info = |member: &str| run(Command::new("dpkg-deb").arg("-I").arg(&deb).arg(member));
    assert_eq!(info("conffiles").trim(), "/etc/why502/why502.toml");
    // deb-systemd-helper's fragments: enable on install, restart on upgrade, stop on
    // removal, forget on purge; and ours: the state directory on purge.
    let postinst = info("postinst");
    assert!(postinst.contains("deb-systemd-helper enable"), "{postinst}");
    assert!(postinst.contains("_dh_action=restart"), "{postinst}");
    assert!(
        info("prerm").contains("deb-systemd-invoke stop"),
        "{}",
        info("prerm")
    );
    let postrm = info("postrm");
    assert!(postrm.contains("deb-systemd-helper purge"), "{postrm}");
    assert!(postrm.contains("rm -rf /var/lib/why502"), "{postrm}");

    let lintian = output(
        Command::new("lintian")
            .arg("--no-tag-display-limit")
            .arg(&deb),
    );
    let text = String::from_utf8_lossy(&lintian.stdout);
    println!("lintian:\n{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "lintian errors: {errors:#?}");

    assert!(
        !Path::new("/var/lib/dpkg/info/why502.list").exists(),
        "the why502 package is already installed on this host: the test would purge it"
    );
    let mut installed = Installed { agent: None };
    run(Command::new("dpkg").arg("-i").arg(&deb));
    for file in deb_files() {
        assert!(Path::new(&file).exists(), "{file} not installed");
    }
    // Without a running systemd, deb-systemd-helper still records the enablement.
    assert!(
        Path::new(ENABLEMENT).is_symlink(),
        "{ENABLEMENT} missing after dpkg -i"
    );
    installed_pages_and_completion();
    installed_agent_answers(&mut installed);

    run(Command::new("dpkg").args(["-r", "why502"]));
    assert!(
        !Path::new("/usr/bin/why502").exists(),
        "binary left by dpkg -r"
    );
    assert!(
        Path::new("/etc/why502/why502.toml").exists(),
        "dpkg -r keeps the conffile until purge"
    );
    run(Command::new("dpkg").args(["-P", "why502"]));
    let left: Vec<String> = deb_files()
        .into_iter()
        .chain(
            [
                "/etc/why502",
                "/var/lib/why502",
                "/run/why502",
                ENABLEMENT,
                "/etc/systemd/system/why502.service",
                "/var/lib/systemd/deb-systemd-helper-enabled/why502.service.dsh-also",
                "/var/lib/dpkg/info/why502.list",
            ]
            .map(String::from),
        )
        .filter(|path| Path::new(path).symlink_metadata().is_ok())
        .collect();
    assert!(left.is_empty(), "left after dpkg -P: {left:?}");
}

/// Each man page renders without a warning, and bash completes the subcommands.
fn installed_pages_and_completion() {
    for name in MAN_PAGES {
        let page = man_page(name);
        let out = output(
            Command::new("man")
                .env("MANWIDTH", "80")
                .args(["--warnings", "-l"])
                .arg(&page),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "man -l {page}: {stderr}"
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("SYNOPSIS"), "man -l {page}: {text}");
    }
    let completion = "/usr/share/bash-completion/completions/why502";
    let script = format!(
        "source {completion} && complete -p why502 && COMP_WORDS=(why502 inc) COMP_CWORD=1 && \
         _why502 why502 inc why502 && \
         echo \"reply: ${{COMPREPLY[*]}}\""
    );
    let out = run(Command::new("bash").args(["--norc", "-c", &script]));
    assert!(out.contains("-F _why502 why502"), "{out}");
    assert!(out.contains("reply: incidents"), "{out}");
}

/// The installed binary, with the installed configuration: valid, and an agent that
/// attaches its probes and answers `why502 status` on the configuration's default socket.
fn installed_agent_answers(installed: &mut Installed) {
    let config = "/etc/why502/why502.toml";
    let checked =
        run(Command::new("/usr/bin/why502").args(["agent", "--check-config", "--config", config]));
    assert!(checked.contains("is valid"), "{checked}");
    if let Err(err) = TcpListener::bind("127.0.0.1:9502") {
        panic!(
            "127.0.0.1:9502, the installed configuration's metrics port, is taken ({err}): \
             stop whatever listens there (an installed why502?) and run the test again"
        );
    }
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = Command::new("/usr/bin/why502")
        .args(["agent", "--config", config])
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .expect("start /usr/bin/why502 agent");
    installed.agent = Some(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log.path()).unwrap();
        if text.contains("why502 agent running") {
            assert!(text.contains("probes attached"), "{text}");
            break;
        }
        let agent = installed.agent.as_mut().unwrap();
        if let Ok(Some(status)) = agent.try_wait() {
            panic!("the installed agent exited ({status}): {text}");
        }
        assert!(
            Instant::now() < deadline,
            "agent not running after 60 s: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = output(Command::new("/usr/bin/why502").arg("status"));
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "why502 status: {text} {:?}",
        status
    );
    assert!(
        Path::new("/var/lib/why502/why502.db").exists(),
        "the store is in /var/lib/why502"
    );
    let mut agent = installed.agent.take().unwrap();
    assert!(
        why502_e2e::signal_and_wait(&mut agent, libc::SIGTERM, Duration::from_secs(10)),
        "the installed agent did not stop within 10 s of SIGTERM"
    );
    let code = agent.wait().unwrap();
    assert!(code.success(), "agent ended with {code}");
}

/// Purges the package (and stops its agent) however the test ends.
struct Installed {
    agent: Option<Child>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(agent) = &mut self.agent {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = Command::new("dpkg")
            .args(["-P", "why502"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn xtask_install_puts_the_deb_files_in_place_and_uninstall_takes_them_away() {
    let Some(_deb) = built_package() else { return };
    let _serial = why502_e2e::serial();
    let xtask = why502_e2e::sibling_binary("xtask");
    for prefix in ["/usr", "/usr/local"] {
        let root = tempfile::tempdir().unwrap();
        let xtask_run = |task: &str| {
            run(Command::new(&xtask)
                .args([task, "--no-build", "--prefix", prefix, "--destdir"])
                .arg(root.path()))
        };
        let said = xtask_run("install");
        assert!(
            !said.contains("systemctl"),
            "no systemctl under --destdir: {said}"
        );
        assert_eq!(
            files_under(root.path()),
            install_files(prefix),
            "--prefix {prefix}"
        );
        let unit = std::fs::read_to_string(
            root.path()
                .join(&prefix[1..])
                .join("lib/systemd/system/why502.service"),
        )
        .unwrap();
        let exec = unit.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
        assert_eq!(
            exec,
            format!("ExecStart={prefix}/bin/why502 agent --config /etc/why502/why502.toml")
        );
        let binary = root.path().join(&prefix[1..]).join("bin/why502");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&binary).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "{}", binary.display());

        let config = root.path().join("etc/why502/why502.toml");
        let edited = prefix == "/usr/local";
        if edited {
            let mut text = std::fs::read_to_string(&config).unwrap();
            text.push_str("# edited by the administrator\n");
            std::fs::write(&config, text).unwrap();
        }
        xtask_run("uninstall");
        let expected: BTreeSet<String> = if edited {
            ["/etc/why502/why502.toml".to_string()].into()
        } else {
            BTreeSet::new()
        };
        assert_eq!(files_under(root.path()), expected, "left by uninstall");
    }
}

/// Every file (not directory) under `root`, as an absolute path on the target host.
fn files_under(root: &Path) -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                files.insert(format!("/{}", rel.display()));
            }
        }
    }
    files
}

/// The package `cargo xtask test` built, or `None` (with a message) when not root.
fn built_package() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: installing the package needs root");
        return None;
    }
    // target/<profile>/deps/<this test> → target/
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    let deb = target
        .join("debian")
        .join(format!("why502_{VERSION}-1_{}.deb", arch.trim()));
    assert!(
        deb.exists(),
        "{} is not built: run `cargo xtask deb` first (`cargo xtask test` does)",
        deb.display()
    );
    Some(deb)
}

fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|err| panic!("cannot run {cmd:?}: {err}"))
}

/// Runs `cmd`, asserts it succeeded and returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
