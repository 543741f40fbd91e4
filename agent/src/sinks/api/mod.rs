//! The local HTTP API, on a unix socket only (mode 0660: root and the socket's group), for
//! the CLI and for whoever else on the host wants the incidents:
//!
//! - `GET /v1/incidents?since=1h&upstream=…&proxy=…&limit=N` → `{"incidents": [...]}`,
//!   newest first; `since` is a duration back from now or an RFC 3339 time.
//! - `GET /v1/incidents/{id}` → the incident, or 404.
//! - `GET /v1/events?since=…&limit=N` → `{"events": [...]}`, the newest recent events at
//!   or after `since`, oldest first.
//! - `GET /v1/status` → [`StatusReport`].
//!
//! Errors are `{"error": "…"}` with a 4xx or 5xx status.

mod recent;
mod routes;
mod since;
mod status;

use std::{
    io,
    os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::task::JoinHandle;

pub use recent::{EventCut, RecentEvents, RECENT_CAPACITY};
pub use routes::router;
pub use since::{parse_since, SinceError};
pub use status::{
    EventCounts, KernelReport, ProbeStatusReport, StatusReport, StoreReport, VERSION,
};

use crate::sinks::{http_server, store::Store};

/// What the handlers read from.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<Store>,
    pub recent: Arc<RecentEvents>,
    /// Builds the status report on request; called on a blocking thread, so it may lock.
    pub status: Arc<dyn Fn() -> StatusReport + Send + Sync>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the API must be started from within the async runtime")]
    NoRuntime,
    #[error("cannot create the directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another agent is already serving on {socket}")]
    AlreadyServing { socket: PathBuf },
    #[error("{path} exists and is not a socket; move it away or set api.socket")]
    NotASocket { path: PathBuf },
    #[error("cannot check the existing socket {path}")]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot remove the stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set the permissions of {path}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Permissions of the socket: the API shows command lines and unit names, so not to
/// everyone.
const SOCKET_MODE: u32 = 0o660;

/// Listens on `socket` (replacing a stale socket file a dead agent left) and serves until
/// the returned task is aborted. Must be called from within the tokio runtime.
pub fn serve(socket: &Path, state: ApiState) -> Result<JoinHandle<()>, ApiError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ApiError::NoRuntime);
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(|source| ApiError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    remove_stale(socket)?;
    let bind = |source| ApiError::Bind {
        path: socket.to_path_buf(),
        source,
    };
    let listener = std::os::unix::net::UnixListener::bind(socket).map_err(bind)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(
        |source| ApiError::Permissions {
            path: socket.to_path_buf(),
            source,
        },
    )?;
    listener.set_nonblocking(true).map_err(bind)?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(bind)?;
    let app = router(state);
    let path = socket.to_path_buf();
    Ok(tokio::spawn(async move {
        // A user of the socket's group must not be able to hold the CLI out.
        http_server::serve(listener, app, http_server::LIMITS).await;
        log::error!("API on {} stopped", path.display());
    }))
}

/// Removes a socket file nobody answers on. One that answers belongs to a running agent
/// (two agents would double-count every event), and anything else is not ours to delete.
fn remove_stale(socket: &Path) -> Result<(), ApiError> {
    let probe = |source| ApiError::Probe {
        path: socket.to_path_buf(),
        source,
    };
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(meta) => meta,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(probe(err)),
    };
    if !meta.file_type().is_socket() {
        return Err(ApiError::NotASocket {
            path: socket.to_path_buf(),
        });
    }
    match probe_listener(socket) {
        // EAGAIN: a listener whose backlog is full (a hung agent, or anyone's process) is
        // still a listener; a blocking connect would wait for it forever.
        Ok(()) => Err(ApiError::AlreadyServing {
            socket: socket.to_path_buf(),
        }),
        Err(err) if err.raw_os_error() == Some(libc::EAGAIN) => Err(ApiError::AlreadyServing {
            socket: socket.to_path_buf(),
        }),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(socket)
            .map_err(|source| ApiError::RemoveStale {
                path: socket.to_path_buf(),
                source,
            }),
        Err(err) => Err(probe(err)),
    }
}

/// Connects to `socket` without blocking: `Ok` when a listener took the connection,
/// `EAGAIN` when one exists but its backlog is full, `ECONNREFUSED` when none listens.
fn probe_listener(socket: &Path) -> io::Result<()> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    let path = socket.as_os_str().as_bytes();
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket path is too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(path) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is owned (and closed) by `fd` from here on.
    let raw = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
    // SAFETY: `addr` is a valid sockaddr_un of the size given, alive for the call.
    let rc = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&addr as *const libc::sockaddr_un).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests;
