//! A forged unit does not land in the real proxy's incidents: a root nginx in a system
//! service's cgroup (`…/system.slice/why502-test-nginx-<pid>.service`, master as root,
//! worker as www-data) and nobody's nginx of the same name and unit name under nobody's
//! user manager (`…/user@65534.service/app.slice/why502-test-nginx-<pid>.service`, what
//! `systemd-run --user --unit=…` makes) both fail to reach one upstream. The agent must
//! open two incidents, each naming its own process and uid, neither counting the other's
//! failures, and say so in `why502 incidents` and `why502 explain`.
//!
//! PID 1 here need not be systemd: the cgroups are made by hand, in a tree of the test's own
//! (`/why502-test-<pid>-forged.slice/…`) on the cgroup v2 hierarchy the agent reads, so that
//! no real unit is touched. Removed on drop, its processes killed first.

use std::{
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::Value;
use why502_e2e::{
    agent::Agent,
    can_load_ebpf, free_port, http,
    nginx::{self, NGINX},
    serial,
};

const WWW_DATA: u32 = 33;
const NOBODY: u32 = 65534;

/// Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
/// host): the hierarchy of `/proc/<pid>/cgroup`'s `0::` line, which the agent reads.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
    })
}

/// The test's own cgroup tree: its leaves, each given as the path the agent sees
/// (`/why502-test-…/system.slice/….service`). Every process in it is killed and every
/// directory removed on drop.
struct CgroupTree {
    mount: PathBuf,
    top: String,
    leaves: Vec<String>,
}

impl CgroupTree {
    fn new(mount: PathBuf, top: String) -> Self {
        let tree = Self {
            mount,
            top,
            leaves: Vec::new(),
        };
        std::fs::create_dir(tree.dir(&tree.top))
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", tree.dir(&tree.top).display()));
        tree
    }

    fn dir(&self, path: &str) -> PathBuf {
        self.mount.join(path.trim_start_matches('/'))
    }

    /// Creates `path` (under the top) and its parents; returns the path as the agent sees it.
    fn leaf(&mut self, below_top: &str) -> String {
        let path = format!("{}/{below_top}", self.top);
        std::fs::create_dir_all(self.dir(&path)).unwrap();
        self.leaves.push(path.clone());
        path
    }

