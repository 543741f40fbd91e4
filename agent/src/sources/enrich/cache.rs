//! The process details cache, shared by every source that names processes (the ring
//! buffer's enrichment, the kernel-map pollers): one procfs read per process, bounded by
//! entries and by bytes.
//!
//! Cached because the process may be gone by the time an event about it is read: an
//! exit, or the victim of an OOM kill. The lock is only held for the map operation, never
//! across a procfs read.
//!
//! A pid is not a process: pids are reused, and a process that exits cleanly is not
//! reported (the kernel filters those out), so its entry outlives it. Every lookup of a
//! live process therefore checks the entry against the process's [`Identity`] (its start
//! time and name, one read of `/proc/<pid>/stat`); an entry is served without that check
//! only once the pid is gone, as the last process seen with it.

use std::{
    num::NonZeroUsize,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use lru::LruCache;

use super::{
    process::{self, Identity},
    redact::Redactor,
};
use crate::model::event::ProcessInfo;

/// How long an exited process's details keep serving events about it: the kernel reports
/// the exit before the process's sockets close, so a listener's close arrives just after.
pub const EXITED_GRACE: Duration = Duration::from_secs(2);

/// The cache's budget in bytes, beside its entries: command lines are up to
/// [`process::CMDLINE_LIMIT`] each, so the default 8192 entries could hold 40 MiB of them
/// if every process on the host had a long one. Typical entries (a few hundred bytes)
/// fill the entries long before the bytes.
pub const DEFAULT_BUDGET_BYTES: usize = 8 << 20;

/// How long a live process's entry is served without reading its identity again. A check
/// is one read of `/proc/<pid>/stat` (see [`process::identity`]: about a sixth of a full
/// read), too much for every event of a flood (a storm of refused connects from one
/// worker is one lookup per record); at most one check per entry per interval is not.
/// Another process can take the pid within it only if the pid space goes round that
/// fast, or if the old one's exit was reported: then every lookup checks.
pub const VALIDATE_EVERY: Duration = Duration::from_millis(100);

struct Cached {
    info: Arc<ProcessInfo>,
    /// Who the entry is about: served only to the same process.
    identity: Identity,
    /// When the process exited; past the grace period the pid may belong to a new process.
    exited: Option<Instant>,
    /// When the entry was last checked against the live process's identity.
    validated: Instant,
    /// What the entry holds, as counted against the budget.
    bytes: usize,
}

/// What an entry costs: its strings and the fixed parts around them (the map's node, the
/// `Arc`'s counts), roughly but never less than it is.
fn footprint(info: &ProcessInfo, identity: &Identity) -> usize {
    let strings = [
        &info.name,
        &info.exe,
        &info.cmdline,
        &info.cgroup,
        &info.unit,
        &info.container,
    ]
    .iter()
    .filter_map(|s| s.as_ref().map(String::len))
    .sum::<usize>();
    strings
        + identity.comm.len()
        + std::mem::size_of::<Cached>()
        + std::mem::size_of::<ProcessInfo>()
        + 64
}

struct Entries {
    lru: LruCache<u32, Cached>,
    bytes: usize,
    budget: usize,
}

impl Entries {
    fn pop(&mut self, pid: u32) {
        if let Some(cached) = self.lru.pop(&pid) {
            self.bytes -= cached.bytes;
        }
    }

    /// Inserts `cached`, then evicts the least recently used entries until both bounds
    /// hold (an entry over the whole budget is not kept at all).
    fn put(&mut self, pid: u32, cached: Cached) {
        self.pop(pid);
        self.bytes += cached.bytes;
        if let Some((_, evicted)) = self.lru.push(pid, cached) {
            self.bytes -= evicted.bytes;
        }
        while self.bytes > self.budget {
            let Some((_, evicted)) = self.lru.pop_lru() else {
                break;
            };
            self.bytes -= evicted.bytes;
        }
    }
}

/// Cheap to clone: clones share one cache.
#[derive(Clone)]
pub struct ProcessCache {
    cache: Arc<Mutex<Entries>>,
    redactor: Arc<Redactor>,
}

impl ProcessCache {
    pub fn new(entries: usize, redact_keys: &[String]) -> Self {
        Self::with_budget(entries, DEFAULT_BUDGET_BYTES, redact_keys)
    }

    /// A cache of at most `entries` entries and `budget` bytes ([`footprint`]).
    pub fn with_budget(entries: usize, budget: usize, redact_keys: &[String]) -> Self {
        Self {
            cache: Arc::new(Mutex::new(Entries {
                lru: LruCache::new(NonZeroUsize::new(entries.max(1)).expect("max(1)")),
                bytes: 0,
                budget,
            })),
            redactor: Arc::new(Redactor::new(redact_keys)),
        }
    }

    fn locked(&self) -> MutexGuard<'_, Entries> {
        // A panic elsewhere leaves a cache that is still a valid cache.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Details of the process that has `pid` now, or of the last one that had it if it is
    /// gone; read from procfs on a miss or when the cached entry is about another process.
    pub fn lookup(&self, pid: u32) -> Option<Arc<ProcessInfo>> {
        {
            let mut cache = self.locked();
            if let Some(cached) = cache.lru.get(&pid) {
                if cached.exited.is_none() && cached.validated.elapsed() < VALIDATE_EVERY {
                    return Some(cached.info.clone());
                }
            }
        }
        let now = process::identity(pid);
        {
            let mut cache = self.locked();
            if let Some(cached) = cache.lru.get_mut(&pid) {
                let in_grace = cached.exited.is_none_or(|at| at.elapsed() < EXITED_GRACE);
                let serve = match &now {
                    Some(identity) => in_grace && *identity == cached.identity,
                    // Gone: the entry is the last process seen with this pid.
                    None => in_grace,
                };
                if serve {
                    if now.is_some() {
                        cached.validated = Instant::now();
                    }
                    return Some(cached.info.clone());
                }
                cache.pop(pid);
            }
        }
        now.as_ref()?;
        let (identity, info) = process::read(pid, &self.redactor)?;
        let info = Arc::new(info);
        let bytes = footprint(&info, &identity);
        self.locked().put(
            pid,
            Cached {
                info: info.clone(),
                identity,
                exited: None,
                validated: Instant::now(),
                bytes,
            },
        );
        Some(info)
    }

    /// A new program in the same pid: the cached exe and command line are stale.
    pub fn forget(&self, pid: u32) {
        self.locked().pop(pid);
    }

    /// The process exited: its details serve a little longer, then are read afresh.
    pub fn exited(&self, pid: u32) {
        if let Some(cached) = self.locked().lru.get_mut(&pid) {
            cached.exited = Some(Instant::now());
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locked().lru.len()
    }

    #[cfg(test)]
    fn contains(&self, pid: u32) -> bool {
        self.locked().lru.contains(&pid)
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.locked().bytes
    }

    #[cfg(test)]
    fn age_exit(&self, pid: u32, by: Duration) {
        if let Some(cached) = self.locked().lru.get_mut(&pid) {
            cached.exited = Some(Instant::now() - by);
        }
    }

    /// Replaces the identity the entry of `pid` was read with, as if another process had
    /// had the pid when it was read.
    #[cfg(test)]
    fn pretend_read_from(&self, pid: u32, identity: Identity) {
        if let Some(cached) = self.locked().lru.get_mut(&pid) {
            cached.identity = identity;
            cached.validated = Instant::now() - VALIDATE_EVERY;
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

    /// `/bin/sh` waiting on its stdin with `args` after its own, once its command line is
    /// readable.
    fn reader(args: &[&str]) -> Child {
        let child = Child(
            std::process::Command::new("/bin/sh")
                .args(["-c", "read line", "sh"])
                .args(args)
                .stdin(std::process::Stdio::piped())
                .spawn()
                .expect("spawn /bin/sh"),
        );
        // As in looks_up_a_process_with_a_redacted_cmdline: until exec has set up the
        // arguments, the command line reads empty.
        let pid = child.0.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.is_empty()) {
            assert!(Instant::now() < deadline, "no command line for pid {pid}");
            std::thread::sleep(Duration::from_millis(1));
        }
        child
    }

    #[test]
    fn cache_is_bounded_by_entries() {
        let cache = ProcessCache::new(2, &[]);
        let children = [reader(&[]), reader(&[]), reader(&[])];
        for child in &children {
            assert!(cache.lookup(child.0.id()).is_some());
        }
        assert_eq!(cache.len(), 2);
        // The least recently used went.
        assert!(!cache.contains(children[0].0.id()));
        assert!(cache.contains(children[2].0.id()));
    }

    #[test]
    fn cache_is_bounded_by_bytes() {
        let padding = "x".repeat(3000);
        let children: Vec<Child> = (0..4).map(|_| reader(&[&padding])).collect();
        let one = {
            let probe = ProcessCache::new(1, &[]);
            probe.lookup(children[0].0.id()).unwrap();
            probe.bytes()
        };
        assert!(one > 3000, "an entry counts its command line: {one} bytes");
        // Room for two such entries, not three, whatever the entry count allows.
        let budget = one * 5 / 2;
        let cache = ProcessCache::with_budget(100, budget, &[]);
        for child in &children {
            assert!(cache.lookup(child.0.id()).is_some());
            assert!(cache.bytes() <= budget, "{} > {budget}", cache.bytes());
        }
        assert_eq!(cache.len(), 2);
        // Oldest first: the two looked up last are the ones kept.
        let kept: Vec<bool> = children.iter().map(|c| cache.contains(c.0.id())).collect();
        assert_eq!(kept, [false, false, true, true]);
        // Evictions give their bytes back: forgetting everything leaves nothing counted.
        for child in &children {
            cache.forget(child.0.id());
        }
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
    }

    /// The cached entry was read from another process that had the pid (its start time
    /// differs): the process now behind the pid is read afresh, not served the other's.
    #[test]
    fn an_entry_of_another_start_time_is_not_served() {
        let cache = ProcessCache::new(4, &[]);
        let child = reader(&[]);
        let pid = child.0.id();
        let first = cache.lookup(pid).unwrap();
        assert!(Arc::ptr_eq(&first, &cache.lookup(pid).unwrap()), "cached");
        let mut earlier = process::identity(pid).unwrap();
        earlier.start_time -= 1;
        cache.pretend_read_from(pid, earlier.clone());
        let fresh = cache.lookup(pid).unwrap();
        assert!(
            !Arc::ptr_eq(&first, &fresh),
            "served the other process's entry"
        );
        // Another name with the same start time: a program the agent did not see exec.
        earlier.start_time += 1;
        earlier.comm = "php-fpm".into();
        cache.pretend_read_from(pid, earlier);
        assert!(!Arc::ptr_eq(&fresh, &cache.lookup(pid).unwrap()));
        // Once the pid is gone, the last process seen with it is what events about it get.
        let cached = cache.lookup(pid).unwrap();
        drop(child);
        assert!(process::identity(pid).is_none(), "pid {pid} reaped");
        assert!(Arc::ptr_eq(&cached, &cache.lookup(pid).unwrap()));
    }

    /// A megabyte of arguments (16 of 64 KiB: one argument may not exceed 128 KiB) is
    /// read and kept as at most [`process::CMDLINE_LIMIT`] bytes, marked as cut.
    #[test]
    fn a_megabyte_command_line_is_cut_to_the_limit() {
        let arg = "a".repeat(64 << 10);
        let args: Vec<&str> = std::iter::repeat_n(arg.as_str(), 16).collect();
        let child = reader(&args);
        let raw = std::fs::read(format!("/proc/{}/cmdline", child.0.id())).unwrap();
        assert!(raw.len() > 1 << 20, "{} bytes", raw.len());
        let cache = ProcessCache::new(4, &[]);
        let info = cache.lookup(child.0.id()).unwrap();
        let cmdline = info.cmdline.as_deref().unwrap();
        assert!(
            cmdline.len() <= process::CMDLINE_LIMIT + process::TRUNCATED.len(),
            "{} bytes",
            cmdline.len()
        );
        assert!(
            cmdline.starts_with("/bin/sh -c read line sh"),
            "{cmdline:.60}"
        );
        assert!(cmdline.ends_with(process::TRUNCATED));
        assert!(
            cache.bytes() < 2 * process::CMDLINE_LIMIT,
            "{}",
            cache.bytes()
        );
    }
}
