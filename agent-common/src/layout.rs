//! Compile-time checks of the layouts the kernel programs and the agent share.
//!
//! The kernel writes these types into the ring buffer and maps and the agent reinterprets
//! the bytes, so a layout that changed by accident (a field inserted, a type widened, the
//! compiler inserting padding) must fail the build rather than garble the data. In
//! particular, hash map keys are compared bytewise by the kernel: a key with implicit
//! (uninitialised) padding could miss its own entry, and the verifier refuses to pass
//! uninitialised stack bytes to a helper. `assert_no_padding!` checks that every byte of
//! a type belongs to a field; the header-at-offset-0 check of each record comes with its
//! kind (`event_kinds!` in [`crate::event`]).

use core::mem::{align_of, offset_of, size_of};

use crate::{
    budget::{Budget, BudgetKey},
    config::{
        ErrorReportFields, HttpFields, KernelConfig, KernelOffsets, MarkVictimFields, MsgOffsets,
        Probe, ProcessFields, SetStateFields, SignalFields, SockOffsets, SyscallFields,
        TcpSockFields, TupleFields,
    },
    connect::{
        ConnectCall, ConnectKey, ConnectStats, ConnectSyscallError, TcpConnectFailure,
        TrackedConnect, Traffic, UpstreamEnd,
    },
    event::{counter, EventHeader, EventKind, Record, EVENT_KIND_SLOTS},
    http::ResponseKey,
    listener::{ListenCall, ListenerChange, ListenerClosed, ListenerOpened},
    net::{RawSockAddr, SockTuple},
    process::{OomKill, ProcessExec, ProcessExit, Signal},
    tcp::{
        TcpHandshakeRetransmit, TcpResetReceived, TcpResetSent, TcpSynAckRetransmit,
        TcpSynRetransmit,
    },
};

