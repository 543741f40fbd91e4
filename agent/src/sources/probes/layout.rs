//! Fills [`KernelConfig`] from the running kernel's tracepoint formats and BTF, and says
//! which probes cannot work here and why.

use std::collections::{BTreeMap, BTreeSet};

use agent_common::{
    config::{KernelConfig, MsgOffsets, Probe, SockOffsets, TcpSockFields, TupleFields},
    NO_OFFSET,
};

use super::{btf::Btf, tracefs::Format};

/// Offsets for a probe's record, or why the probe cannot run on this kernel.
pub type Formats = BTreeMap<Probe, Format>;

/// The result: the config for the programs and the probes that must stay off.
pub struct Layout {
    pub config: KernelConfig,
    pub unavailable: BTreeMap<Probe, String>,
    /// Kernel struct fields that could not be resolved (features degrade, probes stay on).
    pub missing_kernel_fields: Vec<MissingField>,
    /// Why a probe's `tp_btf` program cannot run here (BTF lacks what it reads); the
    /// probe falls back to its classic tracepoint, or stays off without one.
    pub btf_unavailable: BTreeMap<Probe, String>,
}

/// A kernel struct field BTF did not give, and what goes without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingField {
    pub name: &'static str,
    pub degrades: &'static str,
}

/// What the kernel programs are told besides offsets (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Bit `n` set: report signal `n`.
    pub signal_mask: u64,
    /// See `KernelConfig::response_timeout_ns`.
    pub response_timeout_ns: u64,
}

struct Fields<'a> {
    format: &'a Format,
    missing: Vec<String>,
}

impl<'a> Fields<'a> {
    fn new(format: &'a Format) -> Self {
        Self {
            format,
            missing: Vec::new(),
        }
    }

    fn required(&mut self, name: &str) -> u16 {
        match self.format.get(name) {
            Some(f) => f.offset,
            None => {
                self.missing.push(name.to_string());
                NO_OFFSET
            }
        }
    }

    fn optional(&self, name: &str) -> u16 {
        self.format.get(name).map_or(NO_OFFSET, |f| f.offset)
    }

    fn tuple(&mut self) -> TupleFields {
        // Linux 6.10+ `tcp_send_reset` stores whole sockaddrs (28 bytes: sockaddr_in6).
        let sockaddr_layout = self.format.get("family").is_none()
            && self.format.get("saddr").is_some_and(|f| f.size >= 28);
        if sockaddr_layout {
            return TupleFields {
                family: NO_OFFSET,
                sport: NO_OFFSET,
                dport: NO_OFFSET,
                saddr: self.required("saddr"),
                daddr: self.required("daddr"),
                saddr_v6: NO_OFFSET,
                daddr_v6: NO_OFFSET,
                sockaddr: 1,
            };
        }
        TupleFields {
            family: self.required("family"),
            sport: self.required("sport"),
            dport: self.required("dport"),
            saddr: self.required("saddr"),
            daddr: self.required("daddr"),
            saddr_v6: self.required("saddr_v6"),
            daddr_v6: self.required("daddr_v6"),
            sockaddr: 0,
        }
    }

    fn tcp_sock(&mut self, state_required: bool) -> TcpSockFields {
        TcpSockFields {
            skaddr: self.required("skaddr"),
            state: if state_required {
                self.required("state")
            } else {
                self.optional("state")
            },
            reason: self.optional("reason"),
            _pad: 0,
            tuple: self.tuple(),
        }
    }
}

