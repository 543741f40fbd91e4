//! The API's start-up check of an existing socket cannot hang: a socket whose listener
//! never accepts (its backlog full, as a hung agent or another user's process leaves it)
//! is found busy at once instead of blocking the agent's start in `connect()`.

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
        let outcome = runtime.block_on(async { api::serve(&path, state).map(|task| task.abort()) });
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
