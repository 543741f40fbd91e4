//! What the agent tells the kernel programs at load time, through the read-only global
//! `CONFIG`: where each tracepoint field sits and where some kernel struct fields sit.
//!
//! Tracepoint layouts differ between kernels (the common header grew; `tcp_send_reset`
//! switched from ports and addresses to `sockaddr` buffers in 6.10), so the agent reads
//! them from tracefs `format` files instead of hard-coding them. Rust eBPF gets no CO-RE
//! relocations, so struct field offsets come from the kernel's BTF in the same way.
//! Every offset may be [`crate::NO_OFFSET`] when the kernel lacks the field.

/// The probes, with fixed ids (used as counter slots) and the tracepoints they attach to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Probe {
    InetSockSetState = 0,
    InetSkErrorReport = 1,
    TcpReceiveReset = 2,
    TcpSendReset = 3,
    TcpRetransmitSkb = 4,
    TcpRetransmitSynack = 5,
    SysEnterConnect = 6,
    SysExitConnect = 7,
    SysEnterListen = 8,
    SysExitListen = 9,
    SchedProcessExec = 10,
    SchedProcessExit = 11,
    SignalGenerate = 12,
    MarkVictim = 13,
    SysEnterWrite = 14,
    SysEnterWritev = 15,
    SysEnterSendto = 16,
    SysEnterSendmsg = 17,
    SchedProcessFork = 18,
    /// BTF-enabled only (`tp_btf`): the HTTP responses proxies send over TCP, read from
    /// the message being sent. Where it attaches, the four write-syscall probes are not
    /// needed (they stay the fallback). The tracepoint came with Linux 6.10.
    TcpSendmsgLocked = 19,
}

impl Probe {
    pub const ALL: [Probe; 20] = [
        Probe::InetSockSetState,
        Probe::InetSkErrorReport,
        Probe::TcpReceiveReset,
        Probe::TcpSendReset,
        Probe::TcpRetransmitSkb,
        Probe::TcpRetransmitSynack,
        Probe::SysEnterConnect,
        Probe::SysExitConnect,
        Probe::SysEnterListen,
        Probe::SysExitListen,
        Probe::SchedProcessExec,
        Probe::SchedProcessExit,
        Probe::SignalGenerate,
        Probe::MarkVictim,
        Probe::SysEnterWrite,
        Probe::SysEnterWritev,
        Probe::SysEnterSendto,
        Probe::SysEnterSendmsg,
        Probe::SchedProcessFork,
        Probe::TcpSendmsgLocked,
    ];

    /// The probes that count HTTP responses from write syscalls, where
    /// [`Probe::TcpSendmsgLocked`] cannot.
    pub const WRITE_SYSCALLS: [Probe; 4] = [
        Probe::SysEnterWrite,
        Probe::SysEnterWritev,
        Probe::SysEnterSendto,
        Probe::SysEnterSendmsg,
    ];

