//! A process cannot write to root's terminal through why502: a backend whose name holds a
//! control sequence crashes behind nginx, and `why502 explain` shows that name escaped,
//! while `--json` keeps it exact.

use std::{
    os::unix::fs::symlink,
    process::{Child, Command},
    time::{Duration, Instant},
};

use serde_json::Value;
use why502_e2e::{agent::Agent, can_load_ebpf, free_port, http, nginx::Nginx, serial};

/// The backend's name: the kernel takes a process's `comm` from the name it was executed
/// by, so a symlink of this name gives the backend a colour sequence in its name, as
/// `prctl(PR_SET_NAME)` would.
const HOSTILE_NAME: &str = "\x1b[31mbackend";
/// How the CLI must show it.
const SHOWN: &str = r"\x1b[31mbackend";

/// The test backend, executed through a symlink named [`HOSTILE_NAME`]; killed and reaped
/// on drop, its directory removed, also when the test fails.
struct HostileBackend {
    child: Child,
    _dir: tempfile::TempDir,
}

impl HostileBackend {
    fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let link = dir.path().join(HOSTILE_NAME);
        symlink(why502_e2e::sibling_binary("why502-test-backend"), &link)
            .expect("symlink the test backend");
        let child = Command::new(&link)
            .arg(format!("127.0.0.1:{port}"))
            .spawn()
            .expect("start the test backend");
        let backend = Self { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "backend did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        backend
    }

    fn crash(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSEGV) };
        let status = self.child.wait().expect("wait for the backend");
        assert!(!status.success(), "{status}");
    }
}

impl Drop for HostileBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_process_name_with_escape_sequences_is_shown_escaped() {
    if !can_load_ebpf() {
        return;
    }
    let _serial = serial();
    let agent = Agent::start();
    let port = free_port();
    let mut backend = HostileBackend::start(port);
    let pid = backend.child.id();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).expect("read comm");
    assert_eq!(comm.trim_end_matches('\n'), HOSTILE_NAME);
    let upstream = format!("127.0.0.1:{port}");
    let nginx = Nginx::start(free_port(), &upstream);
    assert_eq!(http::get_status(nginx.port).unwrap(), 200);
    backend.crash();
    for _ in 0..5 {
        assert_eq!(http::get_status(nginx.port).unwrap(), 502);
    }

    // The crash's explanation names the backend: exactly, in JSON.
    let deadline = Instant::now() + Duration::from_secs(5);
    let incident = loop {
        let out = agent.cli(&["explain", "--last", "--json"]);
        let incident: Option<Value> = serde_json::from_slice(&out.stdout).ok();
        if let Some(incident) = incident
            .filter(|i| i["upstream"] == upstream && i["causes"][0]["process"]["pid"] == pid)
        {
            break incident;
        }
        assert!(
            Instant::now() < deadline,
            "no incident naming pid {pid}: {}\nagent log: {:?}",
            String::from_utf8_lossy(&out.stdout),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(incident["causes"][0]["cause"], "crash", "{incident:#}");
    assert_eq!(
        incident["causes"][0]["process"]["comm"], HOSTILE_NAME,
        "{incident:#}"
    );

    // For people: escaped, in the sentence and in no raw form anywhere.
    let out = agent.cli(&["explain", "--last"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let raw: Vec<char> = text
        .chars()
        .filter(|&c| c.is_control() && c != '\n')
        .collect();
    assert!(raw.is_empty(), "raw {raw:?} in\n{text}");
    assert!(
        text.contains(&format!("{SHOWN} (pid {pid}")),
        "the backend is not named, escaped:\n{text}"
    );
}
