//! A process's cgroup path → the systemd unit or container it belongs to.

/// The unit: the innermost `.service`, else the innermost `.scope` (a container's or a
/// login session's).
pub fn unit(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    parts
        .iter()
        .rev()
        .find(|p| p.ends_with(".service"))
        .or_else(|| parts.iter().rev().find(|p| p.ends_with(".scope")))
        .map(|p| p.to_string())
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