    /// The program's name in the object file, also the name users give in config.
    pub const fn name(self) -> &'static str {
        match self {
            Probe::InetSockSetState => "inet_sock_set_state",
            Probe::InetSkErrorReport => "inet_sk_error_report",
            Probe::TcpReceiveReset => "tcp_receive_reset",
            Probe::TcpSendReset => "tcp_send_reset",
            Probe::TcpRetransmitSkb => "tcp_retransmit_skb",
            Probe::TcpRetransmitSynack => "tcp_retransmit_synack",
            Probe::SysEnterConnect => "sys_enter_connect",
            Probe::SysExitConnect => "sys_exit_connect",
            Probe::SysEnterListen => "sys_enter_listen",
            Probe::SysExitListen => "sys_exit_listen",
            Probe::SchedProcessExec => "sched_process_exec",
            Probe::SchedProcessExit => "sched_process_exit",
            Probe::SignalGenerate => "signal_generate",
            Probe::MarkVictim => "mark_victim",
            Probe::SysEnterWrite => "sys_enter_write",
            Probe::SysEnterWritev => "sys_enter_writev",
            Probe::SysEnterSendto => "sys_enter_sendto",
            Probe::SysEnterSendmsg => "sys_enter_sendmsg",
            Probe::SchedProcessFork => "sched_process_fork",
            Probe::TcpSendmsgLocked => "tcp_sendmsg_locked",
        }
    }

    /// The tracepoint's category in tracefs.
    pub const fn category(self) -> &'static str {
        match self {
            Probe::InetSockSetState | Probe::InetSkErrorReport => "sock",
            Probe::TcpReceiveReset
            | Probe::TcpSendReset
            | Probe::TcpRetransmitSkb
            | Probe::TcpRetransmitSynack
            | Probe::TcpSendmsgLocked => "tcp",
            Probe::SysEnterConnect
            | Probe::SysExitConnect
            | Probe::SysEnterListen
            | Probe::SysExitListen
            | Probe::SysEnterWrite
            | Probe::SysEnterWritev
            | Probe::SysEnterSendto
            | Probe::SysEnterSendmsg => "syscalls",
            Probe::SchedProcessExec | Probe::SchedProcessExit | Probe::SchedProcessFork => "sched",
            Probe::SignalGenerate => "signal",
            Probe::MarkVictim => "oom",
        }
    }

    /// The program that attaches as a BTF-enabled raw tracepoint (`tp_btf`, Linux 5.5+),
    /// where the kernel has BTF: the tracepoint's arguments as they are, without the
    /// record a classic tracepoint copies into a per-CPU buffer on every hit. Only the hot
    /// paths have one, and the two that need a task the classic record does not carry;
    /// the others are rare enough for the classic copy.
    pub const fn btf_program(self) -> Option<&'static str> {
        match self {
            Probe::InetSockSetState => Some("inet_sock_set_state_btf"),
            Probe::TcpSendmsgLocked => Some("tcp_sendmsg_locked"),
            // Not hot, but only `tp_btf` is handed the tasks: the forked child (a thread
            // is no new process) and the signal's target (whose process a death is
            // matched by).
            Probe::SchedProcessFork => Some("sched_process_fork_btf"),
            Probe::SignalGenerate => Some("signal_generate_btf"),
            _ => None,
        }
    }

    /// Whether the probe exists only as a `tp_btf` program (no classic fallback).
    pub const fn btf_only(self) -> bool {
        matches!(self, Probe::TcpSendmsgLocked)
    }
}

/// Where a tracepoint keeps a connection's addresses.
///
/// Two layouts exist: separate `family`/`sport`/`dport`/`saddr`/`daddr`/`saddr_v6`/`daddr_v6`
/// fields (ports in host order), or (`sockaddr == 1`) `saddr`/`daddr` buffers holding a
/// `sockaddr_in` or `sockaddr_in6` (family and network-order port inside).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TupleFields {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    pub sockaddr: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SetStateFields {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub protocol: u16,
    pub tuple: TupleFields,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ErrorReportFields {
    pub error: u16,
    pub protocol: u16,
    pub tuple: TupleFields,
}

