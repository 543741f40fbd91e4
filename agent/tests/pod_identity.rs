//! Kernel integration test (real cgroups, real procfs): a process placed in a cgroup laid
//! out as the kubelet's systemd driver lays out a burstable pod's containerd container is
//! read by the enrichment with its pod UID, QoS class, container id and runtime; one in a
//! cgroupfs-driver layout with its pod UID and QoS and no runtime.
//!
//! The layouts are built under a cgroup v2 directory of the test's own (the parsing reads
//! the kubelet's names wherever they sit), never at the hierarchy's root.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
};

use why502::{
    model::incident::{Qos, Runtime},
    sources::enrich::{process, redact::Redactor},
};

const UID: &str = "7c4d2e1f-3a5b-4c6d-8e9f-0a1b2c3d4e5f";
const ID: &str = "5e6f7a8b9c0d1e2f5e6f7a8b9c0d1e2f5e6f7a8b9c0d1e2f5e6f7a8b9c0d1e2f";

fn v2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|root| root.join("cgroup.controllers").exists())
}

/// A chain of cgroup directories of the test's own and the process put in the innermost;
/// the process is killed and the directories removed, innermost first, when dropped.
struct Placed {
    dirs: Vec<PathBuf>,
    child: Child,
}

impl Placed {
    fn new(root: &Path, relative: &str) -> Self {
        let mut dirs = Vec::new();
        let mut dir = root.to_path_buf();
        for segment in relative.split('/').filter(|s| !s.is_empty()) {
            dir.push(segment);
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            dirs.push(dir.clone());
        }
        let child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let placed = Self { dirs, child };
        let procs = placed.dirs.last().unwrap().join("cgroup.procs");
        fs::write(&procs, placed.child.id().to_string()).expect("move into the cgroup");
        placed
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in self.dirs.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
}

#[test]
fn a_pods_process_is_read_with_its_pod_and_container() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let Some(root) = v2_root() else {
        eprintln!("skipped: no cgroup v2 hierarchy");
        return;
    };
    let test_root = format!("why502-test-pods-{}", std::process::id());
    let redactor = Redactor::new(&["password"]);

    let systemd_driver = format!(
        "{test_root}/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
        UID.replace('-', "_")
    );
    let placed = Placed::new(&root, &systemd_driver);
    let (_, info) = process::read(placed.pid(), &redactor).expect("the process read");
    assert_eq!(
        info.cgroup.as_deref(),
        Some(format!("/{systemd_driver}").as_str())
    );
    let pod = info.pod.as_ref().expect("a pod");
    assert_eq!((pod.uid.as_str(), pod.qos), (UID, Some(Qos::Burstable)));
    assert_eq!(info.container.as_deref(), Some(ID));
    assert_eq!(info.runtime, Some(Runtime::Containerd));
    assert_eq!(
        info.unit.as_deref(),
        Some(format!("cri-containerd-{ID}.scope").as_str())
    );
    // Its JSON form (what --print-events and the API carry).
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(json["pod"]["uid"], UID);
    assert_eq!(json["pod"]["qos"], "burstable");
    assert_eq!(json["runtime"], "containerd");
    drop(placed);

    // The test's root cgroup is gone with the first layout's chain: the second makes its own.
    let cgroupfs = format!("{test_root}/kubepods/besteffort/pod{UID}/{ID}");
    let placed = Placed::new(&root, &cgroupfs);
    let (_, info) = process::read(placed.pid(), &redactor).expect("the process read");
    let pod = info.pod.as_ref().expect("a pod");
    assert_eq!((pod.uid.as_str(), pod.qos), (UID, Some(Qos::BestEffort)));
    assert_eq!(info.container.as_deref(), Some(ID));
    assert_eq!(info.runtime, None);
    assert_eq!(info.unit, None);
}
