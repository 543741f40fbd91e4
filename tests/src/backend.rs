//! The test backend (`why502-test-backend`) as a child process.

use std::{
    process::{Child, Command},
    time::{Duration, Instant},
};

pub struct Backend {
    child: Child,
    pub port: u16,
}

impl Backend {
    /// Starts a backend on 127.0.0.1:`port` and waits until it accepts connections.
    pub fn start(port: u16) -> Self {
        let child = Command::new(crate::sibling_binary("why502-test-backend"))
            .arg(format!("127.0.0.1:{port}"))
            .spawn()
            .expect("start the test backend");
        Self::ready(child, port)
    }

    /// Starts a backend inside `cgroup` (it joins before it execs, so every byte it
    /// allocates is charged there).
    pub fn start_in_cgroup(port: u16, cgroup: &crate::cgroup::MemoryCgroup) -> Self {
        let script = format!(
            "echo $$ > {} && exec {} 127.0.0.1:{port}",
            cgroup.procs().display(),
            crate::sibling_binary("why502-test-backend").display()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .spawn()
            .expect("start the test backend");
        Self::ready(child, port)
    }

    fn ready(child: Child, port: u16) -> Self {
        let backend = Self { child, port };
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the backend to exit (bounded), killing it past `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the backend") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("backend {} still running after {limit:?}", self.child.id());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` and waits for the backend to die of it.
    pub fn kill_with(&mut self, signal: i32) -> std::process::ExitStatus {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait().expect("wait for the backend")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
