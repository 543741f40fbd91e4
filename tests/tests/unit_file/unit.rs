//! `deploy/why502.service` as systemd reads it: its settings, in order, and the system
//! calls its `SystemCallFilter=` lines allow once systemd's groups are expanded by
//! `systemd-analyze syscall-filter` (the groups of the systemd that will run the unit, not
//! a copy that would age).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::{Command, Output},
};

pub fn path() -> PathBuf {
    why502_e2e::prometheus::deploy_dir("why502.service")
}

pub fn text() -> String {
    std::fs::read_to_string(path()).expect("read deploy/why502.service")
}

/// The values of every `key=` line, in order, one entry per line (repeated keys add up or
/// subtract, as for SystemCallFilter).
pub fn lines_of(key: &str) -> Vec<String> {
    text()
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with(';'))
        .filter_map(|line| line.strip_prefix(key)?.strip_prefix('='))
        .map(String::from)
        .collect()
}

/// The one value of `key=`; panics unless it is set exactly once.
pub fn single(key: &str) -> String {
    match &lines_of(key)[..] {
        [value] => value.clone(),
        other => panic!("{key}= is set {} times in the unit: {other:?}", other.len()),
    }
}

/// The words of every `key=` line, as one set.
pub fn words(key: &str) -> BTreeSet<String> {
    lines_of(key)
        .iter()
        .flat_map(|value| value.split_whitespace().map(String::from))
        .collect()
}

/// The text of the comment lines (without `#`), joined.
pub fn comments() -> String {
    text()
        .lines()
        .filter_map(|line| line.trim().strip_prefix('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `systemd-analyze ARGS`; `None` (and why, printed) when it is not installed.
pub fn systemd_analyze(args: &[&str]) -> Option<Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(out) => Some(out),
        Err(err) => {
            eprintln!("skipped: systemd-analyze is not available ({err}); `cargo xtask test` installs the systemd package");
            None
        }
    }
}

/// Every group `systemd-analyze syscall-filter` lists, with its members (system calls and
/// nested groups).
fn syscall_groups() -> Option<BTreeMap<String, Vec<String>>> {
    let out = systemd_analyze(&["syscall-filter"])?;
    assert!(out.status.success(), "systemd-analyze syscall-filter");
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.starts_with('@') {
            let name = line.trim().to_string();
            groups.entry(name.clone()).or_default();
            current = Some(name);
        } else if let (Some(group), Some(member)) = (&current, line.strip_prefix("    ")) {
            let member = member.trim();
            if !member.is_empty() && !member.starts_with('#') {
                groups.get_mut(group).unwrap().push(member.to_string());
            }
        } else if line.trim().is_empty() {
            current = None;
        }
    }
    assert!(
        groups.contains_key("@system-service") && groups.contains_key("@default"),
        "systemd-analyze syscall-filter lists no @system-service: {groups:?}"
    );
    Some(groups)
}

fn expand(name: &str, groups: &BTreeMap<String, Vec<String>>, into: &mut BTreeSet<String>) {
    if !name.starts_with('@') {
        into.insert(name.to_string());
        return;
    }
    let members = groups
        .get(name)
        .unwrap_or_else(|| panic!("systemd knows no group {name}"));
    for member in members {
        expand(member, groups, into);
    }
}

/// The system calls the unit's `SystemCallFilter=` lines allow, as systemd computes them:
/// the first line decides allow or deny list (an allow list always has `@default`), then
/// each line adds to it, or takes away with `~`. `None` when systemd-analyze is missing.
pub fn allowed_syscalls() -> Option<BTreeSet<String>> {
    let groups = syscall_groups()?;
    let lines = lines_of("SystemCallFilter");
    let first = lines.first().expect("the unit has a SystemCallFilter");
    assert!(
        !first.starts_with('~'),
        "a deny list: the check needs the allow list it is written for"
    );
    let mut allowed = BTreeSet::new();
    expand("@default", &groups, &mut allowed);
    for line in &lines {
        let (remove, names) = match line.strip_prefix('~') {
            Some(rest) => (true, rest),
            None => (false, line.as_str()),
        };
        let mut set = BTreeSet::new();
        for name in names.split_whitespace() {
            expand(name, &groups, &mut set);
        }
        if remove {
            allowed.retain(|call| !set.contains(call));
        } else {
            allowed.extend(set);
        }
    }
    Some(allowed)
}

/// The namespace types `RestrictNamespaces=` lets the service create or enter.
pub fn allowed_namespaces() -> BTreeSet<String> {
    const ALL: [&str; 7] = ["cgroup", "ipc", "net", "mnt", "pid", "user", "uts"];
    let all = || ALL.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    match single("RestrictNamespaces").as_str() {
        "yes" | "true" => BTreeSet::new(),
        "no" | "false" => all(),
        list => match list.strip_prefix('~') {
            Some(denied) => {
                let denied: BTreeSet<String> =
                    denied.split_whitespace().map(String::from).collect();
                all().difference(&denied).cloned().collect()
            }
            None => list.split_whitespace().map(String::from).collect(),
        },
    }
}

/// The unit's `UMask=`, as a number.
pub fn umask() -> u32 {
    let value = single("UMask");
    u32::from_str_radix(&value, 8).unwrap_or_else(|_| panic!("UMask={value} is not octal"))
}

/// A copy of the unit in `dir` whose ExecStart runs `binary` instead of the installed
/// path, which is not there on a test machine (systemd-analyze verify checks it).
pub fn copy_with_binary(dir: &std::path::Path, binary: &std::path::Path, extra: &str) -> PathBuf {
    let text: String = text()
        .lines()
        .map(|line| match line.strip_prefix("ExecStart=") {
            Some(command) => {
                let args = command.split_once(' ').map_or("", |(_, args)| args);
                format!("ExecStart={} {args}\n", binary.display())
            }
            None => format!("{line}\n"),
        })
        .collect();
    let copy = dir.join("why502.service");
    std::fs::write(&copy, text + extra).expect("write the unit's copy");
    copy
}
