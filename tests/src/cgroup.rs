//! A memory cgroup of the test's own: cgroup v2 `memory.max` where the memory controller is
//! on the v2 hierarchy, v1 `memory.limit_in_bytes` otherwise. Removed on drop.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

pub struct MemoryCgroup {
    dir: PathBuf,
}

impl MemoryCgroup {
    /// Creates `why502-test-<pid>-<name>` limited to `limit_bytes`, without swap.
    pub fn new(name: &str, limit_bytes: u64) -> Self {
        let name = format!("why502-test-{}-{name}", std::process::id());
        let v2_root = Path::new("/sys/fs/cgroup");
        let v2_has_memory = std::fs::read_to_string(v2_root.join("cgroup.controllers"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let (dir, limit_file) = if v2_has_memory {
            (v2_root.join(&name), "memory.max")
        } else {
            (
                Path::new("/sys/fs/cgroup/memory").join(&name),
                "memory.limit_in_bytes",
            )
        };
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let cgroup = Self { dir };
        std::fs::write(cgroup.dir.join(limit_file), limit_bytes.to_string()).unwrap();
        if v2_has_memory {
            let _ = std::fs::write(cgroup.dir.join("memory.swap.max"), "0");
        }
        cgroup
    }

    /// The file a process writes its pid to, to join.
    pub fn procs(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Killed members leave asynchronously: retry until the cgroup is empty.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            if let Ok(pids) = std::fs::read_to_string(self.procs()) {
                for pid in pids.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    // SAFETY: killing a test process left in the test's own cgroup.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}
