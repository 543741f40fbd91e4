//! A process's memory cgroup: usage against limit, OOM counts and memory pressure, which
//! tell an upstream that was OOM-killed (or is about to be) inside its own cgroup apart
//! from one starved by the host.
//!
//! cgroup v2 (Linux 4.5; `memory.events` `oom_kill` since 4.13, `memory.pressure` since
//! 4.20 with PSI) is preferred; cgroup v1's memory controller (`memory.oom_control`
//! `oom_kill` since 4.13) is the fallback on hybrid or v1-only hosts.
//! See <https://docs.kernel.org/admin-guide/cgroup-v2.html#memory-interface-files> and
//! <https://docs.kernel.org/admin-guide/cgroup-v1/memory.html>.

use std::{
    io,
    path::{Component, Path, PathBuf},
};

use procfs::{ProcError, ProcessCGroup};

use super::psi::{self, Pressure, PsiError};

/// Where the unified hierarchy is mounted: hybrid hosts (systemd's default before v247)
/// first, because on them `/sys/fs/cgroup` is a tmpfs of v1 mounts and cannot hold
/// `memory.current`; then pure-v2 hosts.
const V2_ROOTS: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

/// Where the v1 memory controller is mounted on every mainstream distribution.
const V1_ROOT: &str = "/sys/fs/cgroup/memory";

/// v1 reports "no limit" as `PAGE_COUNTER_MAX` pages in bytes (9223372036854771712 on 4 KiB
/// pages, other values on other page sizes); anything from an exbibyte up is no real limit.
const V1_UNLIMITED: u64 = 1 << 60;

#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct CgroupMemory {
    /// The cgroup path as in `/proc/<pid>/cgroup`.
    pub path: String,
    /// 1 or 2.
    pub version: u8,
    /// v2 `memory.current`, v1 `memory.usage_in_bytes`.
    pub usage_bytes: u64,
    /// v2 `memory.max`, v1 `memory.limit_in_bytes`; `None` when unlimited.
    pub limit_bytes: Option<u64>,
    /// v2 `memory.events` `oom`: times the limit was hit and reclaim failed. v1 has no
    /// equivalent (`memory.failcnt` counts every charge failure, most of them reclaimed).
    pub oom_events: Option<u64>,
    /// v2 `memory.events` `oom_kill`, v1 `memory.oom_control` `oom_kill`.
    pub oom_kill_events: Option<u64>,
    /// v2 `memory.pressure`; v1 has no PSI.
    pub pressure: Option<Pressure>,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: u32 },
    #[error("cannot read /proc/{pid}/cgroup")]
    ProcCgroup {
        pid: u32,
        #[source]
        source: ProcError,
    },
    #[error("cgroup path {path:?} is outside the agent's cgroup namespace")]
    OutsideNamespace { path: String },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path}: {value:?} is not a number")]
    BadValue {
        path: String,
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("bad memory pressure in {path}")]
    Pressure {
        path: String,
        #[source]
        source: PsiError,
    },
}

/// The memory cgroup of `pid`; `Ok(None)` when it has no readable memory controller (e.g.
/// the v2 root cgroup, or memory accounting not enabled for its subtree).
pub fn read_for_pid(pid: u32) -> Result<Option<CgroupMemory>, CgroupError> {
    let entries = process_cgroups(pid)?;
    let v2_roots: Vec<PathBuf> = V2_ROOTS.iter().map(PathBuf::from).collect();
    match locate(&entries, &v2_roots, Path::new(V1_ROOT))? {
        Some(Located::V2 { dir, path }) => read_v2(&dir, &path).map(Some),
        Some(Located::V1 { dir, path }) => read_v1(&dir, &path).map(Some),
        None => Ok(None),
    }
}