/// The size of the field `field` selects: a type-level helper, nothing is called.
const fn field_size<T, F>(_field: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// Asserts that the fields, listed in declaration order, tile the type: each starts where
/// the previous one ends and the last one ends at the type's size. A field left out of the
/// list fails the check as padding would.
macro_rules! assert_no_padding {
    ($($ty:ty { $($field:tt),+ $(,)? })+) => {$(
        const _: () = {
            let mut end = 0;
            $(
                assert!(
                    offset_of!($ty, $field) == end,
                    concat!("padding (or an unlisted field) before ",
                        stringify!($ty), ".", stringify!($field)),
                );
                end += field_size(|value: &$ty| &value.$field);
            )+
            assert!(
                end == size_of::<$ty>(),
                concat!("trailing padding (or an unlisted field) in ", stringify!($ty)),
            );
        };
    )+};
}

// The record header and payload building blocks.
assert_no_padding! {
    EventHeader { kind, pid, tgid, netns, ts_ns, cgroup_id, comm }
    SockTuple { family, sport, dport, _pad, saddr, daddr }
    RawSockAddr { len, family, _pad, bytes }
    Traffic { duration_ns, bytes_sent, bytes_received }
}
const _: () = assert!(size_of::<EventHeader>() == 48 && align_of::<EventHeader>() == 8);

// Ring-buffer records: every byte is a field, so nothing uninitialised reaches userspace.
assert_no_padding! {
    TcpConnectFailure {
        header, tuple, duration_ns, errno, syn_retransmits, errno_source, owner_known
    }
    ConnectSyscallError { header, addr, duration_ns, fd, errno, mntns, _pad }
    TcpResetReceived { header, tuple, state, owner_known, traffic, followed, _pad }
    TcpResetSent { header, tuple, state, reason, owner_known, _pad }
    TcpHandshakeRetransmit { header, tuple, count, owner_known }
    TcpSynRetransmit { 0 }
    TcpSynAckRetransmit { 0 }
    ListenerChange { header, tuple }
    ListenerOpened { 0 }
    ListenerClosed { 0 }
    ListenCall { header, fd, mntns }
    ProcessExec { header, ppid, _pad, filename }
    ProcessExit { header, exit_code, ppid }
    Signal { header, signal, code, target_pid, group, result, target_tgid, target_comm }
    OomKill {
        header, victim_pid, uid, total_vm_kb, anon_rss_kb, file_rss_kb, shmem_rss_kb,
        pgtables_kb, oom_score_adj, _pad, victim_comm
    }
    UpstreamEnd { header, tuple, traffic, how, _pad }
}

/// The record sizes of the ring-buffer format as it is. A change here changes what the
/// agent reads: make it on purpose, for kernel and agent together.
const fn record_size<T: Record>() -> (EventKind, usize) {
    (T::KIND, size_of::<T>())
}
const RECORD_SIZES: [(EventKind, usize); EventKind::COUNT] = [
    record_size::<TcpConnectFailure>(),
    record_size::<ConnectSyscallError>(),
    record_size::<TcpResetReceived>(),
    record_size::<TcpResetSent>(),
    record_size::<TcpSynRetransmit>(),
    record_size::<TcpSynAckRetransmit>(),
    record_size::<ListenerOpened>(),
    record_size::<ListenerClosed>(),
    record_size::<ListenCall>(),
    record_size::<ProcessExec>(),
    record_size::<ProcessExit>(),
    record_size::<Signal>(),
    record_size::<OomKill>(),
    record_size::<UpstreamEnd>(),
];
const _: () = {
    const EXPECTED: [usize; EventKind::COUNT] = [
        104, 192, 128, 104, 96, 96, 88, 88, 56, 312, 56, 88, 120, 120,
    ];
    let mut i = 0;
    while i < RECORD_SIZES.len() {
        let (kind, size) = RECORD_SIZES[i];
        assert!(
            kind as u32 == EventKind::ALL[i] as u32,
            "RECORD_SIZES is not in kind order"
        );
        assert!(size == EXPECTED[i], "a ring-buffer record changed size");
        i += 1;
    }
};

// Map keys (compared bytewise by the kernel) and values, and the `CONFIG` global.
assert_no_padding! {
    ConnectKey { tgid, netns, family, dport, daddr }
    ConnectStats { established, latency_sum_ns, retransmits, closed_ok, latency_hist }
    TrackedConnect {
        start_ns, established_ns, cgroup_id, pid, tgid, ppid, _pad_ppid, comm,
        syn_retransmits, established, follow, end_reported, _pad
    }
    ConnectCall { start_ns, uaddr, addrlen, fd, reported, _pad }
    ResponseKey { tgid, code, _pad }
    BudgetKey { tgid, uid, kind, _pad }
    Budget { window_start_ns, sent }
    TupleFields { family, sport, dport, saddr, daddr, saddr_v6, daddr_v6, sockaddr }
    SetStateFields { skaddr, oldstate, newstate, protocol, tuple }
    ErrorReportFields { error, protocol, tuple }
    TcpSockFields { skaddr, state, reason, _pad, tuple }
    MarkVictimFields {
        pid, comm, comm_data_loc, total_vm, anon_rss, file_rss, shmem_rss, uid, pgtables,
        oom_score_adj
    }
    SignalFields { sig, code, comm, pid, group, result }
    ProcessFields { exec_filename, exit_group_dead }
    SyscallFields { connect_fd, connect_uservaddr, connect_addrlen, listen_fd, exit_ret }
    HttpFields {
        write_buf, write_count, writev_vec, writev_vlen, sendto_buf, sendto_len, sendmsg_msg,
        fork_child_pid
    }
    KernelOffsets {
        sock_sk_err, sock_state, task_real_parent, task_tgid, task_exit_code,
        tcp_bytes_received, tcp_bytes_acked, task_files, files_fdt, fdtable_fd,
        file_private_data, socket_sk, task_pid, task_comm, siginfo_code, sock_net, net_inum,
        task_nsproxy, nsproxy_net_ns, nsproxy_mnt_ns, mnt_ns_inum, _pad
    }
    SockOffsets { protocol, family, daddr, saddr, dport, sport, v6_daddr, v6_rcv_saddr }
    MsgOffsets {
        iter, iter_type, iov_offset, ubuf, count, kind_ubuf, kind_iovec, _pad
    }
    KernelConfig {
        set_state, error_report, receive_reset, send_reset, retransmit_skb,
        retransmit_synack, mark_victim, signal, process, syscalls, http, kernel, sock, msg,
        signal_mask, response_timeout_ns
    }
}

// The `CONFIG` global the agent writes through `EbpfLoader::override_global`.
const _: () = assert!(size_of::<KernelConfig>() == 296 && align_of::<KernelConfig>() == 8);
const _: () = assert!(offset_of!(KernelConfig, signal_mask) == 280);
const _: () = assert!(offset_of!(KernelConfig, response_timeout_ns) == 288);

// Counter slots: per-kind drops, then per-kind throttled records, below the probe errors,
// probe errors within the array.
const _: () = {
    assert!(
        counter::DROPPED_BASE + EVENT_KIND_SLOTS <= counter::THROTTLED_BASE,
        "drop counters overlap the throttled counters"
    );
    assert!(
        counter::THROTTLED_BASE + EVENT_KIND_SLOTS <= counter::PROBE_ERROR_BASE,
        "throttled counters overlap the probe-error counters"
    );
    let mut slots = 0;
    let mut i = 0;
    while i < Probe::ALL.len() {
        if Probe::ALL[i] as u32 + 1 > slots {
            slots = Probe::ALL[i] as u32 + 1;
        }
        i += 1;
    }
    assert!(
        counter::PROBE_ERROR_BASE + slots <= counter::TABLE_FULL_BASE,
        "probe-error counters overlap the table-full counters"
    );
    let mut tables = 0;
    let mut i = 0;
    while i < counter::Table::ALL.len() {
        if counter::Table::ALL[i] as u32 + 1 > tables {
            tables = counter::Table::ALL[i] as u32 + 1;
        }
        i += 1;
    }
    assert!(
        counter::TABLE_FULL_BASE + tables <= counter::SLOTS,
        "table-full counters do not fit in COUNTERS"
    );
};
