//! The CLI side: `why502 incidents | explain | watch | status` ask a running agent over its
//! API socket and print for people (or JSON with `--json`).
//!
//! Exit codes ([`Exit`]): 0 success, 1 error, 2 usage (bad arguments, from clap), 3 the
//! agent is not running, 4 no such incident (or `--last` with none).

mod commands;
pub mod http;
pub mod render;
mod watch;

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    process::ExitCode,
};

pub use http::{ApiClient, IncidentQuery};
use serde_json::Value;

use crate::cli::ClientCommand;

/// How a client command ended, as its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Success = 0,
    Error = 1,
    /// Bad arguments; clap exits with it before a command runs.
    Usage = 2,
    NotRunning = 3,
    NoSuchIncident = 4,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "why502 agent is not running (no API socket at {socket}); \
         start it with `systemctl start why502` or `why502 agent`"
    )]
    NotRunning { socket: PathBuf },
    #[error(
        "cannot connect to the agent at {socket}: permission denied; \
         run as root or as a member of the socket's group"
    )]
    PermissionDenied { socket: PathBuf },
    #[error("cannot connect to the agent at {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent at {socket} did not answer in time")]
    Timeout { socket: PathBuf },
    #[error("cannot request {path}")]
    Request {
        path: String,
        #[source]
        source: hyper::http::Error,
    },
    #[error("talking to the agent failed")]
    Http {
        #[source]
        source: hyper::Error,
    },
    #[error("the agent's answer to {path} is not what this why502 understands")]
    BadResponse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the agent refused the request ({status}): {message}")]
    Api { status: u16, message: String },
    #[error("no incident {id}")]
    NoSuchIncident { id: u64 },
    #[error("no incidents recorded yet")]
    NoIncidents,
    #[error("cannot start the async runtime")]
    Runtime {
        #[source]
        source: io::Error,
    },
    #[error("cannot handle Ctrl-C")]
    Signal {
        #[source]
        source: io::Error,
    },
    #[error("cannot write the output")]
    Output {
        #[source]
        source: io::Error,
    },
}

impl ClientError {
    fn connect(socket: &Path, err: io::Error) -> Self {
        let socket = socket.to_path_buf();
        match err.kind() {
            // No socket file, or one nobody listens on: a stopped (or crashed) agent.
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning { socket }
            }
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { socket },
            _ => ClientError::Connect {
                socket,
                source: err,
            },
        }
    }

    fn api(status: hyper::StatusCode, body: &Value) -> Self {
        let message = body
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| body.to_string(), String::from);
        ClientError::Api {
            status: status.as_u16(),
            message,
        }
    }

    /// Whether the agent could not be reached at all (as opposed to answering wrongly).
    fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::NotRunning { .. }
                | ClientError::Connect { .. }
                | ClientError::Timeout { .. }
                | ClientError::Http { .. }
        )
    }

    pub fn exit(&self) -> Exit {
        match self {
            ClientError::NotRunning { .. } => Exit::NotRunning,
            ClientError::NoSuchIncident { .. } | ClientError::NoIncidents => Exit::NoSuchIncident,
            _ => Exit::Error,
        }
    }
}

/// Runs a client command on a runtime of its own, reports a failure on standard error in
/// one line, and says how to exit.
pub fn run(command: ClientCommand) -> Exit {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ClientError::Runtime { source })
        .and_then(|runtime| runtime.block_on(commands::run(command)));
    match result {
        Ok(()) => Exit::Success,
        // The reader went away (`why502 incidents | head`): nothing left to do.
        Err(ClientError::Output { source }) if source.kind() == io::ErrorKind::BrokenPipe => {
            Exit::Success
        }
        Err(err) => {
            match err {
                // Already a sentence about why502.
                ClientError::NotRunning { .. } => eprintln!("{}", crate::error_chain(&err)),
                _ => eprintln!("why502: {}", crate::error_chain(&err)),
            }
            err.exit()
        }
    }
}

/// Writes `text` and a newline to standard output, at once.
fn print(text: &str) -> Result<(), ClientError> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush())
        .map_err(|source| ClientError::Output { source })
}

/// Pretty JSON, for `--json` (watch prints compact lines instead).
fn print_json(value: &impl serde::Serialize) -> Result<(), ClientError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|err| ClientError::Output { source: err.into() })?;
    print(&render::terminal_safe_json(&text))
}