fn process_cgroups(pid: u32) -> Result<Vec<ProcessCGroup>, CgroupError> {
    // No pid above i32::MAX exists (PID_MAX_LIMIT is 2^22).
    let Ok(id) = i32::try_from(pid) else {
        return Err(CgroupError::NoSuchProcess { pid });
    };
    procfs::process::Process::new(id)
        .and_then(|p| p.cgroups())
        .map(|c| c.0)
        .map_err(|source| match source {
            ProcError::NotFound(_) => CgroupError::NoSuchProcess { pid },
            source => CgroupError::ProcCgroup { pid, source },
        })
}

/// Which hierarchy to read, and the cgroup's directory in it.
#[derive(Debug, PartialEq)]
enum Located {
    V2 { dir: PathBuf, path: String },
    V1 { dir: PathBuf, path: String },
}

/// v2 when the process's unified cgroup has `memory.current` under one of `v2_roots`,
/// else v1 when a hierarchy with the memory controller lists it and its directory exists.
fn locate(
    entries: &[ProcessCGroup],
    v2_roots: &[PathBuf],
    v1_root: &Path,
) -> Result<Option<Located>, CgroupError> {
    if let Some(e) = entries
        .iter()
        .find(|e| e.hierarchy == 0 && e.controllers.is_empty())
    {
        let relative = relative(&e.pathname)?;
        for root in v2_roots {
            let dir = root.join(&relative);
            if dir.join("memory.current").is_file() {
                let path = e.pathname.clone();
                return Ok(Some(Located::V2 { dir, path }));
            }
        }
    }
    if let Some(e) = entries
        .iter()
        .find(|e| e.controllers.iter().any(|c| c == "memory"))
    {
        let dir = v1_root.join(relative(&e.pathname)?);
        if dir.join("memory.usage_in_bytes").is_file() {
            let path = e.pathname.clone();
            return Ok(Some(Located::V1 { dir, path }));
        }
    }
    Ok(None)
}

/// The cgroup path below a hierarchy's root. Paths from another cgroup namespace read as
/// `/../…`; joining those would walk out of the mount, so they are refused.
fn relative(path: &str) -> Result<PathBuf, CgroupError> {
    let outside = || CgroupError::OutsideNamespace {
        path: path.to_string(),
    };
    let mut out = PathBuf::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => return Err(outside()),
        }
    }
    if !path.starts_with('/') {
        return Err(outside());
    }
    Ok(out)
}

/// Reads a v2 cgroup directory; `path` is only recorded.
pub fn read_v2(dir: &Path, path: &str) -> Result<CgroupMemory, CgroupError> {
    let usage_bytes = required_u64(&dir.join("memory.current"))?;
    let max = dir.join("memory.max");
    let limit_bytes = match read_optional(&max)? {
        Some(text) if text.trim() == "max" => None,
        Some(text) => Some(parse_u64(&max, &text)?),
        None => None,
    };
    let events_path = dir.join("memory.events");
    let events = read_optional(&events_path)?;
    let event = |key| match &events {
        Some(text) => keyed(&events_path, text, key),
        None => Ok(None),
    };
    let pressure_path = dir.join("memory.pressure");
    let pressure = psi::read_file(&pressure_path).map_err(|source| CgroupError::Pressure {
        path: pressure_path.display().to_string(),
        source,
    })?;
    Ok(CgroupMemory {
        path: path.to_string(),
        version: 2,
        usage_bytes,
        limit_bytes,
        oom_events: event("oom")?,
        oom_kill_events: event("oom_kill")?,
        pressure,
    })
}

/// Reads a v1 memory controller directory; `path` is only recorded.
pub fn read_v1(dir: &Path, path: &str) -> Result<CgroupMemory, CgroupError> {
    let usage_bytes = required_u64(&dir.join("memory.usage_in_bytes"))?;
    let limit_path = dir.join("memory.limit_in_bytes");
    let limit_bytes = match read_optional(&limit_path)? {
        Some(text) => Some(parse_u64(&limit_path, &text)?).filter(|&l| l < V1_UNLIMITED),
        None => None,
    };
    let oom_path = dir.join("memory.oom_control");
    let oom_kill_events = match read_optional(&oom_path)? {
        Some(text) => keyed(&oom_path, &text, "oom_kill")?,
        None => None,
    };
    Ok(CgroupMemory {
        path: path.to_string(),
        version: 1,
        usage_bytes,
        limit_bytes,
        oom_events: None,
        oom_kill_events,
        pressure: None,
    })
}

