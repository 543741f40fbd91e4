//! The process details cache, shared by every source that names processes (the ring
//! buffer's enrichment, the kernel-map pollers): one procfs read per process, bounded.
//!
//! Cached because the process may be gone by the time an event about it is read: an
//! exit, or the victim of an OOM kill. The lock is only held for the map operation, never
//! across a procfs read.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use lru::LruCache;

use super::{process, redact::Redactor};
use crate::model::event::ProcessInfo;

/// How long an exited process's details keep serving events about it: the kernel reports
/// the exit before the process's sockets close, so a listener's close arrives just after.
pub const EXITED_GRACE: Duration = Duration::from_secs(2);

struct Cached {
    info: Arc<ProcessInfo>,
    /// When the process exited; past the grace period the pid may belong to a new process.
    exited: Option<Instant>,
}

/// Cheap to clone: clones share one cache.
#[derive(Clone)]
pub struct ProcessCache {
    cache: Arc<Mutex<LruCache<u32, Cached>>>,
    redactor: Arc<Redactor>,
}

impl ProcessCache {
    pub fn new(entries: usize, redact_keys: &[String]) -> Self {
        Self {
            cache: Arc::new(Mutex::new(LruCache::new(
                NonZeroUsize::new(entries.max(1)).expect("max(1)"),
            ))),
            redactor: Arc::new(Redactor::new(redact_keys)),
        }
    }

    fn locked(&self) -> MutexGuard<'_, LruCache<u32, Cached>> {
        // A panic elsewhere leaves a cache that is still a valid cache.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cached details of `pid`, read from procfs on a miss.
    pub fn lookup(&self, pid: u32) -> Option<Arc<ProcessInfo>> {
        {
            let mut cache = self.locked();
            if let Some(cached) = cache.get(&pid) {
                if cached.exited.is_none_or(|at| at.elapsed() < EXITED_GRACE) {
                    return Some(cached.info.clone());
                }
                cache.pop(&pid);
            }
        }
        let info = Arc::new(process::read(pid, &self.redactor)?);
        self.locked().put(
            pid,
            Cached {
                info: info.clone(),
                exited: None,
            },
        );
        Some(info)
    }

    /// A new program in the same pid: the cached exe and command line are stale.
    pub fn forget(&self, pid: u32) {
        self.locked().pop(&pid);
    }

    /// The process exited: its details serve a little longer, then are read afresh.
    pub fn exited(&self, pid: u32) {
        if let Some(cached) = self.locked().get_mut(&pid) {
            cached.exited = Some(Instant::now());
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locked().len()
    }

    #[cfg(test)]
    fn age_exit(&self, pid: u32, by: Duration) {
        if let Some(cached) = self.locked().get_mut(&pid) {
            cached.exited = Some(Instant::now() - by);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child of the test's own, waiting on its stdin, killed (and reaped) on drop.
    struct Child(std::process::Child);

    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn looks_up_a_process_with_a_redacted_cmdline() {
        let cache = ProcessCache::new(4, &["password".to_string(), "token".to_string()]);
        let child = Child(
            std::process::Command::new("/bin/sh")
                .args([
                    "-c",
                    "read line",
                    "sh",
                    "--password",
                    "hunter2",
                    "--db-token=abc123",
                    "https://app:s3cret@db.example/x?token=t0k&user=app",
                    "--verbose",
                ])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("spawn /bin/sh"),
        );
        // `spawn` returns once the exec has begun, but the kernel releases the parent
        // before it has set up the new program's arguments: until then the command line
        // reads empty (and the cache would keep that).
        let pid = child.0.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty()) {
            assert!(Instant::now() < deadline, "no command line for pid {pid}");
            std::thread::sleep(Duration::from_millis(1));
        }
        let info = cache.lookup(pid).expect("the child is visible");
        assert_eq!(
            info.cmdline.as_deref(),
            Some(
                "/bin/sh -c read line sh --password *** --db-token=*** \
                 https://app:***@db.example/x?token=***&user=app --verbose"
            )
        );
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert_eq!(info.exe.as_deref(), sh.to_str());
        assert_eq!(info.ppid, Some(std::process::id()));
        assert_eq!(info.name.as_deref(), Some("sh"));
    }

    #[test]
    fn looks_up_itself_and_caches() {
        let cache = ProcessCache::new(4, &["password".to_string()]);
        let me = std::process::id();
        let info = cache.lookup(me).expect("own process is visible");
        assert_eq!(
            info.exe.as_deref(),
            std::env::current_exe()
                .ok()
                .and_then(|e| e.to_str().map(String::from))
                .as_deref()
        );
        assert!(info.cgroup.is_some());
        // Cached: the same Arc comes back, also through a clone of the cache.
        assert!(Arc::ptr_eq(&info, &cache.clone().lookup(me).unwrap()));
        // Past the grace period after an exit, the cached details are not trusted: the
        // pid is read afresh (here: still this process, so a new Arc).
        cache.age_exit(me, EXITED_GRACE);
        let fresh = cache.lookup(me).unwrap();
        assert!(!Arc::ptr_eq(&info, &fresh));
        assert_eq!(*info, *fresh);
        assert!(cache.lookup(u32::MAX - 1).is_none());
    }

    #[test]
    fn cache_is_bounded() {
        let cache = ProcessCache::new(2, &[]);
        for pid in [1, std::process::id()] {
            cache.lookup(pid);
        }
        cache.lookup(std::process::id());
        assert!(cache.len() <= 2);
    }
}
