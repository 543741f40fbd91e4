//! What procfs says about a process: parent, executable, redacted command line, cgroup,
//! unit, container; and who it is ([`Identity`]: what tells it from a later process that
//! gets the same pid).
//!
//! Every read is bounded: a command line is read up to [`CMDLINE_LIMIT`] bytes, whatever
//! its owner made it (a `setproctitle` title, megabytes of arguments); the other files
//! are small by the kernel's own limits (`stat`, `status`, the `exe` link, `cgroup`).

use std::{io::Read, path::Path};

use procfs::process::Process;

use super::{cgroup, redact::Redactor};
use crate::model::event::ProcessInfo;

/// The most of a command line that is read, and shown: a few KiB names any program and
/// its options; what is beyond is marked by [`TRUNCATED`].
pub const CMDLINE_LIMIT: usize = 4096;

/// Ends a command line that was cut at [`CMDLINE_LIMIT`].
pub const TRUNCATED: &str = "…";

/// Who a process is, as far as a pid can lie: the same pid with another start time is
/// another process (the pid was reused), with another name most likely another program
/// (an exec whose event the agent did not see).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// When the process started, in clock ticks after boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// Its main thread's name (field 2).
    pub comm: String,
    /// Its parent (field 4).
    pub ppid: u32,
}

/// Reads `/proc/<pid>/stat` alone: one open and one read of a few hundred bytes, what a
/// cached process is checked with (see `cache::VALIDATE_EVERY`). Measured on the test VM
/// (2 shared vCPUs under a load of 4, Linux 6.18, release build, 20,000 reads of its own
/// stat): 15–24 µs per read, against 95–108 µs for the files a whole [`read`] opens
/// (stat, status, cmdline, cgroup, the exe link).
pub fn identity(pid: u32) -> Option<Identity> {
    // The longest stat line: a 16-byte comm and 50 numbers of at most 20 digits.
    let mut buf = [0u8; 1280];
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    parse_stat(&buf[..len])
}

