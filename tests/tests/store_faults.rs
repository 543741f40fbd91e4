//! A bad store never stops the agent: a file that is not SQLite, a corrupt one, one of a
//! newer schema, a read-only directory and a full disk each leave a running agent that
//! still reports kernel events, and says what it did with the file (moved aside, or
//! incidents in memory only) in its log, `why502 status` and `/metrics`.
//!
//! The read-only and full disks are tmpfs mounts in a mount namespace of the test's own
//! (its thread's, inherited by the agent it starts): nothing is mounted on the host, and
//! the namespace goes with the thread and the agent.

use std::{
    ffi::CString,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use why502_e2e::{
    agent::Agent, backend::Backend, can_load_ebpf, free_port, http, nginx::Nginx, serial,
};

/// An agent whose store is at `path`.
fn agent_on(path: &Path) -> Agent {
    Agent::start_with(&[("store", &format!("path = \"{}\"", path.display()))])
}

/// The agent still watches: a refused connect of ours is reported. To a port bound and
/// not listening, so that nothing listened there: one refusal opens no incident.
fn assert_watching(agent: &Agent) {
    let (_bound, port) = bound_port();
    let dst = format!("127.0.0.1:{port}");
    assert!(std::net::TcpStream::connect(&dst).is_err(), "{dst} listens");
    let me = std::process::id();
    let refused = agent.wait_for(1, Duration::from_secs(5), |e| {
        e["process"]["pid"] == me && e["dst"] == dst.as_str()
    });
    assert!(!refused.is_empty(), "no event for {dst}: {:?}", agent.log());
}

/// A TCP socket bound to a free loopback port, not listening (closed on drop), and the port.
fn bound_port() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a new socket, owned at once; the address structures are ours.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let rc = libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len);
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let rc = libc::getsockname(fd.as_raw_fd(), (&raw mut addr).cast(), &mut len);
        assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
        (fd, u16::from_be(addr.sin_port))
    }
}

/// `why502 status --json`'s `store`.
fn store_status(agent: &Agent) -> Value {
    agent.cli_json(&["status"])["store"].clone()
}

/// The value of the series `name` (no labels) on the agent's /metrics.
fn metric(agent: &Agent, name: &str) -> f64 {
    let addr = agent.metrics_addr();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stream, &mut text).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// The log lines that contain `text`.
fn logged(agent: &Agent, text: &str) -> Vec<String> {
    agent
        .log()
        .into_iter()
        .filter(|l| l.contains(text))
        .collect()
}

/// The `why502.db.bad-*` files in `dir`.
fn moved_aside(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("why502.db.bad-") && !name.ends_with("-wal") && !name.ends_with("-shm")
        })
        .collect();
    found.sort();
    found
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A bad file was moved aside with one warning naming where to, and the agent runs on a
/// fresh, persistent store.
fn assert_moved_aside(agent: &Agent, dir: &Path, bad: &[u8]) {
    let aside = moved_aside(dir);
    assert_eq!(aside.len(), 1, "{aside:?}; log: {:?}", agent.log());
    assert_eq!(std::fs::read(&aside[0]).unwrap(), bad, "the bad file, kept");
    let warnings = logged(agent, "started a fresh store");
    assert_eq!(warnings.len(), 1, "{:?}", agent.log());
    assert!(
        warnings[0].contains(&aside[0].display().to_string()),
        "{warnings:?}"
    );
    let status = store_status(agent);
    assert_eq!(status["persistent"], true, "{status}");
    assert_eq!(metric(agent, "why502_store_persistent"), 1.0);
    assert_watching(agent);
}

/// Incidents in memory only: said in the log, `why502 status` (JSON and text) and
/// `/metrics`, with `reason_contains` the cause.
fn assert_in_memory(agent: &Agent, reason_contains: &str) {
    let status = store_status(agent);
    assert_eq!(status["persistent"], false, "{status}");
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(reason_contains), "{status}");
    let text = agent.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("Incident store: in memory only, lost at stop"),
        "{text}"
    );
    assert_eq!(metric(agent, "why502_store_persistent"), 0.0);
    assert_eq!(logged(agent, "keeping incidents in memory only").len(), 1);
    assert_watching(agent);
}

#[test]
fn a_file_that_is_not_sqlite_is_moved_aside_and_a_fresh_store_is_owner_only() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("why502.db");
    let bad = b"not a database, some text an operator left here\n".repeat(100);
    std::fs::write(&path, &bad).unwrap();

    let agent = agent_on(&path);
    assert_moved_aside(&agent, dir.path(), &bad);
    // The fresh store and the files SQLite keeps next to it: root's only.
    for file in ["why502.db", "why502.db-wal", "why502.db-shm"] {
        assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
    }
    // The fresh store is a good file: the next start keeps it.
    let agent = agent.restart();
    assert_eq!(moved_aside(dir.path()).len(), 1, "{:?}", agent.log());
    assert_eq!(
        logged(&agent, "started a fresh store"),
        Vec::<String>::new()
    );
    assert_eq!(store_status(&agent)["persistent"], true);
}