/// A file's text, `None` if it does not exist (an older kernel, or a cgroup just removed).
fn read_optional(path: &Path) -> Result<Option<String>, CgroupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CgroupError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

fn required_u64(path: &Path) -> Result<u64, CgroupError> {
    let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_u64(path, &text)
}

fn parse_u64(path: &Path, text: &str) -> Result<u64, CgroupError> {
    let value = text.trim();
    value.parse().map_err(|source| CgroupError::BadValue {
        path: path.display().to_string(),
        value: value.to_string(),
        source,
    })
}

/// The value of `key` in a flat-keyed file (`key value` per line); `None` if absent.
fn keyed(path: &Path, text: &str, key: &str) -> Result<Option<u64>, CgroupError> {
    text.lines()
        .filter_map(|line| line.split_once(' '))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| parse_u64(path, v))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const PRESSURE: &str = "some avg10=2.50 avg60=1.00 avg300=0.25 total=123456\n\
                            full avg10=1.25 avg60=0.50 avg300=0.10 total=65432\n";
    const EVENTS: &str = "low 0\nhigh 12\nmax 40\noom 3\noom_kill 2\noom_group_kill 0\n";

    fn write(dir: &Path, files: &[(&str, &str)]) {
        fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
    }

    fn entries(text: &str) -> Vec<ProcessCGroup> {
        use procfs::FromBufRead;
        procfs::ProcessCGroups::from_buf_read(text.as_bytes())
            .unwrap()
            .0
    }

    #[test]
    fn v2_with_limit_events_and_pressure() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("system.slice/api.service");
        write(
            &dir,
            &[
                ("memory.current", "104857600\n"),
                ("memory.max", "268435456\n"),
                ("memory.events", EVENTS),
                ("memory.pressure", PRESSURE),
            ],
        );
        let m = read_v2(&dir, "/system.slice/api.service").unwrap();
        assert_eq!(m.path, "/system.slice/api.service");
        assert_eq!(m.version, 2);
        assert_eq!(m.usage_bytes, 104_857_600);
        assert_eq!(m.limit_bytes, Some(268_435_456));
        assert_eq!(m.oom_events, Some(3));
        assert_eq!(m.oom_kill_events, Some(2));
        assert_eq!(m.pressure.unwrap().some.total_us, 123_456);
    }

    #[test]
    fn v2_unlimited_and_sparse() {
        let tmp = tempfile::tempdir().unwrap();
        // memory.events before 4.13 had no oom_kill; no memory.pressure before 4.20.
        write(
            tmp.path(),
            &[
                ("memory.current", "4096\n"),
                ("memory.max", "max\n"),
                ("memory.events", "low 0\nhigh 0\nmax 0\noom 1\n"),
            ],
        );
        let m = read_v2(tmp.path(), "/a").unwrap();
        assert_eq!(m.limit_bytes, None);
        assert_eq!(m.oom_events, Some(1));
        assert_eq!(m.oom_kill_events, None);
        assert_eq!(m.pressure, None);
    }

    #[test]
    fn v1_limited_and_unlimited() {
        let tmp = tempfile::tempdir().unwrap();
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n";
        write(
            tmp.path(),
            &[
                ("memory.usage_in_bytes", "99958784\n"),
                ("memory.limit_in_bytes", "536870912\n"),
                ("memory.failcnt", "77\n"),
                ("memory.oom_control", oom),
            ],
        );
        let m = read_v1(tmp.path(), "/docker/abc").unwrap();
        assert_eq!(m.version, 1);
        assert_eq!(m.usage_bytes, 99_958_784);
        assert_eq!(m.limit_bytes, Some(536_870_912));
        assert_eq!(m.oom_events, None, "failcnt is not an OOM count");
        assert_eq!(m.oom_kill_events, Some(5));
        assert_eq!(m.pressure, None);

        fs::write(
            tmp.path().join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        // Before 4.13 oom_control had no oom_kill line.
        fs::write(
            tmp.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .unwrap();
        let m = read_v1(tmp.path(), "/docker/abc").unwrap();
        assert_eq!(m.limit_bytes, None);
        assert_eq!(m.oom_kill_events, None);
    }

    #[test]
    fn odd_values_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), &[("memory.current", "lots\n")]);
        assert!(matches!(
            read_v2(tmp.path(), "/"),
            Err(CgroupError::BadValue { .. })
        ));
        write(
            tmp.path(),
            &[("memory.current", "1\n"), ("memory.events", "oom x\n")],
        );
        assert!(matches!(
            read_v2(tmp.path(), "/"),
            Err(CgroupError::BadValue { .. })
        ));
        assert!(matches!(
            read_v1(tmp.path(), "/"),
            Err(CgroupError::Read { .. })
        ));
    }

    /// A hybrid host: the unified root has no `memory.current` for the process's cgroup,
    /// so the v1 memory hierarchy is used.
    #[test]
    fn locates_v1_on_hybrid_hosts() {
        let tmp = tempfile::tempdir().unwrap();
        let unified = tmp.path().join("unified");
        let v1 = tmp.path().join("memory");
        write(&unified, &[("memory.pressure", PRESSURE)]);
        write(
            &v1.join("process_api/x"),
            &[("memory.usage_in_bytes", "1\n")],
        );
        let e = entries("9:name=systemd:/\n4:memory:/process_api/x\n1:cpu:/\n0::/\n");
        assert_eq!(
            locate(&e, &[unified], &v1).unwrap(),
            Some(Located::V1 {
                dir: v1.join("process_api/x"),
                path: "/process_api/x".into()
            })
        );
    }

    #[test]
    fn locates_v2_first() {
        let tmp = tempfile::tempdir().unwrap();
        let unified = tmp.path().join("unified");
        let root = tmp.path().to_path_buf();
        let v1 = tmp.path().join("memory");
        write(&root.join("app.slice"), &[("memory.current", "1\n")]);
        write(&v1.join("app.slice"), &[("memory.usage_in_bytes", "1\n")]);
        let e = entries("4:memory:/app.slice\n0::/app.slice\n");
        assert_eq!(
            locate(&e, &[unified, root.clone()], &v1).unwrap(),
            Some(Located::V2 {
                dir: root.join("app.slice"),
                path: "/app.slice".into()
            })
        );
        // Nothing readable anywhere: no memory cgroup, not an error.
        let e = entries("0::/elsewhere\n");
        assert_eq!(locate(&e, &[root], &v1).unwrap(), None);
    }

    #[test]
    fn refuses_paths_outside_the_namespace() {
        let tmp = tempfile::tempdir().unwrap();
        let e = entries("0::/../../system.slice/x.service\n");
        assert!(matches!(
            locate(&e, &[tmp.path().into()], tmp.path()),
            Err(CgroupError::OutsideNamespace { .. })
        ));
    }

    #[test]
    fn missing_process() {
        assert!(matches!(
            read_for_pid(u32::MAX),
            Err(CgroupError::NoSuchProcess { .. })
        ));
        // PID_MAX_LIMIT is 2^22, so this one cannot exist either.
        assert!(matches!(
            read_for_pid(1 << 23),
            Err(CgroupError::NoSuchProcess { .. })
        ));
    }

    /// A memory cgroup of the test's own holding a sleeping child; on drop the child is
    /// killed and reaped and the cgroup removed.
    struct OwnCgroup {
        dir: PathBuf,
        child: std::process::Child,
    }

    impl OwnCgroup {
        /// `dir` is created, `limits` written into it and a child moved in.
        fn new(dir: PathBuf, limits: &[(&str, &str)]) -> Self {
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            let child = std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .expect("spawn sleep");
            let cgroup = Self { dir, child };
            for (file, value) in limits {
                fs::write(cgroup.dir.join(file), value).unwrap();
            }
            fs::write(
                cgroup.dir.join("cgroup.procs"),
                cgroup.child.id().to_string(),
            )
            .unwrap();
            cgroup
        }

        fn pid(&self) -> u32 {
            self.child.id()
        }

        fn read(&self, file: &str) -> u64 {
            required_u64(&self.dir.join(file)).unwrap()
        }
    }

    impl Drop for OwnCgroup {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if let Err(e) = fs::remove_dir(&self.dir) {
                eprintln!("cannot remove {}: {e}", self.dir.display());
            }
        }
    }

    /// The usage a reading reports, where the cgroup's own file read the same before and
    /// after it (the sleeping child allocates nothing, but the kernel may still settle a
    /// charge in between).
    fn settled_usage(cgroup: &OwnCgroup, file: &str) -> CgroupMemory {
        for _ in 0..100 {
            let before = cgroup.read(file);
            let m = read_for_pid(cgroup.pid())
                .unwrap()
                .expect("a memory cgroup");
            if before == cgroup.read(file) {
                assert_eq!(m.usage_bytes, before, "{file}");
                return m;
            }
        }
        panic!("{file} of {} never settled", cgroup.dir.display());
    }

    const TEST_LIMIT: u64 = 48 << 20;

    /// A real cgroup of the test's own, read through the process in it: on a host whose
    /// v2 root delegates the memory controller, a v2 cgroup beside the root; else, in the
    /// v1 memory hierarchy, a child of the test's own cgroup.
    #[test]
    fn live_own_cgroup() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: making a cgroup needs root");
            return;
        }
        let name = format!("why502-test-{}", std::process::id());
        let v2_root = V2_ROOTS.iter().map(Path::new).find(|root| {
            fs::read_to_string(root.join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        });
        if let Some(root) = v2_root {
            let cgroup =
                OwnCgroup::new(root.join(&name), &[("memory.max", &TEST_LIMIT.to_string())]);
            let m = settled_usage(&cgroup, "memory.current");
            assert_eq!(m.path, format!("/{name}"));
            assert_eq!(m.version, 2);
            assert_eq!(m.limit_bytes, Some(TEST_LIMIT));
            assert_eq!(m.oom_events, Some(0));
            assert_eq!(m.oom_kill_events, Some(0));
            assert!(m.pressure.is_some(), "no memory.pressure: {m:?}");
            return;
        }
        if !Path::new(V1_ROOT).join("memory.usage_in_bytes").is_file() {
            eprintln!("skipped: no memory controller on v2 or v1");
            return;
        }
        // Below the test's own memory cgroup, which may be a child of someone else's.
        let own = process_cgroups(std::process::id()).unwrap();
        let Some(Located::V1 { dir: parent, path }) =
            locate(&own, &[], Path::new(V1_ROOT)).unwrap()
        else {
            panic!("the v1 memory hierarchy is mounted but this process has no cgroup in it");
        };
        let cgroup = OwnCgroup::new(
            parent.join(&name),
            &[("memory.limit_in_bytes", &TEST_LIMIT.to_string())],
        );
        let m = settled_usage(&cgroup, "memory.usage_in_bytes");
        assert_eq!(
            m.path,
            format!("{}/{name}", path.trim_end_matches('/')),
            "{m:?}"
        );
        assert_eq!(m.version, 1);
        assert_eq!(m.limit_bytes, Some(TEST_LIMIT));
        assert_eq!(m.oom_events, None);
        assert_eq!(m.oom_kill_events, Some(0));
        assert_eq!(m.pressure, None);
    }
}
