//! Shared by the proxy-marking tests: the shared agent's process sets in the kernel
//! (`PROXIES`, `WATCHED`), read by id, and Python scripts that play the processes.
//!
//! The sets: the agent hands its own handles to the tasks that use them, so a test opens
//! the maps that the programs loaded by this test process use (another agent on the host
//! has its own).

#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData, MapInfo};

/// One of the kernel's sets of processes (tgid → 1).
pub struct ProcessSet {
    name: &'static str,
    map: HashMap<MapData, u32, u8>,
}

impl ProcessSet {
    /// `PROXIES`: processes whose responses are counted.
    pub fn proxies() -> Self {
        Self::open("PROXIES")
    }

    /// `WATCHED`: processes that listen.
    pub fn watched() -> Self {
        Self::open("WATCHED")
    }

    fn open(name: &'static str) -> Self {
        let ids: BTreeSet<u32> = own_program_ids();
        assert!(!ids.is_empty(), "this process holds no BPF program");
        let map_ids: BTreeSet<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| ids.contains(&p.id()))
            .filter_map(|p| p.map_ids().ok().flatten())
            .flatten()
            .collect();
        let id = map_ids
            .into_iter()
            .find(|&id| {
                MapInfo::from_id(id)
                    .ok()
                    .is_some_and(|info| info.name_as_str() == Some(name))
            })
            .unwrap_or_else(|| panic!("no map {name} among this process's programs' maps"));
        let data = MapData::from_id(id).expect("open the map by id");
        let map = HashMap::try_from(Map::HashMap(data)).expect("a hash of u32 → u8");
        Self { name, map }
    }

    pub fn contains(&self, tgid: u32) -> bool {
        self.map.get(&tgid, 0).is_ok()
    }

    /// Waits (bounded) until `tgid` is in the set.
    pub fn wait_contains(&self, tgid: u32, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.contains(tgid) {
            assert!(
                Instant::now() < deadline,
                "{what} (pid {tgid}) is not in {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl ProcessSet {
    /// Waits (bounded) until `tgid` has left the set: the kernel deletes entries at the
    /// process's exit, or the plain hash would fill up.
    pub fn wait_absent(&self, tgid: u32, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.contains(tgid) {
            assert!(
                Instant::now() < deadline,
                "{what} (pid {tgid}) is still in {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The ids of the BPF programs this process holds descriptors of (`/proc/self/fdinfo`).
fn own_program_ids() -> BTreeSet<u32> {
    let Ok(fds) = std::fs::read_dir("/proc/self/fdinfo") else {
        return BTreeSet::new();
    };
    fds.filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// A Python script in a process group of its own, talking by lines (stdout to the test,
/// stdin from it); the whole group is killed on drop (a failed assertion leaves nothing
/// behind).
pub struct Script {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

pub const PYTHON: &str = "/usr/bin/python3";

impl Script {
    pub fn start(source: &str) -> Self {
        use std::{
            io::BufRead,
            os::unix::process::CommandExt,
            process::{Command, Stdio},
        };
        assert!(std::path::Path::new(PYTHON).exists(), "{PYTHON} is missing");
        let mut child = Command::new(PYTHON)
            .args(["-c", source])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start python3");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stdin,
            lines,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the script prints, waited for (bounded).
    pub fn line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(5))
            .expect("the script printed its next line")
    }

    /// The next line, as the numbers it holds.
    pub fn numbers(&self) -> Vec<u32> {
        self.line()
            .split_whitespace()
            .map(|n| n.parse().expect("a number"))
            .collect()
    }

    pub fn send(&mut self, line: &str) {
        use std::io::Write;
        writeln!(self.stdin, "{line}").expect("write to the script");
        self.stdin.flush().unwrap();
    }

    /// Kills the script's process group (SIGKILL) and waits for its first process.
    pub fn kill(&mut self) {
        // SAFETY: kill(2) on the script's own process group.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the script to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the script did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the script's own process group.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