/// Builds the layout for the `enabled` probes from their `formats` (a probe without a
/// format has no tracepoint on this kernel).
pub fn build(
    enabled: &BTreeSet<Probe>,
    formats: &Formats,
    btf: Option<&Btf>,
    options: Options,
) -> Layout {
    let mut config = KernelConfig::UNSET;
    let mut unavailable = BTreeMap::new();
    for &probe in enabled {
        let Some(format) = formats.get(&probe) else {
            unavailable.insert(
                probe,
                format!(
                    "tracepoint {}:{} does not exist on this kernel",
                    probe.category(),
                    probe.name()
                ),
            );
            continue;
        };
        let mut f = Fields::new(format);
        match probe {
            Probe::InetSockSetState => {
                let s = &mut config.set_state;
                s.skaddr = f.required("skaddr");
                s.oldstate = f.required("oldstate");
                s.newstate = f.required("newstate");
                s.protocol = f.required("protocol");
                s.tuple = f.tuple();
            }
            Probe::InetSkErrorReport => {
                let e = &mut config.error_report;
                e.error = f.required("error");
                e.protocol = f.required("protocol");
                e.tuple = f.tuple();
            }
            Probe::TcpReceiveReset => config.receive_reset = f.tcp_sock(false),
            Probe::TcpSendReset => config.send_reset = f.tcp_sock(false),
            Probe::TcpRetransmitSkb => config.retransmit_skb = f.tcp_sock(true),
            Probe::TcpRetransmitSynack => config.retransmit_synack = f.tcp_sock(false),
            Probe::SysEnterConnect => {
                let s = &mut config.syscalls;
                s.connect_fd = f.required("fd");
                s.connect_uservaddr = f.required("uservaddr");
                s.connect_addrlen = f.required("addrlen");
            }
            Probe::SysEnterListen => config.syscalls.listen_fd = f.required("fd"),
            Probe::SysExitConnect | Probe::SysExitListen => {
                config.syscalls.exit_ret = f.required("ret")
            }
            Probe::SchedProcessExec => {
                config.process.exec_filename = f.required("filename");
                if format.get("filename").is_some_and(|x| !x.is_data_loc()) {
                    f.missing.push("filename as __data_loc".into());
                }
            }
            Probe::SysEnterWrite => {
                config.http.write_buf = f.required("buf");
                config.http.write_count = f.required("count");
            }
            Probe::SysEnterWritev => {
                config.http.writev_vec = f.required("vec");
                config.http.writev_vlen = f.required("vlen");
            }
            Probe::SysEnterSendto => {
                config.http.sendto_buf = f.required("buff");
                config.http.sendto_len = f.required("len");
            }
            Probe::SysEnterSendmsg => config.http.sendmsg_msg = f.required("msg"),
            Probe::SchedProcessFork => config.http.fork_child_pid = f.required("child_pid"),
            Probe::SchedProcessExit => {
                config.process.exit_group_dead = f.optional("group_dead");
            }
            // A `tp_btf` program: its arguments come from BTF (below); the format only
            // says that the tracepoint exists.
            Probe::TcpSendmsgLocked => {}
            Probe::SignalGenerate => {
                let s = &mut config.signal;
                s.sig = f.required("sig");
                s.code = f.optional("code");
                s.comm = f.optional("comm");
                s.pid = f.optional("pid");
                s.group = f.optional("group");
                s.result = f.optional("result");
            }
            Probe::MarkVictim => {
                let m = &mut config.mark_victim;
                m.pid = f.required("pid");
                m.comm = f.optional("comm");
                m.comm_data_loc = format.get("comm").is_some_and(|c| c.is_data_loc()) as u16;
                m.total_vm = f.optional("total_vm");
                m.anon_rss = f.optional("anon_rss");
                m.file_rss = f.optional("file_rss");
                m.shmem_rss = f.optional("shmem_rss");
                m.uid = f.optional("uid");
                m.pgtables = f.optional("pgtables");
                m.oom_score_adj = f.optional("oom_score_adj");
            }
        }
        if !f.missing.is_empty() {
            unavailable.insert(
                probe,
                format!(
                    "tracepoint {}:{} lacks field(s) {}",
                    probe.category(),
                    probe.name(),
                    f.missing.join(", ")
                ),
            );
        }
    }
    config.signal_mask = options.signal_mask;
    config.response_timeout_ns = options.response_timeout_ns;

    let mut missing_kernel_fields = Vec::new();
    let mut resolved = |name: &'static str, degrades: &'static str, found: Option<u32>| -> u16 {
        match found {
            Some(o) if o < NO_OFFSET as u32 => o as u16,
            _ => {
                missing_kernel_fields.push(MissingField { name, degrades });
                NO_OFFSET
            }
        }
    };
    let offset = |strct: &str, path: &[&str]| btf.and_then(|b| b.field_offset(strct, path));
    let k = &mut config.kernel;
    k.sock_sk_err = resolved(
        "sock.sk_err",
        "the errno of failed connects comes from the error report alone",
        offset("sock", &["sk_err"]),
    );
    k.sock_state = resolved(
        "sock.__sk_common.skc_state",
        "the TCP state of resets is unknown",
        offset("sock", &["__sk_common", "skc_state"]),
    );
    const PARENTS: &str = "exec and exit events carry no parent";
    k.task_real_parent = resolved(
        "task_struct.real_parent",
        PARENTS,
        offset("task_struct", &["real_parent"]),
    );
    k.task_tgid = resolved(
        "task_struct.tgid",
        PARENTS,
        offset("task_struct", &["tgid"]),
    );
    k.task_exit_code = resolved(
        "task_struct.exit_code",
        "exit codes are unknown",
        offset("task_struct", &["exit_code"]),
    );
    // Read as u64 by the programs: only an 8-byte integer will do (Linux 4.1+).
    const FOLLOWING: &str = "proxies' upstream connections are not followed to their end \
        (no upstream_end events, no traffic on resets, no closed_ok counts)";
    let counter = |field: &str| btf.and_then(|b| b.int_field_offset("tcp_sock", &[field], 8));
    k.tcp_bytes_received = resolved(
        "tcp_sock.bytes_received",
        FOLLOWING,
        counter("bytes_received"),
    );
    k.tcp_bytes_acked = resolved("tcp_sock.bytes_acked", FOLLOWING, counter("bytes_acked"));
    const RELISTENS: &str = "a listen(2) on a socket already listening is reported again";
    for (slot, name, strct, field) in [
        (
            &mut k.task_files,
            "task_struct.files",
            "task_struct",
            "files",
        ),
        (&mut k.files_fdt, "files_struct.fdt", "files_struct", "fdt"),
        (&mut k.fdtable_fd, "fdtable.fd", "fdtable", "fd"),
        (
            &mut k.file_private_data,
            "file.private_data",
            "file",
            "private_data",
        ),
        (&mut k.socket_sk, "socket.sk", "socket", "sk"),
    ] {
        *slot = resolved(name, RELISTENS, offset(strct, &[field]));
    }

    k.task_pid = resolved(
        "task_struct.pid",
        "a proxy's threads are marked like processes until they exit, and signals to \
         another process's thread name the thread",
        btf.and_then(|b| b.int_field_offset("task_struct", &["pid"], 4)),
    );
    k.task_comm = resolved(
        "task_struct.comm",
        "signals are read from the classic tracepoint (a signal to another process's \
         thread names the thread)",
        offset("task_struct", &["comm"]),
    );
    k.siginfo_code = resolved(
        "kernel_siginfo.si_code",
        "signals are read from the classic tracepoint (a signal to another process's \
         thread names the thread)",
        btf.and_then(|b| b.int_field_offset("kernel_siginfo", &["si_code"], 4)),
    );
    // Pointers, then the namespaces' inode numbers (`unsigned int inum` in `ns_common`).
    const NETNS: &str = "socket events, listeners and connect statistics carry no network \
        namespace: endpoints of containers that share an address are one";
    let inum = |strct: &str| btf.and_then(|b| b.int_field_offset(strct, &["ns", "inum"], 4));
    k.sock_net = resolved(
        "sock.__sk_common.skc_net.net",
        NETNS,
        offset("sock", &["__sk_common", "skc_net", "net"]),
    );
    k.net_inum = resolved("net.ns.inum", NETNS, inum("net"));
    const TASK_NS: &str = "connect(2) errors, unix listeners and process events carry no \
        namespace: unix socket paths of containers that share a path are one";
    k.task_nsproxy = resolved(
        "task_struct.nsproxy",
        TASK_NS,
        offset("task_struct", &["nsproxy"]),
    );
    k.nsproxy_net_ns = resolved("nsproxy.net_ns", TASK_NS, offset("nsproxy", &["net_ns"]));
    k.nsproxy_mnt_ns = resolved("nsproxy.mnt_ns", TASK_NS, offset("nsproxy", &["mnt_ns"]));
    // `struct mnt_namespace` is private to fs/ but in vmlinux BTF since its ns_common moved
    // first (Linux 5.x); a kernel without it only loses the mount namespaces.
    k.mnt_ns_inum = resolved(
        "mnt_namespace.ns.inum",
        "unix socket paths carry no mount namespace",
        inum("mnt_namespace"),
    );

    let mut btf_unavailable = BTreeMap::new();
    // The tasks' fields the `tp_btf` programs of fork and signal_generate read; without
    // them, their classic tracepoints.
    let task_fields = |fields: &[(&str, u16)]| -> Option<String> {
        let missing: Vec<&str> = fields
            .iter()
            .filter(|(_, offset)| *offset == NO_OFFSET)
            .map(|(name, _)| *name)
            .collect();
        (!missing.is_empty()).then(|| format!("kernel BTF lacks {}", missing.join(", ")))
    };
    let k = config.kernel;
    if let Some(missing) = task_fields(&[
        ("task_struct.pid", k.task_pid),
        ("task_struct.tgid", k.task_tgid),
    ]) {
        btf_unavailable.insert(Probe::SchedProcessFork, missing);
    }
    if let Some(missing) = task_fields(&[
        ("task_struct.pid", k.task_pid),
        ("task_struct.tgid", k.task_tgid),
        ("task_struct.comm", k.task_comm),
        ("kernel_siginfo.si_code", k.siginfo_code),
    ]) {
        btf_unavailable.insert(Probe::SignalGenerate, missing);
    }
    match btf.map(sock_offsets).transpose() {
        Ok(Some(sock)) => config.sock = sock,
        Ok(None) => {}
        Err(missing) => {
            btf_unavailable.insert(Probe::InetSockSetState, missing);
        }
    }
    match btf.map(msg_offsets).transpose() {
        Ok(Some(msg)) => config.msg = msg,
        Ok(None) => {}
        Err(missing) => {
            btf_unavailable.insert(Probe::TcpSendmsgLocked, missing);
        }
    }
    if btf.is_none() {
        for probe in Probe::ALL.into_iter().filter(|p| p.btf_program().is_some()) {
            btf_unavailable.insert(probe, "the kernel has no BTF".to_string());
        }
    }

    Layout {
        config,
        unavailable,
        missing_kernel_fields,
        btf_unavailable,
    }
}