/// `tcp_receive_reset`, `tcp_send_reset`, `tcp_retransmit_skb`, `tcp_retransmit_synack`.
/// `state` and `reason` are [`crate::NO_OFFSET`] where the tracepoint lacks them.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TcpSockFields {
    pub skaddr: u16,
    pub state: u16,
    pub reason: u16,
    pub _pad: u16,
    pub tuple: TupleFields,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MarkVictimFields {
    pub pid: u16,
    pub comm: u16,
    /// 1 when `comm` is a `__data_loc` string (Linux 6.x) rather than `char[16]`.
    pub comm_data_loc: u16,
    pub total_vm: u16,
    pub anon_rss: u16,
    pub file_rss: u16,
    pub shmem_rss: u16,
    pub uid: u16,
    pub pgtables: u16,
    pub oom_score_adj: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SignalFields {
    pub sig: u16,
    pub code: u16,
    pub comm: u16,
    pub pid: u16,
    pub group: u16,
    pub result: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessFields {
    /// `sched_process_exec`: `__data_loc char[] filename`.
    pub exec_filename: u16,
    /// `sched_process_exit`: `bool group_dead` (Linux 6.16+); without it, the thread-group
    /// leader's exit stands for the process's.
    pub exit_group_dead: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallFields {
    /// `sys_enter_connect` arguments.
    pub connect_fd: u16,
    pub connect_uservaddr: u16,
    pub connect_addrlen: u16,
    /// `sys_enter_listen` argument.
    pub listen_fd: u16,
    /// `ret` of `sys_exit_*`.
    pub exit_ret: u16,
}

/// The write-family syscalls' buffer arguments, and fork's child.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpFields {
    /// `sys_enter_write`: `buf`, `count`.
    pub write_buf: u16,
    pub write_count: u16,
    /// `sys_enter_writev`: `vec`, `vlen`.
    pub writev_vec: u16,
    pub writev_vlen: u16,
    /// `sys_enter_sendto`: `buff`, `len`.
    pub sendto_buf: u16,
    pub sendto_len: u16,
    /// `sys_enter_sendmsg`: `msg`.
    pub sendmsg_msg: u16,
    /// `sched_process_fork`: `child_pid`.
    pub fork_child_pid: u16,
}

/// Byte offsets of kernel struct fields, from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelOffsets {
    /// `struct sock`: `sk_err`.
    pub sock_sk_err: u16,
    /// `struct sock`: `__sk_common.skc_state`.
    pub sock_state: u16,
    /// `struct task_struct`: `real_parent`, `tgid`, `exit_code`.
    pub task_real_parent: u16,
    pub task_tgid: u16,
    pub task_exit_code: u16,
    /// `struct tcp_sock` (which starts with its `struct sock`): `bytes_received` and
    /// `bytes_acked`, both `u64`, Linux 4.1+ (see [`crate::connect`]). Without both, no
    /// connection is followed to its end.
    pub tcp_bytes_received: u16,
    pub tcp_bytes_acked: u16,
    /// The way from a task's fd to its socket's state, so that a `listen(2)` on a socket
    /// already listening (a re-listen only changes the backlog) is not reported again:
    /// `task_struct.files`, `files_struct.fdt`, `fdtable.fd`, `file.private_data` (a
    /// socket's `struct socket`), `socket.sk`. Without all five, every successful
    /// `listen(2)` is reported (within its process's budget).
    pub task_files: u16,
    pub files_fdt: u16,
    pub fdtable_fd: u16,
    pub file_private_data: u16,
    pub socket_sk: u16,
    /// `task_struct.pid` (the thread id) and `task_struct.comm`, read by the `tp_btf`
    /// programs of `sched_process_fork` (a thread is not a process: `pid != tgid`) and
    /// `signal_generate` (the target's process).
    pub task_pid: u16,
    pub task_comm: u16,
    /// `kernel_siginfo.si_code`, for `signal_generate` as `tp_btf`.
    pub siginfo_code: u16,
    /// Namespaces, by inode number: a socket's network namespace
    /// (`sock.__sk_common.skc_net.net`, then `net.ns.inum`), a task's network and mount
    /// namespaces (`task_struct.nsproxy`, `nsproxy.net_ns`/`mnt_ns`, `net.ns.inum`,
    /// `mnt_namespace.ns.inum`). Without them, records carry namespace 0.
    pub sock_net: u16,
    pub net_inum: u16,
    pub task_nsproxy: u16,
    pub nsproxy_net_ns: u16,
    pub nsproxy_mnt_ns: u16,
    pub mnt_ns_inum: u16,
    /// Keeps `KernelConfig` free of hidden padding.
    pub _pad: [u16; 2],
}

/// `struct sock` fields the `tp_btf` programs read where a classic tracepoint's record
/// would have carried them (from BTF; within `__sk_common` but `sk_protocol` and the
/// local port).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockOffsets {
    /// `u16 sk_protocol` (a bitfield before Linux 5.6: then unresolved).
    pub protocol: u16,
    pub family: u16,
    /// `skc_daddr` and `inet_sock.inet_saddr` (IPv4, network order): what the classic
    /// records store, so that a tuple from either matches the other's.
    pub daddr: u16,
    pub saddr: u16,
    /// `skc_dport`, and the local port `inet_sock.inet_sport` (both network order). Not
    /// `skc_num`: a closing socket has already released its port (`__inet_put_port`
    /// zeroes `inet_num`) when its move to CLOSE is traced.
    pub dport: u16,
    pub sport: u16,
    /// `skc_v6_daddr`, `skc_v6_rcv_saddr`.
    pub v6_daddr: u16,
    pub v6_rcv_saddr: u16,
}

/// Where `tcp_sendmsg_locked`'s `struct msghdr` keeps the bytes being sent: its
/// `struct iov_iter`, in Linux 6.4+'s layout, which the program reads in one go
/// ([`MsgOffsets::HEAD`]: the agent checks it against BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct MsgOffsets {
    /// `msghdr.msg_iter`.
    pub iter: u16,
    /// Within `iov_iter`: `u8 iter_type`, `size_t iov_offset`, `void *ubuf` (also
    /// `const struct iovec *__iov`), `size_t count`.
    pub iter_type: u16,
    pub iov_offset: u16,
    pub ubuf: u16,
    pub count: u16,
    /// The values of `enum iter_type`'s `ITER_UBUF` (`write`, `send`) and `ITER_IOVEC`
    /// (`writev`, `sendmsg`).
    pub kind_ubuf: u16,
    pub kind_iovec: u16,
    pub _pad: u16,
}

impl MsgOffsets {
    /// `iter_type`, `iov_offset`, `ubuf`, `count`: where the program's one read of the
    /// iterator's head expects them.
    pub const HEAD: [u16; 4] = [0, 8, 16, 24];
}

