//! The unit's restrictions applied to a child process without systemd (PID 1 here is not
//! systemd, so the unit cannot be started): the capability bounding set, no new
//! privileges, the umask and, optionally, its system call filter as a seccomp program that
//! answers anything else with the unit's errno, as systemd's does.
//!
//! Not reproduced: the mount namespace (ProtectSystem, PrivateTmp, PrivateDevices…),
//! IPAddressDeny (a cgroup BPF program) and the other seccomp-based settings; the strace
//! test checks the address families, namespaces and W^X of a real run instead.

use std::{collections::BTreeSet, os::unix::process::CommandExt, process::Command};

/// Numbers from the kernel headers (linux-libc-dev, which libc6-dev and so every Rust
/// toolchain's C linker needs): a table copied here would go stale with the kernel.
fn header_numbers(path: &str, prefix: &str) -> Vec<(String, u32)> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (define, name, value) = (words.next()?, words.next()?, words.next()?);
            let name = name.strip_prefix(prefix)?;
            (define == "#define").then_some(())?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// `CAP_BPF` → 39, from <linux/capability.h>.
pub fn capability_number(name: &str) -> u32 {
    let name = name.strip_prefix("CAP_").unwrap_or(name);
    header_numbers("/usr/include/linux/capability.h", "CAP_")
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no capability CAP_{name} in <linux/capability.h>"))
        .1
}

/// The x86-64 system call numbers by name, from <asm/unistd_64.h>.
#[cfg(target_arch = "x86_64")]
fn syscall_numbers() -> Vec<(String, u32)> {
    header_numbers("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", "__NR_")
}

/// Whether this process has capability `cap` in its effective set (/proc/self/status).
fn has_effective(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let mask = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .expect("CapEff in /proc/self/status");
    mask & (1 << cap) != 0
}

pub struct Sandbox {
    /// Capabilities to drop from the bounding set: all the kernel has but the unit's.
    drop: Vec<u32>,
    umask: u32,
    /// `Limit*=` of the unit: resource, soft = hard.
    limits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    /// `SupplementaryGroups=`, as gids.
    groups: Vec<libc::gid_t>,
    seccomp: Option<Vec<libc::sock_filter>>,
}

impl Sandbox {
    /// The unit's bounding set (names as in CapabilityBoundingSet=) and umask.
    pub fn new(keep: &BTreeSet<String>, umask: u32) -> Self {
        let keep: BTreeSet<u32> = keep.iter().map(|n| capability_number(n)).collect();
        let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .expect("read cap_last_cap")
            .trim()
            .parse()
            .expect("a number");
        Self {
            drop: (0..=last).filter(|cap| !keep.contains(cap)).collect(),
            umask,
            limits: Vec::new(),
            groups: Vec::new(),
            seccomp: None,
        }
    }

    /// Sets `resource` as `Limit…=value` does (soft and hard): `infinity` or a number.
    /// systemd sets it as PID 1, with every capability; a test runner without
    /// CAP_SYS_RESOURCE (some VMs' init withholds it) cannot raise a hard limit, and gets
    /// its own hard limit instead, said on stderr.
    pub fn with_limit(&mut self, resource: libc::__rlimit_resource_t, value: &str) {
        let mut limit = match value {
            "infinity" => libc::RLIM_INFINITY,
            number => number
                .parse()
                .unwrap_or_else(|_| panic!("limit {number}: only a plain number is read")),
        };
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: a valid rlimit to fill.
        assert_eq!(unsafe { libc::getrlimit(resource, &mut current) }, 0);
        if limit > current.rlim_max && !has_effective(capability_number("CAP_SYS_RESOURCE")) {
            eprintln!(
                "resource {resource}: {value} is above this test's hard limit {} and it lacks CAP_SYS_RESOURCE: kept at {}",
                current.rlim_max, current.rlim_max
            );
            limit = current.rlim_max;
        }
        self.limits.push((resource, limit));
    }

    /// Adds supplementary groups, as `SupplementaryGroups=` does.
    pub fn with_groups(&mut self, groups: &[libc::gid_t]) {
        self.groups.extend_from_slice(groups);
    }

    /// Adds a seccomp filter that allows `allowed` and fails every other call with
    /// `errno`; `false` (nothing added) where this test knows no system call table.
    pub fn with_syscall_filter(&mut self, allowed: &BTreeSet<String>, errno: i32) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            // Names of other architectures (arm_fadvise64_64…) have no number here.
            let numbers: Vec<u32> = syscall_numbers()
                .into_iter()
                .filter(|(name, _)| allowed.contains(name))
                .map(|(_, nr)| nr)
                .collect();
            assert!(numbers.len() > 100, "only {} calls allowed", numbers.len());
            self.seccomp = Some(filter_program(&numbers, errno));
            true
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (allowed, errno);
            false
        }
    }

    /// Makes `command` run under the sandbox (applied between fork and exec).
    pub fn apply(self, command: &mut Command) {
        let Self {
            drop,
            umask,
            limits,
            groups,
            seccomp,
        } = self;
        // SAFETY: the closure only makes system calls (no allocation, no locks), as
        // pre_exec requires; what it reads is moved in and outlives the exec.
        unsafe {
            command.pre_exec(move || {
                let check = |rc: libc::c_int| {
                    if rc < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                };
                libc::umask(umask as libc::mode_t);
                if !groups.is_empty() {
                    check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                }
                // Before the bounding set loses CAP_SYS_RESOURCE, as systemd does (it
                // sets the limits as PID 1).
                for &(resource, value) in &limits {
                    let limit = libc::rlimit {
                        rlim_cur: value,
                        rlim_max: value,
                    };
                    check(libc::setrlimit(resource, &limit))?;
                }
                for &cap in &drop {
                    check(libc::prctl(
                        libc::PR_CAPBSET_DROP,
                        cap as libc::c_ulong,
                        0,
                        0,
                        0,
                    ))?;
                }
                // Root's permitted set after exec is the bounding set: that is all that
                // CapabilityBoundingSet= does to a root service (the ambient set, which
                // is the same, adds nothing to root's).
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
                if let Some(filter) = &seccomp {
                    let program = libc::sock_fprog {
                        len: filter.len() as u16,
                        filter: filter.as_ptr() as *mut libc::sock_filter,
                    };
                    check(libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        &program as *const libc::sock_fprog,
                    ))?;
                }
                Ok(())
            });
        }
    }
}

/// A classic BPF seccomp program: other architectures and the x32 ABI killed
/// (SystemCallArchitectures=native), each allowed number a comparison followed by ALLOW
/// (two instructions each, so that no jump exceeds the 8-bit offset), anything else the
/// errno.
#[cfg(target_arch = "x86_64")]
fn filter_program(allowed: &[u32], errno: i32) -> Vec<libc::sock_filter> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let stmt = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    let ret = libc::BPF_RET | libc::BPF_K;
    // struct seccomp_data: int nr; __u32 arch; …
    let mut program = vec![
        stmt(load, 4),
        jump(jeq, AUDIT_ARCH_X86_64, 1, 0),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
        stmt(load, 0),
        jump(
            libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K,
            X32_SYSCALL_BIT,
            0,
            1,
        ),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
    ];
    for &nr in allowed {
        program.push(jump(jeq, nr, 0, 1));
        program.push(stmt(ret, libc::SECCOMP_RET_ALLOW));
    }
    program.push(stmt(
        ret,
        libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA),
    ));
    assert!(program.len() <= 4096, "BPF_MAXINSNS");
    program
}