/// Collects the offsets a `tp_btf` program needs, or names the first one BTF lacks.
struct Needed<'a> {
    btf: &'a Btf,
    missing: Vec<String>,
}

impl Needed<'_> {
    /// An integer field of `size` bytes (a bitfield or another type does not qualify).
    fn int(&mut self, strct: &str, path: &[&str], size: u32) -> u16 {
        let found = self.btf.int_field_offset(strct, path, size);
        self.offset(strct, path, found)
    }

    fn any(&mut self, strct: &str, path: &[&str]) -> u16 {
        let found = self.btf.field_offset(strct, path);
        self.offset(strct, path, found)
    }

    fn offset(&mut self, strct: &str, path: &[&str], found: Option<u32>) -> u16 {
        match found {
            Some(o) if o < NO_OFFSET as u32 => o as u16,
            _ => {
                self.missing.push(format!("{strct}.{}", path.join(".")));
                NO_OFFSET
            }
        }
    }

    fn constant(&mut self, name: &str, constant: &str) -> u16 {
        match self.btf.enum_value(name, constant) {
            Some(v) if (0..i64::from(NO_OFFSET)).contains(&v) => v as u16,
            _ => {
                self.missing.push(format!("enum {name} {constant}"));
                NO_OFFSET
            }
        }
    }

    fn done<T>(self, value: T) -> Result<T, String> {
        if self.missing.is_empty() {
            Ok(value)
        } else {
            Err(format!("kernel BTF lacks {}", self.missing.join(", ")))
        }
    }
}

