//! A Kubernetes node's pod network, made of the test's own pieces: each pod's namespace
//! joined to the host namespace by a veth pair (the pod's end named `eth0`, a /30 of its
//! own, its default route via the host's end), and a "ClusterIP" service as kube-proxy
//! makes one: an iptables DNAT rule in the HOST namespace's nat PREROUTING chain. The
//! host forwards between the pods on the test's veths only (their `forwarding` sysctl),
//! never host-wide. Removed on drop: the veth (both ends), the rule (found by its unique
//! comment).

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
};

use crate::netns::{run, Netns};

/// The private range the tests' pod links come from: unused on the test hosts (the
/// allocation checks `ip -4 route` and `ip -4 addr` anyway).
const POD_RANGE: [u8; 2] = [10, 253];
/// The range services' addresses come from (kube's default service CIDR is 10.96.0.0/12).
const SERVICE_RANGE: [u8; 2] = [10, 96];

/// A /24 of [`POD_RANGE`] nobody on the host routes or holds, chosen from the test's pid
/// (tests of other binaries running at the same time get others): its third octet.
pub fn free_pod_subnet() -> u8 {
    let routes = ip_output(&["-4", "route", "show", "table", "all"]);
    let addrs = ip_output(&["-4", "-o", "addr"]);
    let start = (std::process::id() % 200) as u8;
    (0..200u8)
        .map(|i| start.wrapping_add(i) % 200 + 20)
        .find(|third| {
            let prefix = format!("{}.{}.{third}.", POD_RANGE[0], POD_RANGE[1]);
            !routes.contains(&prefix) && !addrs.contains(&prefix)
        })
        .expect("a free /24 in 10.253.0.0/16")
}

/// A service address in [`SERVICE_RANGE`] that no nat rule of the host names yet.
pub fn free_service_ip(index: u8) -> Ipv4Addr {
    let rules = iptables_output(&["-t", "nat", "-S"]);
    let start = (std::process::id() % 200) as u8;
    (0..200u8)
        .map(|i| {
            Ipv4Addr::new(
                SERVICE_RANGE[0],
                SERVICE_RANGE[1],
                start.wrapping_add(i) % 200 + 20,
                10 + index,
            )
        })
        .find(|ip| !rules.contains(&format!("{ip}/32")))
        .expect("a free service address in 10.96.0.0/16")
}

/// A pod's link to the host: a veth pair, `host_ip` on the host's end, `pod_ip` on the
/// pod's `eth0`.
pub struct PodLink {
    pub host_if: String,
    pub host_ip: Ipv4Addr,
    pub pod_ip: Ipv4Addr,
}

impl PodLink {
    /// Joins `netns` to the host by the /30 `10.253.<subnet>.<4 × slot>`: the host's end
    /// `.1`, the pod's `.2`, its default route via the host, forwarding on the host's end.
    pub fn attach(netns: &Netns, subnet: u8, slot: u8, tag: &str) -> Self {
        assert!(slot < 64, "a /24 has 64 /30s");
        let base = 4 * slot;
        let host_ip = Ipv4Addr::new(POD_RANGE[0], POD_RANGE[1], subnet, base + 1);
        let pod_ip = Ipv4Addr::new(POD_RANGE[0], POD_RANGE[1], subnet, base + 2);
        // At most 15 bytes: `w5` + the pid (7 digits at most) + the tag.
        let host_if = format!("w5{}{tag}", std::process::id());
        assert!(host_if.len() <= 15, "interface name {host_if} is too long");
        let _ = Command::new("ip").args(["link", "del", &host_if]).output();
        run(Command::new("ip").args([
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns.name,
        ]));
        // From here on, drop removes the pair (also when a later step fails).
        let link = Self {
            host_if,
            host_ip,
            pod_ip,
        };
        let host_cidr = format!("{host_ip}/30");
        let pod_cidr = format!("{pod_ip}/30");
        run(Command::new("ip").args(["addr", "add", &host_cidr, "dev", &link.host_if]));
        run(Command::new("ip").args(["link", "set", &link.host_if, "up"]));
        run(Command::new("sysctl").args([
            "-qw",
            &format!("net.ipv4.conf.{}.forwarding=1", link.host_if),
        ]));
        netns.exec(&["ip", "addr", "add", &pod_cidr, "dev", "eth0"]);
        netns.exec(&["ip", "link", "set", "eth0", "up"]);
        netns.exec(&["ip", "route", "add", "default", "via", &host_ip.to_string()]);
        link
    }
}

impl Drop for PodLink {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; the namespace's end may be gone with it.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
    }
}

/// A ClusterIP service: `service` DNAT'd to `target` in the host's nat PREROUTING, as
/// kube-proxy's iptables mode does (a pod's packets to the service pass the host's
/// PREROUTING on their way out of the pod's veth).
pub struct ServiceDnat {
    rule: Vec<String>,
    comment: String,
    pub service: SocketAddrV4,
    pub target: SocketAddrV4,
}

impl ServiceDnat {
    pub fn add(service: SocketAddrV4, target: SocketAddrV4, tag: &str) -> Self {
        let comment = format!("why502-test-{}-{tag}", std::process::id());
        let rule: Vec<String> = [
            "PREROUTING",
            "-d",
            &format!("{}/32", service.ip()),
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            &service.port().to_string(),
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "DNAT",
            "--to-destination",
            &target.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // A rule of an earlier run of this pid and tag (a crashed test) goes first.
        while iptables(&["-t", "nat", "-D"], &rule) {}
        assert!(
            iptables(&["-t", "nat", "-A"], &rule),
            "iptables -t nat -A {}: {}",
            rule.join(" "),
            iptables_output(&["-t", "nat", "-S", "PREROUTING"])
        );
        Self {
            rule,
            comment,
            service,
            target,
        }
    }

    /// Whether the rule is in the host's nat table (with its comment).
    pub fn present(&self) -> bool {
        iptables_output(&["-t", "nat", "-S", "PREROUTING"]).contains(&self.comment)
    }
}

impl Drop for ServiceDnat {
    fn drop(&mut self) {
        if !iptables(&["-t", "nat", "-D"], &self.rule) {
            eprintln!("could not delete the DNAT rule {}", self.rule.join(" "));
        }
    }
}

/// Runs `iptables ARGS RULE`; whether it succeeded.
fn iptables(args: &[&str], rule: &[String]) -> bool {
    Command::new("iptables")
        .args(args)
        .args(rule)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn iptables_output(args: &[&str]) -> String {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .expect("run iptables");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