#[test]
fn a_corrupt_store_is_moved_aside() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("why502.db");
    agent_on(&path).stop();
    // A valid header and schema page, garbage in every page after it (the incidents'
    // table and indexes): only a check of the pages sees it.
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 4096, "one page only: {} bytes", bytes.len());
    assert!(bytes.starts_with(b"SQLite format 3\0"));
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i * 131 % 251) as u8;
    }
    std::fs::write(&path, &bytes).unwrap();

    let agent = agent_on(&path);
    assert_moved_aside(&agent, dir.path(), &bytes);
}

#[test]
fn a_store_of_a_newer_schema_is_left_alone_and_the_run_is_in_memory() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("why502.db");
    agent_on(&path).stop();
    // user_version, a big-endian u32 at offset 60 of the header: a newer why502's schema.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[60..64].copy_from_slice(&99u32.to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();

    let agent = agent_on(&path);
    assert_in_memory(&agent, "schema version 99");
    agent.stop();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the newer data, untouched"
    );
    assert_eq!(moved_aside(dir.path()), Vec::<PathBuf>::new());
}

/// Runs `body` on a thread of its own in a private mount namespace, with a tmpfs mounted
/// (`flags`, `options`) on a fresh directory it gets; unmounted when it returns.
fn with_tmpfs<T: Send>(
    flags: libc::c_ulong,
    options: &str,
    body: impl FnOnce(&Path) -> T + Send,
) -> T {
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            // SAFETY: plain syscalls on this thread's own namespace; the strings outlive them.
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare(CLONE_NEWNS)");
                // Mounts made here must not propagate back to the host's namespace.
                let root = CString::new("/").unwrap();
                let flags = libc::MS_REC | libc::MS_PRIVATE;
                let rc = libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    flags,
                    std::ptr::null(),
                );
                assert_eq!(rc, 0, "make / private: {}", std::io::Error::last_os_error());
            }
            let dir = tempfile::tempdir().unwrap();
            let target = CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
            let (fstype, data) = (
                CString::new("tmpfs").unwrap(),
                CString::new(options).unwrap(),
            );
            // SAFETY: as above.
            let rc = unsafe {
                libc::mount(
                    fstype.as_ptr(),
                    target.as_ptr(),
                    fstype.as_ptr(),
                    flags,
                    data.as_ptr().cast(),
                )
            };
            assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
            /// Unmounts before the directory is removed, also when `body` panics.
            struct Unmount(CString);
            impl Drop for Unmount {
                fn drop(&mut self) {
                    // SAFETY: as above.
                    unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
                }
            }
            let _unmount = Unmount(target);
            body(dir.path())
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[test]
fn a_read_only_directory_runs_in_memory() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    with_tmpfs(libc::MS_RDONLY, "size=64k", |dir| {
        let agent = agent_on(&dir.join("why502.db"));
        assert_in_memory(&agent, "Read-only file system");
    });
}

/// Fills the filesystem of `dir` (a small tmpfs): returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    // Bounded: the tmpfs is a few hundred KiB.
    for _ in 0..10_000 {
        if let Err(err) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
            return filler;
        }
    }
    panic!("{} never filled up", dir.display());
}

#[test]
fn a_full_disk_at_start_runs_in_memory() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    with_tmpfs(0, "size=256k", |dir| {
        fill(dir);
        let agent = agent_on(&dir.join("why502.db"));
        assert_in_memory(&agent, "full");
    });
}

/// Polls `why502 status --json` until `done` accepts its `store`.
fn wait_for_store_status(agent: &Agent, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let status = store_status(agent);
        if done(&status) {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "store status {status}; log: {:?}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_disk_that_fills_up_counts_the_failed_saves_and_saves_again_once_freed() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    with_tmpfs(0, "size=512k", |dir| {
        let agent = agent_on(&dir.join("why502.db"));
        assert_eq!(store_status(&agent)["persistent"], true);
        let filler = fill(dir);

        // An incident (a backend's crash behind nginx) the store cannot save.
        let mut backend = Backend::start(free_port());
        let upstream = format!("127.0.0.1:{}", backend.port);
        let nginx = Nginx::start(free_port(), &upstream);
        assert_eq!(http::get_status(nginx.port).unwrap(), 200);
        assert!(!backend.kill_with(libc::SIGSEGV).success());
        let requests = |n| {
            for _ in 0..n {
                assert_eq!(http::get_status(nginx.port).unwrap(), 502);
            }
        };
        requests(5);
        let status = wait_for_store_status(&agent, |s| s["write_errors"].as_u64() > Some(0));
        assert_eq!(status["persistent"], true, "the file, failing: {status}");
        let failed = status["write_errors"].as_f64().unwrap();
        // Read after the status: the counts only grow.
        assert!(metric(&agent, "why502_store_write_errors_total") >= failed);
        assert_eq!(
            logged(&agent, "saves failed so far").len(),
            1,
            "{:?}",
            agent.log()
        );
        assert_watching(&agent);

        // Room again: the incident's next update is saved.
        std::fs::remove_file(filler).unwrap();
        requests(3);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let listed = agent.cli_json(&["incidents"]);
            let incidents = listed["incidents"].as_array().unwrap();
            if incidents.iter().any(|i| i["upstream"] == upstream.as_str()) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not saved after the disk was freed: {listed}; log: {:?}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}