/// What `inet_sock_set_state_btf` reads from the `struct sock` it is given: the fields
/// of the classic record. `sk_protocol` has been a `u16` since Linux 5.6 (a bitfield
/// before, which the program cannot read).
fn sock_offsets(btf: &Btf) -> Result<SockOffsets, String> {
    let mut n = Needed {
        btf,
        missing: Vec::new(),
    };
    let c = |field| ["__sk_common", field];
    let sock = SockOffsets {
        protocol: n.int("sock", &["sk_protocol"], 2),
        family: n.int("sock", &c("skc_family"), 2),
        daddr: n.int("sock", &c("skc_daddr"), 4),
        saddr: n.int("inet_sock", &["inet_saddr"], 4),
        dport: n.int("sock", &c("skc_dport"), 2),
        sport: n.int("inet_sock", &["inet_sport"], 2),
        v6_daddr: n.any("sock", &c("skc_v6_daddr")),
        v6_rcv_saddr: n.any("sock", &c("skc_v6_rcv_saddr")),
    };
    n.done(sock)
}

/// What `tcp_sendmsg_locked` reads from its `struct msghdr`: the iterator over the bytes
/// being sent, in the layout of Linux 6.4+ (`ITER_UBUF` since 6.0, and `ubuf` sharing
/// its slot with `__iov` since 6.4).
fn msg_offsets(btf: &Btf) -> Result<MsgOffsets, String> {
    let mut n = Needed {
        btf,
        missing: Vec::new(),
    };
    let ubuf = n.any("iov_iter", &["ubuf"]);
    let iov = n.any("iov_iter", &["__iov"]);
    let msg = MsgOffsets {
        iter: n.any("msghdr", &["msg_iter"]),
        iter_type: n.int("iov_iter", &["iter_type"], 1),
        iov_offset: n.int("iov_iter", &["iov_offset"], 8),
        ubuf,
        count: n.int("iov_iter", &["count"], 8),
        kind_ubuf: n.constant("iter_type", "ITER_UBUF"),
        kind_iovec: n.constant("iter_type", "ITER_IOVEC"),
        _pad: 0,
    };
    if n.missing.is_empty() && ubuf != iov {
        n.missing
            .push("iov_iter.ubuf and iov_iter.__iov in one slot (Linux 6.4+)".into());
    }
    if n.missing.is_empty()
        && [msg.iter_type, msg.iov_offset, msg.ubuf, msg.count] != MsgOffsets::HEAD
    {
        n.missing.push(format!(
            "iov_iter laid out as Linux 6.4+ does ({:?} rather than {:?})",
            [msg.iter_type, msg.iov_offset, msg.ubuf, msg.count],
            MsgOffsets::HEAD
        ));
    }
    n.done(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const OPTIONS: Options = Options {
        signal_mask: 1 << 9,
        response_timeout_ns: 1_500_000_000,
    };

    fn format(text: &str) -> Format {
        Format::parse(text, Path::new("format")).unwrap()
    }

    const CLASSIC_RESET: &str = "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:20;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:22;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:26;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:30;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:46;\tsize:16;\tsigned:0;
";

    const SOCKADDR_RESET: &str = "\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;
";

    #[test]
    fn both_tuple_layouts() {
        let enabled = BTreeSet::from([Probe::TcpReceiveReset, Probe::TcpSendReset]);
        let formats = Formats::from([
            (Probe::TcpReceiveReset, format(CLASSIC_RESET)),
            (Probe::TcpSendReset, format(SOCKADDR_RESET)),
        ]);
        let layout = build(&enabled, &formats, None, OPTIONS);
        assert!(layout.unavailable.is_empty(), "{:?}", layout.unavailable);
        let classic = layout.config.receive_reset;
        assert_eq!(classic.tuple.sockaddr, 0);
        assert_eq!(classic.tuple.sport, 16);
        assert_eq!(classic.state, NO_OFFSET);
        let sockaddr = layout.config.send_reset;
        assert_eq!(sockaddr.tuple.sockaddr, 1);
        assert_eq!((sockaddr.tuple.saddr, sockaddr.tuple.daddr), (32, 60));
        assert_eq!((sockaddr.state, sockaddr.reason), (24, 28));
        // No BTF: every kernel field is reported missing, nothing panics.
        let missing: Vec<_> = layout
            .missing_kernel_fields
            .iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(missing.len(), 21, "{missing:?}");
        assert!(missing.contains(&"sock.__sk_common.skc_net.net"));
        assert!(missing.contains(&"mnt_namespace.ns.inum"));
        assert!(missing.contains(&"task_struct.pid"));
        assert!(missing.contains(&"tcp_sock.bytes_received"));
        assert!(missing.contains(&"fdtable.fd"));
        assert!(missing.contains(&"tcp_sock.bytes_acked"));
        assert_eq!(layout.config.kernel.tcp_bytes_acked, NO_OFFSET);
        // The options pass through.
        assert_eq!(layout.config.response_timeout_ns, 1_500_000_000);
        assert_eq!(layout.config.signal_mask, 1 << 9);
    }

    #[test]
    fn kernel_fields_come_from_the_running_kernel_when_present() {
        let Ok(btf) = Btf::from_file(super::super::btf::VMLINUX) else {
            eprintln!("skipped: no readable kernel BTF");
            return;
        };
        let layout = build(&BTreeSet::new(), &Formats::new(), Some(&btf), OPTIONS);
        assert!(
            layout.missing_kernel_fields.is_empty(),
            "{:?}",
            layout.missing_kernel_fields
        );
        assert!(
            layout.btf_unavailable.is_empty(),
            "{:?}",
            layout.btf_unavailable
        );
        let sock = layout.config.sock;
        // struct sock_common: skc_daddr, skc_rcv_saddr, hash, skc_dport, skc_num, skc_family.
        assert_eq!((sock.daddr, sock.dport, sock.family), (0, 12, 16));
        // inet_sock starts with its struct sock.
        assert!(
            sock.sport > sock.protocol && sock.saddr > sock.protocol,
            "{sock:?}"
        );
        let msg = layout.config.msg;
        assert_ne!(msg.kind_ubuf, msg.kind_iovec);
        assert!(msg.iter > 0 && msg.count > msg.ubuf, "{msg:?}");
        let k = layout.config.kernel;
        // Pointers (8-byte aligned) to the namespaces, whose `ns_common` sits at the start
        // of `mnt_namespace` (its first member) and inside `struct net`.
        for pointer in [
            k.sock_net,
            k.task_nsproxy,
            k.nsproxy_net_ns,
            k.nsproxy_mnt_ns,
        ] {
            assert_eq!(pointer % 8, 0, "{k:?}");
        }
        assert_ne!(k.nsproxy_net_ns, k.nsproxy_mnt_ns);
        assert!(k.net_inum > 0 && k.mnt_ns_inum < 64, "{k:?}");
        assert_eq!((k.net_inum % 4, k.mnt_ns_inum % 4), (0, 0));
        assert_ne!(k.tcp_bytes_received, k.tcp_bytes_acked);
        assert_eq!(k.tcp_bytes_received % 8, 0);
        assert_eq!(k.tcp_bytes_acked % 8, 0);
        // The way from an fd to its socket: pointers, 8-byte aligned (`files_struct.fdt` is
        // an `__rcu` pointer, not at the start; `socket.sk` follows state, type, flags).
        for offset in [
            k.task_files,
            k.files_fdt,
            k.fdtable_fd,
            k.file_private_data,
            k.socket_sk,
        ] {
            assert_eq!(offset % 8, 0, "{k:?}");
        }
        assert!(k.files_fdt > 0 && k.socket_sk > 0, "{k:?}");
        // struct kernel_siginfo starts with si_signo, si_errno, si_code (ints).
        assert_eq!(k.siginfo_code, 8);
        assert!(k.task_pid > 0 && k.task_tgid == k.task_pid + 4, "{k:?}");
    }

    #[test]
    fn missing_tracepoint_or_field_disables_the_probe() {
        let enabled = BTreeSet::from([Probe::TcpRetransmitSkb, Probe::MarkVictim]);
        // tcp_retransmit_skb needs `state`, which CLASSIC_RESET lacks.
        let formats = Formats::from([(Probe::TcpRetransmitSkb, format(CLASSIC_RESET))]);
        let layout = build(&enabled, &formats, None, OPTIONS);
        assert!(layout.unavailable[&Probe::TcpRetransmitSkb].contains("state"));
        assert!(layout.unavailable[&Probe::MarkVictim].contains("oom:mark_victim"));
    }
}