/// Everything in the `CONFIG` global.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelConfig {
    pub set_state: SetStateFields,
    pub error_report: ErrorReportFields,
    pub receive_reset: TcpSockFields,
    pub send_reset: TcpSockFields,
    pub retransmit_skb: TcpSockFields,
    pub retransmit_synack: TcpSockFields,
    pub mark_victim: MarkVictimFields,
    pub signal: SignalFields,
    pub process: ProcessFields,
    pub syscalls: SyscallFields,
    pub http: HttpFields,
    /// Ends where the u16 offsets end: `signal_mask` is 8-aligned with nothing in between
    /// (checked in `layout`).
    pub kernel: KernelOffsets,
    pub sock: SockOffsets,
    pub msg: MsgOffsets,
    /// Bit `n` set: report signal `n`.
    pub signal_mask: u64,
    /// A followed upstream connection the proxy closes first, with its request
    /// acknowledged and no response byte, at least this long after the handshake is
    /// reported as the proxy giving up (`UpstreamEnd`, `end_how::PROXY_GAVE_UP`).
    pub response_timeout_ns: u64,
}

const NO: u16 = crate::NO_OFFSET;
const NO_TUPLE: TupleFields = TupleFields {
    family: NO,
    sport: NO,
    dport: NO,
    saddr: NO,
    daddr: NO,
    saddr_v6: NO,
    daddr_v6: NO,
    sockaddr: 0,
};
const NO_TCP_SOCK: TcpSockFields = TcpSockFields {
    skaddr: NO,
    state: NO,
    reason: NO,
    _pad: 0,
    tuple: NO_TUPLE,
};

impl KernelConfig {
    /// Every offset unknown: what the kernel programs see unless the agent fills it in.
    pub const UNSET: Self = Self {
        set_state: SetStateFields {
            skaddr: NO,
            oldstate: NO,
            newstate: NO,
            protocol: NO,
            tuple: NO_TUPLE,
        },
        error_report: ErrorReportFields {
            error: NO,
            protocol: NO,
            tuple: NO_TUPLE,
        },
        receive_reset: NO_TCP_SOCK,
        send_reset: NO_TCP_SOCK,
        retransmit_skb: NO_TCP_SOCK,
        retransmit_synack: NO_TCP_SOCK,
        mark_victim: MarkVictimFields {
            pid: NO,
            comm: NO,
            comm_data_loc: 0,
            total_vm: NO,
            anon_rss: NO,
            file_rss: NO,
            shmem_rss: NO,
            uid: NO,
            pgtables: NO,
            oom_score_adj: NO,
        },
        signal: SignalFields {
            sig: NO,
            code: NO,
            comm: NO,
            pid: NO,
            group: NO,
            result: NO,
        },
        process: ProcessFields {
            exec_filename: NO,
            exit_group_dead: NO,
        },
        syscalls: SyscallFields {
            connect_fd: NO,
            connect_uservaddr: NO,
            connect_addrlen: NO,
            listen_fd: NO,
            exit_ret: NO,
        },
        http: HttpFields {
            write_buf: NO,
            write_count: NO,
            writev_vec: NO,
            writev_vlen: NO,
            sendto_buf: NO,
            sendto_len: NO,
            sendmsg_msg: NO,
            fork_child_pid: NO,
        },
        kernel: KernelOffsets {
            sock_sk_err: NO,
            sock_state: NO,
            task_real_parent: NO,
            task_tgid: NO,
            task_exit_code: NO,
            tcp_bytes_received: NO,
            tcp_bytes_acked: NO,
            task_files: NO,
            files_fdt: NO,
            fdtable_fd: NO,
            file_private_data: NO,
            socket_sk: NO,
            task_pid: NO,
            task_comm: NO,
            siginfo_code: NO,
            sock_net: NO,
            net_inum: NO,
            task_nsproxy: NO,
            nsproxy_net_ns: NO,
            nsproxy_mnt_ns: NO,
            mnt_ns_inum: NO,
            _pad: [0; 2],
        },
        sock: SockOffsets {
            protocol: NO,
            family: NO,
            daddr: NO,
            saddr: NO,
            dport: NO,
            sport: NO,
            v6_daddr: NO,
            v6_rcv_saddr: NO,
        },
        msg: MsgOffsets {
            iter: NO,
            iter_type: NO,
            iov_offset: NO,
            ubuf: NO,
            count: NO,
            kind_ubuf: NO,
            kind_iovec: NO,
            _pad: 0,
        },
        signal_mask: 0,
        response_timeout_ns: 1_000_000_000,
    };
}

#[cfg(feature = "user")]
crate::impl_pod!(KernelConfig);
