//! The agent's way into the store: whatever state the file is in, it comes back with a
//! store to run on, because a bad file must not leave the host unwatched (under systemd an
//! agent that exits on it restarts into the same file, forever).
//!
//! - A file SQLite cannot read as a database, or a corrupt one, is moved aside
//!   (`why502.db.bad-<time>`, with the `-wal` and `-shm` SQLite left) and a fresh store started.
//! - A file of a newer schema is left alone (it is a newer why502's data, not garbage), and
//!   so is a file on a read-only or full disk: incidents are kept in memory for this run,
//!   and [`Persistence::Memory`] says why (`why502 status`, `why502_store_persistent`).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use rusqlite::ErrorCode;

use super::{
    schema::SchemaError, with_suffix, Store, StoreError, StoreWriter, StoreWriterHandle,
    COMPANION_SUFFIXES,
};

/// Where this run keeps its incidents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persistence {
    /// In the configured file.
    File,
    /// In memory only, lost at stop; why the file could not be used.
    Memory { reason: String },
}

/// The store the agent runs on: the API's connection, the writer thread, and which kind.
pub struct AgentStore {
    pub store: Arc<Store>,
    pub writer: StoreWriterHandle,
    pub persistence: Persistence,
}

/// Opens the store at `path` for the agent, falling back as the module says. Fails only if
/// the writer thread cannot be started.
pub fn open_for_agent(path: &Path, retention: (Duration, u32)) -> Result<AgentStore, StoreError> {
    let store = match open_file(path) {
        Ok(store) => store,
        Err(err) => return in_memory(path, &err, retention),
    };
    // Before the writer starts: its first prune keeps open incidents, and these are the
    // last run's. A failure is a disk that went bad since the check: they stay open in
    // the file until a start that can close them.
    match store.close_left_open() {
        Ok(0) => {}
        Ok(n) => log::info!("closed {n} incidents left open by the previous run"),
        Err(err) => log::warn!("{}", crate::error_chain(&err)),
    }
    // The writer's own connection, so that the API reads while it writes (WAL).
    match StoreWriter::spawn(path, retention) {
        Ok(writer) => Ok(AgentStore {
            store: Arc::new(store),
            writer,
            persistence: Persistence::File,
        }),
        Err(StoreError::Thread { source }) => Err(StoreError::Thread { source }),
        Err(err) => in_memory(path, &err, retention),
    }
}

/// The file's store, after moving a bad file aside if it is one.
fn open_file(path: &Path) -> Result<Store, StoreError> {
    let err = match Store::open(path).and_then(|store| store.check().map(|()| store)) {
        Ok(store) => return Ok(store),
        Err(err) => err,
    };
    if !is_bad_file(&err) {
        return Err(err);
    }
    let aside = move_aside(path).map_err(|source| StoreError::Create {
        path: path.to_path_buf(),
        source,
    })?;
    log::warn!(
        "{}: moved it to {} and started a fresh store",
        crate::error_chain(&err),
        aside.display()
    );
    Store::open(path)
}

fn in_memory(
    path: &Path,
    err: &StoreError,
    retention: (Duration, u32),
) -> Result<AgentStore, StoreError> {
    let reason = crate::error_chain(err);
    log::warn!(
        "{reason}: keeping incidents in memory only until the agent stops ({} left as it is)",
        path.display()
    );
    let store = Arc::new(Store::open_in_memory()?);
    let writer = StoreWriter::spawn_on(store.clone(), retention)?;
    Ok(AgentStore {
        store,
        writer,
        persistence: Persistence::Memory { reason },
    })
}

/// Whether the file itself is bad (not a database, or corrupt), as opposed to a disk the
/// agent cannot write or a schema it does not know: only a bad file is moved aside.
fn is_bad_file(err: &StoreError) -> bool {
    let sqlite_says_bad = |source: &rusqlite::Error| {
        matches!(
            source.sqlite_error_code(),
            Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
        )
    };
    match err {
        StoreError::Corrupt { .. } => true,
        StoreError::Open { source, .. } => sqlite_says_bad(source),
        StoreError::Schema { source, .. } => match source {
            // A negative version is no version of ours, older or newer.
            SchemaError::Invalid { .. } => true,
            SchemaError::TooNew { .. } => false,
            SchemaError::ReadVersion(source) | SchemaError::Migrate { source, .. } => {
                sqlite_says_bad(source)
            }
        },
        _ => false,
    }
}

/// Renames the file and its companions to `<name>.bad-<time>[-wal|-shm]`; returns the new
/// name of the file.
fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let mut aside = with_suffix(path, &format!(".bad-{stamp}"));
    // Two bad starts within a second must not overwrite the first one's evidence.
    let mut n = 1;
    while aside.exists() {
        aside = with_suffix(path, &format!(".bad-{stamp}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &aside)?;
    for suffix in COMPANION_SUFFIXES {
        match std::fs::rename(with_suffix(path, suffix), with_suffix(&aside, suffix)) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
    }
    Ok(aside)
}
