//! What a `strace -f -qq` log says about a run, for the settings it can be held to: the
//! system calls made, the socket families, the namespaces created or entered, writable
//! and executable memory, and the paths written or opened.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Default)]
pub struct Trace {
    /// Each system call's name and how often it was made.
    pub calls: BTreeMap<String, usize>,
    /// `AF_…` of every socket(2).
    pub families: BTreeSet<String>,
    /// `net`, `mnt`… (RestrictNamespaces= names) of the CLONE_NEW* flags of setns, unshare
    /// and clone.
    pub namespaces: BTreeSet<&'static str>,
    /// mmap/mprotect lines asking for writable and executable memory.
    pub writable_code: Vec<String>,
    /// Absolute paths created, written, removed or re-moded (openat for writing, mkdir,
    /// unlink, rename, chmod, bind of a unix socket).
    pub written: BTreeSet<String>,
    /// Absolute paths opened at all.
    pub opened: BTreeSet<String>,
}

impl Trace {
    pub fn parse(text: &str) -> Self {
        let mut trace = Self::default();
        for line in text.lines() {
            let Some((name, args)) = call_of(line) else {
                continue; // "<... resumed>", signals
            };
            *trace.calls.entry(name.to_string()).or_default() += 1;
            let path = quoted_path(args).map(String::from);
            match name {
                "socket" => {
                    let family = args.split(',').next().unwrap_or_default();
                    trace.families.insert(family.to_string());
                }
                "setns" | "unshare" | "clone" | "clone3" => trace.namespaces.extend(
                    args.split(|c: char| !c.is_ascii_uppercase() && c != '_')
                        .filter_map(namespace_of),
                ),
                "mmap" | "mprotect"
                    if args.contains("PROT_WRITE") && args.contains("PROT_EXEC") =>
                {
                    trace.writable_code.push(line.to_string())
                }
                "open" | "openat" | "openat2" => {
                    let writes = ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
                        .iter()
                        .any(|flag| args.contains(flag));
                    if let Some(path) = path {
                        if writes {
                            trace.written.insert(path.clone());
                        }
                        trace.opened.insert(path);
                    }
                }
                "mkdir" | "mkdirat" | "unlink" | "unlinkat" | "rename" | "renameat"
                | "renameat2" | "chmod" | "fchmodat" | "truncate" => {
                    trace.written.extend(path);
                }
                "bind" if args.contains("AF_UNIX") => trace.written.extend(path),
                _ => {}
            }
        }
        trace
    }
}

/// From a `strace -f` line (`1234 name(args…) = …`): the call's name and arguments.
fn call_of(line: &str) -> Option<(&str, &str)> {
    let (pid, rest) = line.split_once(' ')?;
    pid.parse::<u32>().ok()?;
    let (name, args) = rest.trim_start().split_once('(')?;
    name.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        .then_some((name, args))
}

/// The first quoted argument, if it is an absolute path (a path relative to a directory
/// descriptor is checked where that directory was opened).
fn quoted_path(args: &str) -> Option<&str> {
    let (_, rest) = args.split_once('"')?;
    let (path, _) = rest.split_once('"')?;
    path.starts_with('/').then_some(path)
}

/// `CLONE_NEWNET` → `net`, as RestrictNamespaces= names them.
fn namespace_of(flag: &str) -> Option<&'static str> {
    Some(match flag {
        "CLONE_NEWCGROUP" => "cgroup",
        "CLONE_NEWIPC" => "ipc",
        "CLONE_NEWNET" => "net",
        "CLONE_NEWNS" => "mnt",
        "CLONE_NEWPID" => "pid",
        "CLONE_NEWUSER" => "user",
        "CLONE_NEWUTS" => "uts",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_lines_strace_writes() {
        let trace = Trace::parse(
            "100 openat(AT_FDCWD, \"/s/why502.db\", O_RDWR|O_CREAT|O_CLOEXEC, 0644) = 9\n\
             100 openat(AT_FDCWD, \"/proc/1/stat\", O_RDONLY|O_CLOEXEC <unfinished ...>\n\
             101 <... openat resumed>) = 10\n\
             101 socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, NETLINK_SOCK_DIAG) = 11\n\
             101 setns(12, CLONE_NEWNET) = 0\n\
             101 mmap(NULL, 4096, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE, -1, 0) = 0x1\n\
             101 bind(62, {sa_family=AF_UNIX, sun_path=\"/s/why502.sock\"}, 110) = 0\n\
             --- SIGTERM {si_signo=SIGTERM} ---\n",
        );
        assert_eq!(
            trace.calls.keys().collect::<Vec<_>>(),
            ["bind", "mmap", "openat", "setns", "socket"]
        );
        assert_eq!(trace.calls["openat"], 2);
        assert_eq!(trace.families, BTreeSet::from(["AF_NETLINK".to_string()]));
        assert_eq!(trace.namespaces, BTreeSet::from(["net"]));
        assert_eq!(trace.writable_code.len(), 1);
        assert_eq!(
            trace.written,
            BTreeSet::from(["/s/why502.db".to_string(), "/s/why502.sock".to_string()])
        );
        assert!(trace.opened.contains("/proc/1/stat"));
    }
}
