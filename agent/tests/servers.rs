//! The API's socket: the start-up check of an existing socket cannot hang (a socket whose
//! listener never accepts, its backlog full, as a hung agent or another user's process
//! leaves it, is found busy at once instead of blocking the agent's start in `connect()`);
//! it is root's only unless a group is configured, whose members (and only they) can then
//! connect; and it is removed when the server stops, unless something else took its path.

use std::{
    os::unix::net::{UnixListener, UnixStream},
    sync::{mpsc, Arc},
    time::Duration,
};

use why502::sinks::{
    api::{self, ApiError, ApiState, RecentEvents},
    store::Store,
};

/// How long the check may take: a connect on a local socket answers in microseconds.
const CHECK_BOUND: Duration = Duration::from_secs(5);

#[test]
fn a_socket_whose_listener_never_accepts_does_not_hang_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("why502.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    // Fill its backlog: connects that nobody accepts, until one would block.
    let mut queued = Vec::new();
    loop {
        match nonblocking_connect(&socket) {
            Some(stream) => queued.push(stream),
            None => break,
        }
        assert!(queued.len() < 100_000, "the backlog never filled");
    }

    let state = ApiState {
        store: Arc::new(Store::open(dir.path().join("why502.db")).unwrap()),
        recent: Arc::new(RecentEvents::default()),
        status: Arc::new(|| unreachable!("the server must not start")),
    };
    let (done, result) = mpsc::channel();
    let path = socket.clone();
    // On a thread of its own, so that a hang fails the test instead of blocking it.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome =
            runtime.block_on(async { api::serve(&path, None, state).map(|task| task.abort()) });
        let _ = done.send(outcome);
    });
    let outcome = result
        .recv_timeout(CHECK_BOUND)
        .expect("the check of the existing socket hung in connect()");
    assert!(
        matches!(outcome, Err(ApiError::AlreadyServing { .. })),
        "{outcome:?}"
    );
    assert!(socket.exists(), "a live listener's socket is not removed");
    drop(listener);
}

/// A connect that fails with EAGAIN instead of blocking on a full backlog.
fn nonblocking_connect(path: &std::path::Path) -> Option<UnixStream> {
    use std::os::fd::FromRawFd;
    let bytes = path.as_os_str().as_encoded_bytes();
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied within its bounds, and the
    // fd is owned by the UnixStream made from it (or closed).
    unsafe {
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        assert!(bytes.len() < addr.sun_path.len());
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
        assert!(fd >= 0);
        let rc = libc::connect(
            fd,
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        );
        if rc == 0 {
            return Some(UnixStream::from_raw_fd(fd));
        }
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN), "{err}");
        None
    }
}

