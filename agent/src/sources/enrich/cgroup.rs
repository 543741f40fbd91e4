//! A process's cgroup path → the systemd unit or container it belongs to.
//!
//! The path is also who a process is, as far as a local user cannot forge it: only root
//! creates cgroups outside the subtrees systemd delegates, so `/system.slice/nginx.service`
//! holds only what that service started. A user manager (`user@UID.service`) is such a
//! delegated subtree: whatever its user runs there (`systemd-run --user --unit=nginx`) is
//! named after the manager, never like the system unit of the same name.

use crate::model::incident::ProcessSummary;

/// Where a process sits in systemd's tree of units, read from its cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement<'a> {
    /// The host's unit: the outermost `.service` or `.scope` of the path, the one the
    /// host's systemd made (`nginx.service`, `user@1000.service`, `session-3.scope`,
    /// `docker-<id>.scope`).
    pub host_unit: Option<&'a str>,
    /// The first unit inside the host's unit: a delegated subtree's own (a user manager's
    /// `nginx.service`, a container's systemd's units).
    pub inner_unit: Option<&'a str>,
    /// The cgroup of the innermost of those two units (`/system.slice/nginx.service` for
    /// `/system.slice/nginx.service/worker`): all of that unit's processes share it.
    pub unit_cgroup: Option<&'a str>,
    /// The uid whose user manager the process runs under, when the host's unit is one.
    pub user_manager: Option<u32>,
}

impl Placement<'_> {
    /// A service of the host's systemd, outside any user manager: only root starts
    /// processes in it, whatever user each of them then runs as.
    pub fn is_system_service(&self) -> bool {
        self.user_manager.is_none() && self.host_unit.is_some_and(|u| u.ends_with(".service"))
    }
}

fn is_unit(segment: &str) -> bool {
    segment.ends_with(".service") || segment.ends_with(".scope")
}

/// `user@1000.service` → 1000.
fn user_manager_uid(unit: &str) -> Option<u32> {
    unit.strip_prefix("user@")?
        .strip_suffix(".service")?
        .parse()
        .ok()
}

/// Reads where `path` (`/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service`)
/// sits among systemd's units.
pub fn placement(path: &str) -> Placement<'_> {
    let mut placement = Placement {
        host_unit: None,
        inner_unit: None,
        unit_cgroup: None,
        user_manager: None,
    };
    // Each segment's end in `path`, to cut the unit's cgroup out of it.
    let mut end = 0;
    for segment in path.split('/') {
        end += segment.len();
        if is_unit(segment) {
            if placement.host_unit.is_none() {
                placement.host_unit = Some(segment);
                placement.user_manager = user_manager_uid(segment);
                placement.unit_cgroup = Some(&path[..end]);
            } else {
                placement.inner_unit = Some(segment);
                placement.unit_cgroup = Some(&path[..end]);
                break;
            }
        }
        end += 1;
    }
    placement
}

/// The unit as people read it: the host's unit (`nginx.service`, `session-3.scope`), and
/// the unit inside it when it delegates (`user@1000.service/nginx.service`: the user
/// manager of uid 1000 runs that `nginx.service`, not the host's systemd).
pub fn unit(path: &str) -> Option<String> {
    let placement = placement(path);
    let host = placement.host_unit?;
    Some(match placement.inner_unit {
        Some(inner) => format!("{host}/{inner}"),
        None => host.to_string(),
    })
}

/// Whether a unit as [`unit`] names it is a service of the host's systemd outside any
/// user manager (for a process whose cgroup path is not known, only its unit).
pub fn is_system_service_unit(unit: &str) -> bool {
    let host = unit.split('/').next().unwrap_or(unit);
    user_manager_uid(host).is_none() && host.ends_with(".service")
}

/// Whether `process` runs in a service of the host's systemd outside any user manager
/// (by its cgroup, else by its unit): then its name is that service's to give, and nobody
/// else's.
pub fn in_system_service(process: &ProcessSummary) -> bool {
    match (&process.cgroup, &process.unit) {
        (Some(path), _) => placement(path).is_system_service(),
        (None, Some(unit)) => is_system_service_unit(unit),
        (None, None) => false,
    }
}

