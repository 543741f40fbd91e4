//! A process's cgroup path → the systemd unit or container it belongs to.
//!
//! The path is also who a process is, as far as a local user cannot forge it: only root
//! creates cgroups outside the subtrees systemd delegates, so `/system.slice/nginx.service`
//! holds only what that service started. A user manager (`user@UID.service`) is such a
//! delegated subtree: whatever its user runs there (`systemd-run --user --unit=nginx`) is
//! named after the manager, never like the system unit of the same name.

use crate::model::incident::{Pod, ProcessSummary, Qos, Runtime};

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

/// The container a process runs in, by its cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Container<'a> {
    /// The runtime's 64-hex-digit id.
    pub id: &'a str,
    /// `None` where the path names no runtime (a kubelet with the cgroupfs driver puts the
    /// bare id under the pod's cgroup, whichever runtime made it).
    pub runtime: Option<Runtime>,
}

/// Segment prefixes (with the systemd driver, before `.scope`) that runtimes give their
/// containers' cgroups. The monitors (`crio-conmon-`, `libpod-conmon-`) are the
/// runtime's process for that container, in its pod's cgroup: the same container's.
const RUNTIME_PREFIXES: [(&str, Runtime); 6] = [
    ("docker-", Runtime::Docker),
    ("cri-containerd-", Runtime::Containerd),
    ("crio-conmon-", Runtime::CriO),
    ("crio-", Runtime::CriO),
    ("libpod-conmon-", Runtime::Podman),
    ("libpod-", Runtime::Podman),
];

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The innermost container in `path`: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope` (systemd's driver), `/docker/<id>`,
/// `/libpod_parent/libpod-<id>`, `/kubepods/burstable/pod<uid>/<id>` (cgroupfs).
pub fn container(path: &str) -> Option<Container<'_>> {
    let segments: Vec<&str> = path.split('/').collect();
    for (at, segment) in segments.iter().enumerate().rev() {
        let name = segment.strip_suffix(".scope").unwrap_or(segment);
        for (prefix, runtime) in RUNTIME_PREFIXES {
            if let Some(id) = name.strip_prefix(prefix).filter(|id| is_container_id(id)) {
                return Some(Container {
                    id,
                    runtime: Some(runtime),
                });
            }
        }
        if is_container_id(segment) {
            let parent = at.checked_sub(1).map(|p| segments[p]);
            let runtime = match parent {
                Some("docker") => Some(Runtime::Docker),
                _ => None,
            };
            return Some(Container {
                id: segment,
                runtime,
            });
        }
    }
    None
}

/// The container's id (see [`container`]).
pub fn container_id(path: &str) -> Option<String> {
    container(path).map(|c| c.id.to_string())
}

/// A pod UID as the kubelet writes it into a cgroup name: a UUID (`_` for `-` with
/// systemd's driver, where `-` separates the slice's parents), or the 32 hex digits of a
/// static pod's config hash. Returned with dashes, as `metadata.uid` is.
fn pod_uid(raw: &str) -> Option<String> {
    let uid = raw.replace('_', "-");
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let groups: Vec<&str> = uid.split('-').collect();
    let uuid = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]) && groups.iter().all(|g| hex(g));
    let config_hash = uid.len() == 32 && hex(&uid);
    (uuid || config_hash).then_some(uid)
}

fn qos_named(name: &str) -> Option<Qos> {
    match name {
        "burstable" => Some(Qos::Burstable),
        "besteffort" => Some(Qos::BestEffort),
        _ => None,
    }
}

/// The Kubernetes pod of `path`, in either kubelet cgroup driver's layout:
/// systemd's `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/…`
/// (a guaranteed pod directly under `kubepods.slice`: `kubepods-pod<uid>.slice`; kind's
/// nested `kubelet-kubepods-…` too), and cgroupfs's `/kubepods/burstable/pod<uid>/<id>`
/// (guaranteed: `/kubepods/pod<uid>/…`). Paths read from inside a cgroup namespace
/// (`/../../kubepods-besteffort-pod<uid>.slice/…`) keep the systemd driver's QoS, which is
/// in the pod's own name; cgroupfs's is in a parent that may be cut off: then `None`.
pub fn pod(path: &str) -> Option<Pod> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (at, segment) in segments.iter().enumerate() {
        if let Some(slice) = segment.strip_suffix(".slice") {
            let parts: Vec<&str> = slice.split('-').collect();
            let Some((last, parents)) = parts.split_last() else {
                continue;
            };
            let (Some(raw), true) = (last.strip_prefix("pod"), parents.contains(&"kubepods"))
            else {
                continue;
            };
            if let Some(uid) = pod_uid(raw) {
                let qos = parents.iter().find_map(|p| qos_named(p));
                return Some(Pod {
                    uid,
                    qos: Some(qos.unwrap_or(Qos::Guaranteed)),
                    ..Pod::default()
                });
            }
        } else if let Some(uid) = segment.strip_prefix("pod").and_then(pod_uid) {
            let before = &segments[..at];
            let under_kubepods = before
                .iter()
                .any(|s| *s == "kubepods" || s.ends_with("kubepods"));
            // Relative to a cgroup namespace's root the `kubepods` parent may be cut off;
            // a UUID-named `pod…` below `..` is still the kubelet's.
            let relative = before.first() == Some(&"..");
            if !under_kubepods && !relative {
                continue;
            }
            let qos = match before.last() {
                Some(parent) if parent.ends_with("kubepods") => Some(Qos::Guaranteed),
                Some(parent) => qos_named(parent),
                None => None,
            };
            return Some(Pod {
                uid,
                qos,
                ..Pod::default()
            });
        }
    }
    None
}

/// Who a process is by its cgroup path: unit, container, pod.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub unit: Option<String>,
    pub container: Option<String>,
    pub runtime: Option<Runtime>,
    pub pod: Option<Pod>,
}

/// Everything [`unit`], [`container`] and [`pod`] read from one path.
pub fn identity(path: &str) -> Identity {
    let container = container(path);
    Identity {
        unit: unit(path),
        container: container.map(|c| c.id.to_string()),
        runtime: container.and_then(|c| c.runtime),
        pod: pod(path),
    }
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

    /// Real layouts of each runtime and kubelet cgroup driver (v2 paths; v1's
    /// `name=systemd` hierarchy has the same ones), and what each says.
    #[test]
    fn container_and_pod_identities() {
        struct Case {
            path: String,
            runtime: Option<Runtime>,
            pod_uid: Option<&'static str>,
            qos: Option<Qos>,
            unit: Option<String>,
        }
        const UID: &str = "6f3b1c2a-4e5d-4a7b-9c8d-0e1f2a3b4c5d";
        const UID_SYSTEMD: &str = "6f3b1c2a_4e5d_4a7b_9c8d_0e1f2a3b4c5d";
        // A static pod's UID is its config hash: 32 hex digits, no dashes.
        const STATIC_UID: &str = "3c5d7e9f1a2b4c6d8e0f1a2b3c4d5e6f";
        let case = |path: String, runtime, pod_uid, qos, unit: Option<&str>| Case {
            path,
            runtime,
            pod_uid,
            qos,
            unit: unit.map(|u| u.replace("{ID}", ID)),
        };
        use Qos::*;
        use Runtime::*;
        let cases = [
            // Docker, systemd and cgroupfs drivers; a container with systemd inside.
            case(
                format!("/system.slice/docker-{ID}.scope"),
                Some(Docker),
                None,
                None,
                Some("docker-{ID}.scope"),
            ),
            case(format!("/docker/{ID}"), Some(Docker), None, None, None),
            case(
                format!("/system.slice/docker-{ID}.scope/system.slice/nginx.service"),
                Some(Docker),
                None,
                None,
                Some("docker-{ID}.scope/nginx.service"),
            ),
            // podman: systemd (the container's payload in a `container` child), its
            // monitor, and cgroupfs.
            case(
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Some(Podman),
                None,
                None,
                Some("libpod-{ID}.scope"),
            ),
            case(
                format!("/machine.slice/libpod-conmon-{ID}.scope"),
                Some(Podman),
                None,
                None,
                Some("libpod-conmon-{ID}.scope"),
            ),
            case(format!("/libpod_parent/libpod-{ID}"), Some(Podman), None, None, None),
            // Kubernetes, systemd driver: burstable and besteffort pods under their QoS
            // slice, a guaranteed one directly under kubepods.slice; containerd, CRI-O
            // (and its conmon), Docker through cri-dockerd.
            case(
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
                ),
                Some(Containerd),
                Some(UID),
                Some(Burstable),
                Some("cri-containerd-{ID}.scope"),
            ),
            case(
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/crio-{ID}.scope"
                ),
                Some(CriO),
                Some(UID),
                Some(BestEffort),
                Some("crio-{ID}.scope"),
            ),
            case(
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/crio-conmon-{ID}.scope"
                ),
                Some(CriO),
                Some(UID),
                Some(BestEffort),
                Some("crio-conmon-{ID}.scope"),
            ),
            case(
                format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/docker-{ID}.scope"),
                Some(Docker),
                Some(UID),
                Some(Guaranteed),
                Some("docker-{ID}.scope"),
            ),
            // A static pod (the API server's mirror), and kind's kubelet nested one level.
            case(
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice/cri-containerd-{ID}.scope"
                ),
                Some(Containerd),
                Some(STATIC_UID),
                Some(Burstable),
                Some("cri-containerd-{ID}.scope"),
            ),
            case(
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope"
                ),
                Some(Containerd),
                Some(UID),
                Some(BestEffort),
                Some("cri-containerd-{ID}.scope"),
            ),
            // Kubernetes, cgroupfs driver (k3s, older kubeadm): the bare id, whose
            // runtime the path does not say; CRI-O names it.
            case(
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                None,
                Some(UID),
                Some(Burstable),
                None,
            ),
            case(
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                None,
                Some(UID),
                Some(BestEffort),
                None,
            ),
            case(
                format!("/kubepods/pod{UID}/crio-{ID}"),
                Some(CriO),
                Some(UID),
                Some(Guaranteed),
                None,
            ),
            // The pod's own cgroup (no container yet), and a host process.
            case(
                format!("/kubepods/burstable/pod{UID}"),
                None,
                Some(UID),
                Some(Burstable),
                None,
            ),
            case(
                "/system.slice/containerd.service".into(),
                None,
                None,
                None,
                Some("containerd.service"),
            ),
            // Look-alikes: a `pod…` slice outside kubepods, a uid that is not one.
            case(
                format!("/system.slice/app-pod{UID_SYSTEMD}.slice/x.service"),
                None,
                None,
                None,
                Some("x.service"),
            ),
            case(
                "/kubepods/burstable/podnotauid/x".into(),
                None,
                None,
                None,
                None,
            ),
        ];
        for case in cases {
            let identity = identity(&case.path);
            let path = &case.path;
            assert_eq!(identity.runtime, case.runtime, "{path}");
            let expect_container = case.runtime.is_some() || path.ends_with(ID);
            assert_eq!(
                identity.container.as_deref(),
                expect_container.then_some(ID),
                "{path}"
            );
            assert_eq!(
                identity.pod.as_ref().map(|p| p.uid.as_str()),
                case.pod_uid,
                "{path}"
            );
            assert_eq!(
                identity.pod.as_ref().and_then(|p| p.qos),
                case.qos,
                "{path}"
            );
            assert_eq!(identity.unit, case.unit, "{path}");
        }
    }

    /// Inside a cgroup namespace (a DaemonSet pod that did not enter the host's),
    /// `/proc/<pid>/cgroup` shows paths relative to the agent's own cgroup: the units,
    /// containers and pods in them are still read; a cgroupfs pod's QoS parent can be cut
    /// off, and is then unknown rather than guessed.
    #[test]
    fn paths_relative_to_a_cgroup_namespace() {
        const UID: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
        let host = "/../../../system.slice/nginx.service";
        assert_eq!(unit(host).as_deref(), Some("nginx.service"));
        assert!(placement(host).is_system_service());
        assert_eq!(identity(host).pod, None);

        let sibling_pod = format!(
            "/../../kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        let identity_of = identity(&sibling_pod);
        assert_eq!(identity_of.container.as_deref(), Some(ID));
        assert_eq!(identity_of.runtime, Some(Runtime::Containerd));
        let pod = identity_of.pod.unwrap();
        assert_eq!((pod.uid.as_str(), pod.qos), (UID, Some(Qos::BestEffort)));

        let cgroupfs = format!("/../../pod{UID}/{ID}");
        let pod = identity(&cgroupfs).pod.unwrap();
        assert_eq!((pod.uid.as_str(), pod.qos), (UID, None));
        let cgroupfs_with_qos = format!("/../burstable/pod{UID}/{ID}");
        assert_eq!(
            identity(&cgroupfs_with_qos).pod.unwrap().qos,
            Some(Qos::Burstable)
        );

        // A container of the agent's own pod: no pod in the path, the container still.
        let same_pod = format!("/../cri-containerd-{ID}.scope");
        assert_eq!(identity(&same_pod).container.as_deref(), Some(ID));
        assert_eq!(identity(&same_pod).pod, None);
        // `..` alone is nothing.
        assert_eq!(identity("/../.."), Identity::default());
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