fn state(dir: &std::path::Path) -> ApiState {
    ApiState {
        store: Arc::new(Store::open(dir.join("why502.db")).unwrap()),
        recent: Arc::new(RecentEvents::default()),
        status: Arc::new(|| unreachable!("no test asks for the status")),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A group of the test's own (`groupadd`), deleted on drop however the test ends.
struct TestGroup {
    name: String,
    gid: u32,
}

impl TestGroup {
    fn new() -> Self {
        let name = format!("w502t{}", std::process::id());
        let out = std::process::Command::new("groupadd")
            .args(["--system", &name])
            .output()
            .expect("run groupadd");
        assert!(
            out.status.success(),
            "groupadd {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let gid = why502::config::group_id(&name)
            .unwrap()
            .expect("the group just added");
        Self { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _ = std::process::Command::new("groupdel")
            .arg(&self.name)
            .status();
    }
}

/// `nobody`, and `nogroup` on Debian.
const NOBODY_UID: libc::uid_t = 65534;
const NOGROUP_GID: libc::gid_t = 65534;

/// Whether user `nobody`, with `extra_group` as its only supplementary group (or none),
/// can connect to `socket`: `Ok` or the errno, from a child that drops to that user.
fn connect_as_nobody(socket: &std::path::Path, extra_group: Option<u32>) -> Result<(), i32> {
    let bytes = socket.as_os_str().as_encoded_bytes();
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied within its bounds.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    assert!(bytes.len() < addr.sun_path.len());
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let groups: Vec<libc::gid_t> = extra_group.into_iter().collect();
    // Prepared before the fork: the child only makes raw syscalls (this process has
    // threads) and leaves with `_exit`, its status the connect's errno (0: connected).
    // SAFETY: as said.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: the child, as above.
        unsafe {
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(NOGROUP_GID) != 0
                || libc::setuid(NOBODY_UID) != 0
            {
                libc::_exit(200);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if fd < 0 {
                libc::_exit(201);
            }
            let rc = libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            if rc == 0 {
                libc::_exit(0);
            }
            libc::_exit(*libc::__errno_location());
        }
    }
    let mut status = 0;
    // SAFETY: reaping our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "the child died: {status:#x}");
    match libc::WEXITSTATUS(status) {
        0 => Ok(()),
        code @ 200.. => panic!("the child could not become nobody or make a socket ({code})"),
        errno => Err(errno),
    }
}

/// A directory other users can enter (a temporary directory is its owner's only), so
/// that the socket's own mode is what decides.
fn searchable_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn mode_and_gid(path: &std::path::Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).unwrap();
    (meta.mode() & 0o7777, meta.gid())
}

#[test]
fn without_a_group_only_root_can_use_the_socket() {
    if !is_root() {
        eprintln!("skipped: not root (the test drops a child to nobody)");
        return;
    }
    let dir = searchable_dir();
    let socket = dir.path().join("why502.sock");
    let rt = runtime();
    let _server = rt
        .block_on(async { api::serve(&socket, None, state(dir.path())) })
        .unwrap();
    assert_eq!(mode_and_gid(&socket), (0o600, 0), "root's only");
    assert_eq!(connect_as_nobody(&socket, None), Err(libc::EACCES));
    UnixStream::connect(&socket).expect("root connects");
}

#[test]
fn the_configured_group_and_only_it_can_use_the_socket() {
    if !is_root() {
        eprintln!("skipped: not root (groupadd, and a child dropped to nobody)");
        return;
    }
    let group = TestGroup::new();
    let dir = searchable_dir();
    let socket = dir.path().join("why502.sock");
    let rt = runtime();
    let _server = rt
        .block_on(async { api::serve(&socket, Some(&group.name), state(dir.path())) })
        .unwrap();
    assert_eq!(mode_and_gid(&socket), (0o660, group.gid));
    assert_eq!(connect_as_nobody(&socket, Some(group.gid)), Ok(()));
    assert_eq!(connect_as_nobody(&socket, None), Err(libc::EACCES));

    // A directory the agent creates for the socket lets the group in (whatever the
    // umask), and nothing else in it is loosened.
    // (Its parent exists, as /run does.)
    std::fs::create_dir(dir.path().join("run")).unwrap();
    std::fs::set_permissions(
        dir.path().join("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let nested = dir.path().join("run/why502");
    let in_nested = nested.join("why502.sock");
    let _second = rt
        .block_on(async { api::serve(&in_nested, Some(&group.name), state(dir.path())) })
        .unwrap();
    assert_eq!(mode_and_gid(&nested).0, 0o755);
    assert_eq!(connect_as_nobody(&in_nested, Some(group.gid)), Ok(()));
    assert_eq!(connect_as_nobody(&in_nested, None), Err(libc::EACCES));
}

#[test]
fn an_unknown_group_is_an_error_naming_the_key_and_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("why502.sock");
    let err = runtime()
        .block_on(async { api::serve(&socket, Some("why502-no-such-group"), state(dir.path())) })
        .unwrap_err();
    assert!(matches!(err, ApiError::UnknownGroup { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "api.socket_group: no group \"why502-no-such-group\" on this host"
    );
    assert!(!socket.exists());
}

#[test]
fn the_socket_is_removed_when_the_server_stops_and_only_if_it_is_still_ours() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("why502.sock");
    let rt = runtime();
    let state = || state(dir.path());

    // Aborted (as the agent stops its tasks), then dropped with the runtime.
    let server = rt
        .block_on(async { api::serve(&socket, None, state()) })
        .unwrap();
    assert!(socket.exists());
    server.abort();
    let deadline = std::time::Instant::now() + CHECK_BOUND;
    while socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the socket outlived its server"
        );
        rt.block_on(tokio::task::yield_now());
    }

    // The runtime shutting down (the agent's exit after SIGTERM) removes it too.
    let rt2 = runtime();
    let _server = rt2
        .block_on(async { api::serve(&socket, None, state()) })
        .unwrap();
    assert!(socket.exists());
    drop(rt2);
    assert!(!socket.exists(), "the socket outlived the runtime");

    // Another socket in its place (a second agent's, after this one's was moved away):
    // not removed, nor the moved one.
    let rt3 = runtime();
    let _server = rt3
        .block_on(async { api::serve(&socket, None, state()) })
        .unwrap();
    let moved = dir.path().join("moved.sock");
    std::fs::rename(&socket, &moved).unwrap();
    let other = UnixListener::bind(&socket).unwrap();
    drop(rt3);
    assert!(socket.exists(), "another agent's socket was removed");
    assert!(moved.exists());
    drop(other);
}