/// A 64-hex-digit container id anywhere in the path (`docker-<id>.scope`, `/docker/<id>`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`, kubepods…).
pub fn container_id(path: &str) -> Option<String> {
    path.split(['/', '-', '.', ':'])
        .rev()
        .find(|p| p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

/// The cgroup path from `/proc/<pid>/cgroup` lines: the v2 entry (`0::/…`), else v1's
/// systemd hierarchy.
pub fn path_from_proc_lines<'a>(
    lines: impl Iterator<Item = (u32, &'a str, &'a str)>,
) -> Option<String> {
    let mut systemd_v1 = None;
    for (hierarchy, controllers, path) in lines {
        if hierarchy == 0 && controllers.is_empty() {
            return Some(path.to_string());
        }
        if controllers == "name=systemd" {
            systemd_v1 = Some(path.to_string());
        }
    }
    systemd_v1
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1e2b8c9d0a4f1e2b8c9d0a4f1e2b8c9d0a4f1e2b8c9d0a4f1e2b8c9d0a1234";

    #[test]
    fn units() {
        assert_eq!(
            unit("/system.slice/php8.2-fpm.service").as_deref(),
            Some("php8.2-fpm.service")
        );
        assert_eq!(
            unit("/user.slice/user-0.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(
            unit("/system.slice/nginx.service/worker").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(unit("/"), None);
    }

    /// Real paths as systemd lays them out, and who each one says the process is.
    #[test]
    fn placements() {
        struct Case {
            path: &'static str,
            unit: Option<&'static str>,
            unit_cgroup: Option<&'static str>,
            user_manager: Option<u32>,
            system_service: bool,
        }
        let cases = [
            // A system unit, and a sub-cgroup of one (a service that splits its workers).
            Case {
                path: "/system.slice/nginx.service",
                unit: Some("nginx.service"),
                unit_cgroup: Some("/system.slice/nginx.service"),
                user_manager: None,
                system_service: true,
            },
            Case {
                path: "/system.slice/nginx.service/worker",
                unit: Some("nginx.service"),
                unit_cgroup: Some("/system.slice/nginx.service"),
                user_manager: None,
                system_service: true,
            },
            // `systemd-run --user --unit=nginx`: the user manager's nginx, not the host's.
            Case {
                path: "/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service",
                unit: Some("user@1000.service/nginx.service"),
                unit_cgroup: Some(
                    "/user.slice/user-1000.slice/user@1000.service/app.slice/nginx.service",
                ),
                user_manager: Some(1000),
                system_service: false,
            },
            // A user's service that names a cgroup of its own `user@0.service` is still
            // uid 1000's: the outermost manager counts.
            Case {
                path: "/user.slice/user-1000.slice/user@1000.service/app.slice/user@0.service/nginx.service",
                unit: Some("user@1000.service/user@0.service"),
                unit_cgroup: Some(
                    "/user.slice/user-1000.slice/user@1000.service/app.slice/user@0.service",
                ),
                user_manager: Some(1000),
                system_service: false,
            },
            // The user manager itself (its init.scope), and a scope the user ran.
            Case {
                path: "/user.slice/user-1000.slice/user@1000.service/init.scope",
                unit: Some("user@1000.service/init.scope"),
                unit_cgroup: Some("/user.slice/user-1000.slice/user@1000.service/init.scope"),
                user_manager: Some(1000),
                system_service: false,
            },
            Case {
                path: "/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope",
                unit: Some("user@1000.service/run-r1.scope"),
                unit_cgroup: Some(
                    "/user.slice/user-1000.slice/user@1000.service/app.slice/run-r1.scope",
                ),
                user_manager: Some(1000),
                system_service: false,
            },
            // A login session: its user's processes and whatever they sudo'ed, together.
            Case {
                path: "/user.slice/user-1000.slice/session-3.scope",
                unit: Some("session-3.scope"),
                unit_cgroup: Some("/user.slice/user-1000.slice/session-3.scope"),
                user_manager: None,
                system_service: false,
            },
            // A service delegating to its user (Delegate=yes): named after the host's unit.
            Case {
                path: "/system.slice/build.service/nginx.service",
                unit: Some("build.service/nginx.service"),
                unit_cgroup: Some("/system.slice/build.service/nginx.service"),
                user_manager: None,
                system_service: true,
            },
            // A container with systemd inside: the container's scope first.
            Case {
                path: "/system.slice/docker-0123abcd.scope/system.slice/nginx.service",
                unit: Some("docker-0123abcd.scope/nginx.service"),
                unit_cgroup: Some("/system.slice/docker-0123abcd.scope/system.slice/nginx.service"),
                user_manager: None,
                system_service: false,
            },
            Case {
                path: "/",
                unit: None,
                unit_cgroup: None,
                user_manager: None,
                system_service: false,
            },
            // Not a unit: a name that merely contains `.service`.
            Case {
                path: "/why502.services/user@1000.service.d",
                unit: None,
                unit_cgroup: None,
                user_manager: None,
                system_service: false,
            },
        ];
        for case in cases {
            let placement = placement(case.path);
            assert_eq!(unit(case.path).as_deref(), case.unit, "{}", case.path);
            assert_eq!(placement.unit_cgroup, case.unit_cgroup, "{}", case.path);
            assert_eq!(placement.user_manager, case.user_manager, "{}", case.path);
            assert_eq!(
                placement.is_system_service(),
                case.system_service,
                "{}",
                case.path
            );
            if let Some(unit) = case.unit {
                assert_eq!(is_system_service_unit(unit), case.system_service, "{unit}");
            }
        }
    }

    #[test]
    fn containers() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/kubepods.slice/kubepods-burstable.slice/cri-containerd-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(ID), "{path}");
        }
        assert_eq!(container_id("/system.slice/nginx.service"), None);
    }

    #[test]
    fn v2_wins_over_v1() {
        let lines = vec![
            (1, "name=systemd", "/system.slice/a.service"),
            (0, "", "/system.slice/b.service"),
        ];
        assert_eq!(
            path_from_proc_lines(lines.into_iter()).as_deref(),
            Some("/system.slice/b.service")
        );
        let v1 = vec![
            (4, "memory", "/x"),
            (1, "name=systemd", "/system.slice/a.service"),
        ];
        assert_eq!(
            path_from_proc_lines(v1.into_iter()).as_deref(),
            Some("/system.slice/a.service")
        );
    }
}
