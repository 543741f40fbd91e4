//! The local HTTP API, on a unix socket only (mode 0600, root only; or 0660 with the
//! configured `api.socket_group`), for the CLI and for whoever else on the host wants the
//! incidents:
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
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
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
    #[error("api.socket_group: no group {group:?} on this host")]
    UnknownGroup { group: String },
    #[error("api.socket_group: cannot look up group {group:?}")]
    GroupLookup {
        group: String,
        #[source]
        source: io::Error,
    },
}

/// Permissions of the socket: the API shows command lines and unit names, so by default
/// root's only; with a configured group, its members' too.
const SOCKET_MODE: u32 = 0o600;
const GROUP_SOCKET_MODE: u32 = 0o660;

/// Listens on `socket` (replacing a stale socket file a dead agent left) and serves until
/// the returned task is aborted. The socket is root's only (0600), or also `group`'s
/// (0660). It is removed when the task ends (aborted, or the runtime shut down: a clean
/// stop), unless the path is no longer that socket. Must be called from within the tokio
/// runtime.
pub fn serve(
    socket: &Path,
    group: Option<&str>,
    state: ApiState,
) -> Result<JoinHandle<()>, ApiError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ApiError::NoRuntime);
    }
    let gid = match group {
        None => None,
        Some(name) => match crate::config::group_id(name) {
            Ok(Some(gid)) => Some(gid),
            Ok(None) => {
                return Err(ApiError::UnknownGroup {
                    group: name.to_string(),
                })
            }
            Err(source) => {
                return Err(ApiError::GroupLookup {
                    group: name.to_string(),
                    source,
                })
            }
        },
    };
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) {
        let create_dir = |source| ApiError::CreateDir {
            path: dir.to_path_buf(),
            source,
        };
        let existed = dir.exists();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(create_dir)?;
        if let (Some(gid), Some(name)) = (gid, group) {
            if !existed {
                // The group must be able to reach the socket, whatever the umask did;
                // the socket's own mode keeps everyone else out.
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
                    .map_err(create_dir)?;
            }
            warn_if_unreachable(dir, gid, name);
        }
    }
    remove_stale(socket)?;
    let bind = |source| ApiError::Bind {
        path: socket.to_path_buf(),
        source,
    };
    let listener = bind_owner_only(socket).map_err(bind)?;
    // From here on the file is ours: removed on any error below, and when the task ends.
    let file = SocketFile::new(socket).map_err(bind)?;
    let permissions = |source| ApiError::Permissions {
        path: socket.to_path_buf(),
        source,
    };
    let mode = match gid {
        Some(gid) => {
            // lchown: never follow a link someone put in the socket's place.
            std::os::unix::fs::lchown(socket, None, Some(gid)).map_err(permissions)?;
            GROUP_SOCKET_MODE
        }
        None => SOCKET_MODE,
    };
    // Explicit, whatever the umask left: 0600 already, 0660 for the group.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(mode)).map_err(permissions)?;
    listener.set_nonblocking(true).map_err(bind)?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(bind)?;
    let app = router(state);
    Ok(tokio::spawn(async move {
        // Dropped with this future: when the task is aborted, or the runtime shuts down.
        let file = file;
        // A user of the socket's group must not be able to hold the CLI out.
        http_server::serve(listener, app, http_server::LIMITS).await;
        log::error!("API on {} stopped", file.path.display());
    }))
}

/// The socket file this agent bound, removed when dropped if the path still is that
/// file (same device and inode): a socket another agent bound there since, or anything
/// else put in its place, is not ours to remove.
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    fn new(path: &Path) -> io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        if !meta.file_type().is_socket() {
            return Err(io::Error::other("the socket just bound is gone"));
        }
        Ok(Self {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino);
        if !ours {
            log::info!(
                "{} is no longer this agent's socket: left in place",
                self.path.display()
            );
            return;
        }
        if let Err(err) = std::fs::remove_file(&self.path) {
            log::warn!(
                "cannot remove the API socket {}: {err}",
                self.path.display()
            );
        }
    }
}

/// A listening unix socket at `path` that nobody but its owner can connect to from the
/// moment it exists: its mode is set to 0600 before `bind` creates the file (Linux gives
/// the file the socket inode's mode, less the umask), so that no umask leaves a window in
/// which others could connect.
fn bind_owner_only(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    };
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: a zeroed sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the socket path is too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is owned (and closed) by `fd` from here on.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: plain syscalls on our own fd; `addr` is a valid sockaddr_un of the size
    // given, alive for the call.
    unsafe {
        if libc::fchmod(fd.as_raw_fd(), SOCKET_MODE) != 0
            || libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::listen(fd.as_raw_fd(), libc::SOMAXCONN) != 0 {
            let err = io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(err);
        }
    }
    Ok(std::os::unix::net::UnixListener::from(fd))
}

/// Warns when members of group `gid` cannot reach a socket in `dir`: the directory must
/// let them search it (others' x, or group x with that group). The directory is left as
/// it is: under systemd it is the unit's `RuntimeDirectory`, whose mode the unit sets.
fn warn_if_unreachable(dir: &Path, gid: u32, group: &str) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let mode = meta.mode();
    let searchable = mode & 0o001 != 0 || (mode & 0o010 != 0 && meta.gid() == gid);
    if !searchable {
        log::warn!(
            "members of group {group} cannot reach the API socket: its directory {} is mode              {:o} (make it 0755, e.g. RuntimeDirectoryMode=0755 in the unit)",
            dir.display(),
            mode & 0o7777
        );
    }
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