/// The fields of [`Identity`] in a `/proc/<pid>/stat` line. The name is between the first
/// `(` and the last `)`: it may hold spaces and parentheses of its own.
fn parse_stat(line: &[u8]) -> Option<Identity> {
    let open = line.iter().position(|&b| b == b'(')?;
    let close = line.iter().rposition(|&b| b == b')')?;
    let comm = String::from_utf8_lossy(line.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(line.get(close + 1..)?).ok()?;
    // After the name: field 3 (state) is the first.
    let mut fields = rest.split_ascii_whitespace();
    let ppid = fields.nth(1)?.parse().ok()?;
    let start_time = fields.nth(22 - 5)?.parse().ok()?;
    Some(Identity {
        start_time,
        comm,
        ppid,
    })
}

/// Reads `/proc/<pid>`; `None` when the process is gone (or was never visible to us).
/// The identity is read first: what follows belongs to it unless the pid was reused
/// within the few microseconds of the read (pids are handed out in order, so that takes
/// the whole pid space going round meanwhile).
pub fn read(pid: u32, redactor: &Redactor) -> Option<(Identity, ProcessInfo)> {
    let identity = identity(pid)?;
    let process = Process::new(pid as i32).ok()?;
    // Every field is best effort: a zombie has no exe or cmdline, a kernel thread no exe.
    // The real uid from status: `/proc/<pid>` itself is owned by root for a non-dumpable
    // process (one that changed its credentials), whoever runs it.
    let uid = process.status().ok().map(|s| s.ruid);
    let exe = process.exe().ok().map(|p| p.display().to_string());
    let cmdline = cmdline(pid, redactor);
    let cgroup = process.cgroups().ok().and_then(|groups| {
        let lines: Vec<(u32, String, &str)> = groups
            .0
            .iter()
            .map(|g| (g.hierarchy, g.controllers.join(","), g.pathname.as_str()))
            .collect();
        cgroup::path_from_proc_lines(lines.iter().map(|(h, c, p)| (*h, c.as_str(), *p)))
    });
    let placed = cgroup.as_deref().map(cgroup::identity).unwrap_or_default();
    let info = ProcessInfo {
        name: Some(identity.comm.clone()),
        ppid: Some(identity.ppid),
        uid,
        exe,
        cmdline,
        unit: placed.unit,
        container: placed.container,
        runtime: placed.runtime,
        pod: placed.pod.map(crate::sources::kubernetes::named),
        cgroup,
    };
    Some((identity, info))
}

/// The redacted command line, from at most [`CMDLINE_LIMIT`] bytes of it.
fn cmdline(pid: u32, redactor: &Redactor) -> Option<String> {
    let file = std::fs::File::open(format!("/proc/{pid}/cmdline")).ok()?;
    let mut raw = Vec::with_capacity(CMDLINE_LIMIT + 1);
    // One byte more than the limit tells a line of exactly the limit from a longer one.
    file.take(CMDLINE_LIMIT as u64 + 1)
        .read_to_end(&mut raw)
        .ok()?;
    bounded_cmdline(&raw, redactor)
}

/// `raw` is the start of `/proc/<pid>/cmdline` (NUL-separated arguments), longer than
/// [`CMDLINE_LIMIT`] when the line goes on. Redaction comes first, on whole words: the
/// word the limit cut is dropped, since half a secret is no longer recognisable as one
/// (`https://app:hunt` has lost the `@` that makes it a URL's password); what redaction
/// made is then cut to the limit, which can only shorten a mask or what is not secret.
pub fn bounded_cmdline(raw: &[u8], redactor: &Redactor) -> Option<String> {
    let truncated = raw.len() > CMDLINE_LIMIT;
    let mut kept = &raw[..raw.len().min(CMDLINE_LIMIT)];
    if truncated {
        let whole = kept.iter().rposition(|&b| b == 0 || b == b' ').unwrap_or(0);
        kept = &kept[..whole];
    }
    let args: Vec<String> = kept
        .split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect();
    if args.is_empty() && !truncated {
        return None;
    }
    let mut line = redactor.redact(&args);
    if truncated || line.len() > CMDLINE_LIMIT {
        let mut end = line.len().min(CMDLINE_LIMIT);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str(TRUNCATED);
    }
    Some(line)
}

/// The process's short name from `/proc/<pid>/stat`.
pub fn comm(pid: u32) -> Option<String> {
    identity(pid).map(|i| i.comm)
}

/// The cgroup v2 id (the inode of the cgroup's directory, what `bpf_get_current_cgroup_id`
/// returns) of a cgroup path, on a pure v2 host or a hybrid one.
pub fn cgroup_id(cgroup_path: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(|root| Path::new(root).join(cgroup_path.trim_start_matches('/')))
        .find_map(|dir| std::fs::metadata(dir).ok())
        .map_or(0, |m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(args: &[&str]) -> Vec<u8> {
        args.iter().flat_map(|a| a.bytes().chain([0])).collect()
    }

    #[test]
    fn stat_fields_are_found_past_a_name_with_spaces_and_parentheses() {
        let line = b"4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                     987654 10000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Identity {
                start_time: 987654,
                comm: "a) b (c)".into(),
                ppid: 17,
            })
        );
        assert_eq!(parse_stat(b"4242 (cut"), None);
    }

    #[test]
    fn own_identity_matches_procfs() {
        let me = identity(std::process::id()).unwrap();
        let stat = Process::myself().unwrap().stat().unwrap();
        assert_eq!(me.start_time, stat.starttime);
        assert_eq!(me.comm, stat.comm);
        assert_eq!(me.ppid, stat.ppid as u32);
    }

    #[test]
    fn a_short_command_line_is_whole_and_unmarked() {
        let redactor = Redactor::new(&["password"]);
        let line = bounded_cmdline(&raw(&["nginx", "-g", "daemon off;"]), &redactor);
        assert_eq!(line.as_deref(), Some("nginx -g daemon off;"));
        assert_eq!(bounded_cmdline(b"", &redactor), None);
        // Exactly the limit is not cut.
        let exact = "y".repeat(CMDLINE_LIMIT - 1);
        let line = bounded_cmdline(&raw(&[&exact]), &redactor).unwrap();
        assert_eq!(line, exact);
    }

    /// The limit falls inside a secret: what is shown holds none of it.
    #[test]
    fn a_secret_cut_by_the_limit_is_not_shown() {
        let redactor = Redactor::new(&["password"]);
        for secret_arg in [
            "https://app:hunter2hunter2@db.example/x",
            "--password=hunter2hunter2",
            "Authorization: Bearer hunter2hunter2",
        ] {
            for into_secret in [1, 5, 12] {
                let at = secret_arg.find("hunter2").unwrap() + into_secret;
                // "prog", then padding up to where the limit cuts the secret `at` bytes in.
                let padding = "p".repeat(CMDLINE_LIMIT - "prog\0".len() - 1 - at);
                let bytes = raw(&["prog", &padding, secret_arg, "--more", "args"]);
                assert_eq!(&bytes[CMDLINE_LIMIT - into_secret..][..7], b"hunter2");
                let line = bounded_cmdline(&bytes, &redactor).unwrap();
                assert!(!line.contains("hunt"), "{secret_arg} cut at {at}: ...{}", {
                    &line[line.len() - 40..]
                });
                assert!(line.ends_with(TRUNCATED), "{secret_arg}");
                assert!(line.starts_with("prog ppp"));
            }
        }
    }

    /// Redaction can lengthen a line (`-pX` becomes `-p***`): the result is still cut.
    #[test]
    fn a_line_that_redaction_lengthens_is_cut_too() {
        let redactor = Redactor::new(&["token"]);
        let args: Vec<&str> = std::iter::repeat_n("token=x", CMDLINE_LIMIT / 8).collect();
        let bytes = raw(&args);
        assert!(bytes.len() <= CMDLINE_LIMIT);
        let line = bounded_cmdline(&bytes, &redactor).unwrap();
        assert!(
            line.len() <= CMDLINE_LIMIT + TRUNCATED.len(),
            "{}",
            line.len()
        );
        assert!(line.ends_with(&format!("***{TRUNCATED}")) || line.ends_with(TRUNCATED));
        assert!(!line.contains("=x"));
    }

    /// One word longer than the limit (no separator to cut at): only the mark is left.
    #[test]
    fn a_single_endless_word_is_only_the_mark() {
        let redactor = Redactor::new(&["password"]);
        let bytes = "z".repeat(CMDLINE_LIMIT * 4).into_bytes();
        assert_eq!(
            bounded_cmdline(&bytes, &redactor).as_deref(),
            Some(TRUNCATED)
        );
    }
}
