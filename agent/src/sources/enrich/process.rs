//! What procfs says about a process: parent, executable, redacted command line, cgroup,
//! unit, container.

use std::path::Path;

use procfs::process::Process;

use super::{cgroup, redact::Redactor};
use crate::model::event::ProcessInfo;

/// Reads `/proc/<pid>`; `None` when the process is gone (or was never visible to us).
pub fn read(pid: u32, redactor: &Redactor) -> Option<ProcessInfo> {
    let process = Process::new(pid as i32).ok()?;
    // Every field is best effort: a zombie has no exe or cmdline, a kernel thread no exe.
    let stat = process.stat().ok();
    let ppid = stat.as_ref().map(|s| s.ppid as u32);
    let name = stat.map(|s| s.comm);
    // The real uid from status: `/proc/<pid>` itself is owned by root for a non-dumpable
    // process (one that changed its credentials), whoever runs it.
    let uid = process.status().ok().map(|s| s.ruid);
    let exe = process.exe().ok().map(|p| p.display().to_string());
    let cmdline = process
        .cmdline()
        .ok()
        .filter(|args| !args.is_empty())
        .map(|args| redactor.redact(&args));
    let cgroup = process.cgroups().ok().and_then(|groups| {
        let lines: Vec<(u32, String, &str)> = groups
            .0
            .iter()
            .map(|g| (g.hierarchy, g.controllers.join(","), g.pathname.as_str()))
            .collect();
        cgroup::path_from_proc_lines(lines.iter().map(|(h, c, p)| (*h, c.as_str(), *p)))
    });
    if ppid.is_none() && exe.is_none() && cmdline.is_none() && cgroup.is_none() {
        return None;
    }
    Some(ProcessInfo {
        name,
        ppid,
        uid,
        exe,
        cmdline,
        unit: cgroup.as_deref().and_then(cgroup::unit),
        container: cgroup.as_deref().and_then(cgroup::container_id),
        cgroup,
    })
}

/// The process's short name from `/proc/<pid>/stat`.
pub fn comm(pid: u32) -> Option<String> {
    Process::new(pid as i32).ok()?.stat().ok().map(|s| s.comm)
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