    fn pids(&self, path: &str) -> Vec<u32> {
        std::fs::read_to_string(self.dir(path).join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|p| p.trim().parse().ok())
            .collect()
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        // Every directory of the tree, deepest first.
        let mut dirs: Vec<String> = Vec::new();
        for leaf in &self.leaves {
            let mut path = leaf.as_str();
            while path.len() > self.top.len() {
                if !dirs.iter().any(|d| d == path) {
                    dirs.push(path.to_string());
                }
                path = &path[..path.rfind('/').unwrap_or(0)];
            }
        }
        dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
        dirs.push(self.top.clone());
        // Killed members leave asynchronously: kill and retry, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in &dirs {
            loop {
                for pid in self.pids(dir) {
                    // SAFETY: killing a process left in the test's own cgroup.
                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                }
                if std::fs::remove_dir(self.dir(dir)).is_ok() || !self.dir(dir).exists() {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("could not remove {}", self.dir(dir).display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// An nginx of the test's own, started by a shell that first joins `cgroup` (so that
/// nginx and all it forks are in it from their first instruction).
struct Proxy {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Proxy {
    /// `as_nobody`: run as user nobody, in one process (`master_process off`, as an
    /// unprivileged user would); else a root master with a www-data worker.
    fn start(tree: &CgroupTree, cgroup: &str, upstream: &str, as_nobody: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path();
        std::fs::create_dir_all(prefix.join("tmp")).unwrap();
        if as_nobody {
            for dir in [prefix.to_path_buf(), prefix.join("tmp")] {
                std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
            }
        } else {
            // The www-data worker reaches its temporary paths.
            std::fs::set_permissions(prefix, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(prefix.join("tmp"), std::fs::Permissions::from_mode(0o777))
                .unwrap();
        }
        let port = free_port();
        let p = prefix.display();
        let processes = if as_nobody {
            "master_process off;"
        } else {
            "master_process on;\nuser www-data;\nworker_processes 1;"
        };
        let config = nginx::config(prefix, port, upstream, processes);
        let conf = prefix.join("nginx.conf");
        std::fs::write(&conf, config).unwrap();
        std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
        let procs = tree.dir(cgroup).join("cgroup.procs");
        let run = if as_nobody {
            format!("exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups {NGINX}")
        } else {
            format!("exec {NGINX}")
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > '{}' && {run} -p '{p}' -e '{p}/error.log' -c '{}'",
                procs.display(),
                conf.display()
            ))
            .spawn()
            .expect("start nginx");
        let proxy = Self { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx in {cgroup} did not listen on {port}: {}",
                proxy.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    fn refused(&self) -> usize {
        self.error_log()
            .lines()
            .filter(|l| l.contains("connect() failed (111: Connection refused)"))
            .count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if why502_e2e::signal_and_wait(&mut self.child, libc::SIGQUIT, Duration::from_secs(5)) {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real uid of `pid`, from `/proc/<pid>/status`.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_forged_unit_is_an_incident_of_its_own() {
    if !can_load_ebpf() {
        return;
    }
    let Some(mount) = cgroup2_root() else {
        eprintln!("skipped: no cgroup v2 hierarchy mounted");
        return;
    };
    let _serial = serial();
    let test = std::process::id();
    let unit = format!("why502-test-nginx-{test}.service");
    let mut tree = CgroupTree::new(mount, format!("/why502-test-{test}-forged.slice"));
    let system = tree.leaf(&format!("system.slice/{unit}"));
    let user = tree.leaf(&format!(
        "user.slice/user-{NOBODY}.slice/user@{NOBODY}.service/app.slice/{unit}"
    ));

    let agent = Agent::start();
    // Nothing listens there: every request is a refused connect and a 502.
    let upstream = format!("127.0.0.1:{}", free_port());
    let real = Proxy::start(&tree, &system, &upstream, false);
    let forged = Proxy::start(&tree, &user, &upstream, true);
    let forged_pid = forged.child.id();
    assert_eq!(
        tree.pids(&user),
        [forged_pid],
        "nobody's nginx in its cgroup"
    );
    assert_eq!(uid_of(forged_pid), Some(NOBODY));
    let real_pids = tree.pids(&system);
    let worker = *real_pids
        .iter()
        .find(|&&pid| uid_of(pid) == Some(WWW_DATA))
        .unwrap_or_else(|| panic!("no www-data worker among {real_pids:?}"));

    // Interleaved: 4 failures of the real one, 7 of the forged one.
    let (real_failures, forged_failures) = (4, 7);
    for i in 0..real_failures + forged_failures {
        let proxy = if i % 3 == 0 && i / 3 < real_failures {
            &real
        } else {
            &forged
        };
        assert_eq!(http::get_status(proxy.port).unwrap(), 502);
    }
    assert_eq!(real.refused(), real_failures, "{}", real.error_log());
    assert_eq!(forged.refused(), forged_failures, "{}", forged.error_log());

    // Both incidents, each with all of its own failures (counts only grow: a merged one
    // would show 11 and never match).
    let deadline = Instant::now() + Duration::from_secs(10);
    let incidents = loop {
        let listing = agent.cli_json(&["incidents", "--upstream", &upstream]);
        let incidents = listing["incidents"].as_array().cloned().unwrap_or_default();
        let failures: Vec<u64> = incidents
            .iter()
            .filter_map(|i| i["failures"].as_u64())
            .collect();
        let mut sorted = failures.clone();
        sorted.sort_unstable();
        if sorted == [real_failures as u64, forged_failures as u64] {
            break incidents;
        }
        assert!(
            Instant::now() < deadline,
            "incidents to {upstream}: failures {failures:?}, want {real_failures} and \
             {forged_failures} apart: {listing:#}\nagent log: {:?}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(incidents.len(), 2, "{incidents:#?}");
    let of = |failures: usize| -> &Value {
        incidents
            .iter()
            .find(|i| i["failures"].as_u64() == Some(failures as u64))
            .unwrap()
    };
    let real_incident = of(real_failures);
    let forged_incident = of(forged_failures);

    // The real one: the worker that connected, as www-data, in the system unit.
    let proxy = &real_incident["proxy"];
    assert_eq!(proxy["pid"], worker, "{real_incident:#}");
    assert_eq!(proxy["uid"], WWW_DATA, "{real_incident:#}");
    assert_eq!(proxy["comm"], "nginx");
    assert_eq!(proxy["unit"], unit.as_str(), "{real_incident:#}");
    assert_eq!(proxy["cgroup"], system.as_str(), "{real_incident:#}");
    // The forged one: nobody's, named after nobody's user manager.
    let proxy = &forged_incident["proxy"];
    assert_eq!(proxy["pid"], forged_pid, "{forged_incident:#}");
    assert_eq!(proxy["uid"], NOBODY, "{forged_incident:#}");
    assert_eq!(proxy["comm"], "nginx");
    let user_unit = format!("user@{NOBODY}.service/{unit}");
    assert_eq!(proxy["unit"], user_unit.as_str(), "{forged_incident:#}");
    assert_eq!(proxy["cgroup"], user.as_str(), "{forged_incident:#}");

    // What people read: the table tells the two apart, explain names each process.
    let table = agent.cli(&["incidents", "--upstream", &upstream]);
    let table = String::from_utf8_lossy(&table.stdout);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(
        rows.iter()
            .any(|r| r.contains(&format!("nginx (uid {NOBODY}) → {upstream}"))),
        "{table}"
    );
    assert!(
        rows.iter()
            .any(|r| r.contains(&format!("  nginx → {upstream}"))),
        "{table}"
    );
    for (incident, line) in [
        (
            real_incident,
            format!("Proxy: nginx (pid {worker}, uid {WWW_DATA}, {unit})"),
        ),
        (
            forged_incident,
            format!("Proxy: nginx (pid {forged_pid}, uid {NOBODY}, {user_unit})"),
        ),
    ] {
        let id = incident["id"].to_string();
        let out = agent.cli(&["explain", &id]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.lines().any(|l| l == line), "want {line:?} in:\n{text}");
    }
}
