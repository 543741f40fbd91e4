//! The incident store: an embedded SQLite database, so that incidents outlive the agent (a
//! restart, an upgrade, a crash) and the CLI can show yesterday's.
//!
//! [`Store`] is the synchronous interface the API reads through (from blocking tasks);
//! [`StoreWriter`] is the correlation engine's: a thread of its own, so that a slow disk
//! never holds up event processing. Both may have the same file open: WAL mode lets
//! readers and the writer work at the same time.

mod fallback;
mod schema;
#[cfg(test)]
pub(crate) mod testing;
mod writer;

use std::{
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{params, Connection, OptionalExtension};

pub use fallback::{open_for_agent, AgentStore, Persistence};
pub use schema::SchemaError;
pub use writer::{follow, StoreWriter, StoreWriterHandle};

use crate::model::incident::{Incident, IncidentState};

/// Incidents [`Store::list`] returns when the filter does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// The most incidents one [`Store::list`] returns.
pub const MAX_LIMIT: usize = 1000;

/// The store and its `-wal` and `-shm` files hold command lines and unit names of the
/// host's processes: owner only. (SQLite gives the `-wal` and `-shm` files it creates the
/// database file's mode.)
pub const FILE_MODE: u32 = 0o600;

/// The suffixes of the files SQLite keeps next to a database in WAL mode.
const COMPANION_SUFFIXES: [&str; 2] = ["-wal", "-shm"];

/// How long a statement waits for another connection's write lock (the writer thread's
/// and the API's connections share the file).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the incident store {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("incident store {path} is corrupt: {report}")]
    Corrupt { path: PathBuf, report: String },
    #[error("cannot open the incident store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("incident store {path}")]
    Schema {
        path: PathBuf,
        #[source]
        source: SchemaError,
    },
    #[error("cannot {action}")]
    Query {
        action: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("incident id {id} is too large for the store")]
    IdOutOfRange { id: u64 },
    #[error("cannot encode incident {id}")]
    Encode {
        id: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("incident {id} in the store cannot be read")]
    Decode {
        id: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot start the store writer thread")]
    Thread {
        #[source]
        source: std::io::Error,
    },
}

/// Which incidents [`Store::list`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentFilter {
    /// Incidents active at or after this time: still open, or closed since.
    pub since: Option<SystemTime>,
    /// The upstream as incidents name it (`127.0.0.1:9000`, `unix:/run/x.sock`): an
    /// address matches it in every namespace (`127.0.0.1:9000 [netns 4026532398]` too),
    /// an address with its namespace only there. Not a pattern: `10.0.0.5` is no port's.
    pub upstream: Option<String>,
    /// The proxy's command name or systemd unit.
    pub proxy: Option<String>,
    /// At most this many, newest first; capped at [`MAX_LIMIT`].
    pub limit: usize,
}

impl Default for IncidentFilter {
    fn default() -> Self {
        Self {
            since: None,
            upstream: None,
            proxy: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// An open incident database. `Sync`: calls from several threads take turns.
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating it, and its directory, if needed) and migrates the database.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|source| StoreError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        create_private(&path)?;
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_error)?;
        Self::set_up(conn, path)
    }

    /// A store that lives in this process's memory only: what the agent runs on when the
    /// file cannot be used. Shared through one connection ([`StoreWriter::spawn_on`]).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Self::set_up(conn, path)
    }

    fn set_up(mut conn: Connection, path: PathBuf) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        // The first statement to read the file: a file that is not a database fails here.
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_error)?;
        // An in-memory database has no journal file to put in WAL mode.
        if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
            log::warn!(
                "incident store {}: journal mode is {mode}, not WAL: the API may wait for writes",
                path.display()
            );
        }
        // With WAL, NORMAL loses at most the last transactions on a power cut, never
        // consistency; FULL would fsync every incident update.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_error)?;
        schema::migrate(&mut conn).map_err(|source| StoreError::Schema {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads every page of the database (SQLite's `quick_check`): a file with a valid
    /// header and garbage pages opens and migrates, and fails only when a query reaches
    /// the garbage. Costs a read of the file, once at start-up.
    pub fn check(&self) -> Result<(), StoreError> {
        let corrupt = |report: String| StoreError::Corrupt {
            path: self.path.clone(),
            report,
        };
        let conn = self.lock();
        let report: Result<Vec<String>, rusqlite::Error> =
            conn.prepare("PRAGMA quick_check(5)").and_then(|mut stmt| {
                stmt.query_map([], |row| row.get(0))?
                    .collect::<Result<_, _>>()
            });
        match report {
            Ok(lines) if lines == ["ok"] => Ok(()),
            Ok(lines) => Err(corrupt(lines.join("; "))),
            Err(err) => Err(corrupt(err.to_string())),
        }
    }

    /// Inserts the incident, or replaces the one with its id.
    pub fn upsert(&self, incident: &Incident) -> Result<(), StoreError> {
        upsert(&self.lock(), incident)
    }

    /// [`Store::upsert`]s all of them in one transaction (one fsync instead of many).
    pub fn upsert_all(&self, incidents: &[Incident]) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let failed = |source| StoreError::Query {
            action: format!("save {} incidents", incidents.len()),
            source,
        };
        let tx = conn.transaction().map_err(failed)?;
        for incident in incidents {
            upsert(&tx, incident)?;
        }
        tx.commit().map_err(failed)
    }

    pub fn get(&self, id: u64) -> Result<Option<Incident>, StoreError> {
        let Ok(key) = i64::try_from(id) else {
            return Ok(None);
        };
        let body: Option<String> = self
            .lock()
            .prepare_cached("SELECT body FROM incidents WHERE id = ?1")
            .and_then(|mut stmt| stmt.query_row([key], |row| row.get(0)).optional())
            .map_err(|source| StoreError::Query {
                action: format!("read incident {id}"),
                source,
            })?;
        body.map(|body| decode(id, &body)).transpose()
    }

    /// The incidents the filter selects, newest (by start) first.
    /// Closes the incidents an agent that stopped left open, at their last failure (nobody
    /// watched after that); how many.
    pub fn close_left_open(&self) -> Result<usize, StoreError> {
        let stale: Vec<_> = self
            .list(&IncidentFilter {
                limit: MAX_LIMIT,
                ..Default::default()
            })?
            .into_iter()
            .filter(|i| i.state == IncidentState::Open)
            .map(|mut i| {
                i.state = IncidentState::Closed;
                i.closed_at = Some(i.last_failure_at);
                i
            })
            .collect();
        if !stale.is_empty() {
            self.upsert_all(&stale)?;
        }
        Ok(stale.len())
    }

    pub fn list(&self, filter: &IncidentFilter) -> Result<Vec<Incident>, StoreError> {
        let failed = |source| StoreError::Query {
            action: "list incidents".into(),
            source,
        };
        let limit = filter.limit.min(MAX_LIMIT) as i64;
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT id, body FROM incidents
                 WHERE (?1 IS NULL OR closed_at_ns IS NULL OR closed_at_ns >= ?1)
                   AND (?2 IS NULL OR upstream = ?2
                        OR substr(upstream, 1, length(?2) + 2) = ?2 || ' [')
                   AND (?3 IS NULL OR proxy_comm = ?3 OR proxy_unit = ?3)
                 ORDER BY started_at_ns DESC, id DESC
                 LIMIT ?4",
            )
            .map_err(failed)?;
        let rows = stmt
            .query_map(
                params![
                    filter.since.map(nanos),
                    filter.upstream,
                    filter.proxy,
                    limit
                ],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)),
            )
            .map_err(failed)?;
        let mut incidents = Vec::new();
        for row in rows {
            let (id, body) = row.map_err(failed)?;
            // One unreadable row (written by a newer version, say) must not hide the rest.
            match decode(id as u64, &body) {
                Ok(incident) => incidents.push(incident),
                Err(err) => log::warn!("{}", crate::error_chain(&err)),
            }
        }
        Ok(incidents)
    }

    /// The highest incident id stored, 0 when there is none: the engine numbers on from
    /// it after a restart.
    pub fn max_id(&self) -> Result<u64, StoreError> {
        let max: i64 = self
            .lock()
            .query_row("SELECT COALESCE(MAX(id), 0) FROM incidents", [], |row| {
                row.get(0)
            })
            .map_err(|source| StoreError::Query {
                action: "read the highest incident id".into(),
                source,
            })?;
        Ok(max.max(0) as u64)
    }

    /// Deletes closed incidents that closed more than `max_age` ago, then closed ones
    /// beyond `max_incidents`, kept in this order: incidents of known proxies first, then
    /// each proxy's newest before any proxy's older ones (a proxy is its name, unit and
    /// uid), then the newest. A flood of junk incidents (a user's own "proxy" failing to
    /// its own ports) so pushes out its own older incidents, not nginx's of last week.
    /// Open incidents are kept: the engine still updates them. Returns how many were
    /// deleted.
    pub fn prune(&self, max_age: Duration, max_incidents: u32) -> Result<usize, StoreError> {
        let failed = |source| StoreError::Query {
            action: "prune old incidents".into(),
            source,
        };
        let cutoff = SystemTime::now().checked_sub(max_age).map_or(0, nanos);
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(failed)?;
        let by_age = tx
            .execute(
                "DELETE FROM incidents WHERE closed_at_ns IS NOT NULL AND closed_at_ns < ?1",
                [cutoff],
            )
            .map_err(failed)?;
        // Ids increase with time (also across restarts) and, unlike timestamps, do not
        // move when the clock is set. The proxy's known family and uid are in the body
        // only (older rows have no uid: NULL, one key with the name and unit).
        let by_count = tx
            .execute(
                "DELETE FROM incidents WHERE closed_at_ns IS NOT NULL
                   AND id NOT IN (
                     SELECT id FROM (
                       SELECT id,
                         json_extract(body, '$.proxy.known_proxy') IS NOT NULL AS known,
                         ROW_NUMBER() OVER (
                           PARTITION BY proxy_comm, proxy_unit,
                                        json_extract(body, '$.proxy.uid')
                           ORDER BY id DESC) AS nth
                       FROM incidents)
                     ORDER BY known DESC, nth ASC, id DESC
                     LIMIT ?1)",
                [i64::from(max_incidents)],
            )
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
        Ok(by_age + by_count)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic elsewhere while holding the lock leaves the connection usable: SQLite
        // rolls back an unfinished transaction when it is dropped.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Creates the database file owner-only if it is missing, and takes world and group access
/// away from it and its companions if an older version (or an operator) left them open.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path);
    match created {
        Ok(_) => return Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(StoreError::Create {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let companions = COMPANION_SUFFIXES.map(|suffix| with_suffix(path, suffix));
    for file in std::iter::once(path).chain(companions.iter().map(PathBuf::as_path)) {
        let Ok(meta) = std::fs::metadata(file) else {
            continue;
        };
        if meta.permissions().mode() & 0o077 == 0 {
            continue;
        }
        if let Err(err) = std::fs::set_permissions(file, std::fs::Permissions::from_mode(FILE_MODE))
        {
            log::warn!(
                "incident store {}: cannot make it owner-only ({err}): other users may read it",
                file.display()
            );
        }
    }
    Ok(())
}

/// `path` with `suffix` appended to its file name (`why502.db` → `why502.db-wal`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn upsert(conn: &Connection, incident: &Incident) -> Result<(), StoreError> {
    let id = incident.id;
    let key = i64::try_from(id).map_err(|_| StoreError::IdOutOfRange { id })?;
    let body =
        serde_json::to_string(incident).map_err(|source| StoreError::Encode { id, source })?;
    let state = match incident.state {
        IncidentState::Open => "open",
        IncidentState::Closed => "closed",
    };
    conn.prepare_cached(
        "INSERT INTO incidents (id, started_at_ns, last_failure_at_ns, closed_at_ns, state,
             proxy_comm, proxy_unit, upstream, top_cause, failures, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (id) DO UPDATE SET
             started_at_ns = excluded.started_at_ns,
             last_failure_at_ns = excluded.last_failure_at_ns,
             closed_at_ns = excluded.closed_at_ns,
             state = excluded.state,
             proxy_comm = excluded.proxy_comm,
             proxy_unit = excluded.proxy_unit,
             upstream = excluded.upstream,
             top_cause = excluded.top_cause,
             failures = excluded.failures,
             body = excluded.body",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            key,
            nanos(incident.started_at),
            nanos(incident.last_failure_at),
            incident.closed_at.map(nanos),
            state,
            incident.proxy.comm,
            incident.proxy.unit,
            incident.upstream,
            incident.top_cause().map(|c| c.cause.name()),
            i64::try_from(incident.failures).unwrap_or(i64::MAX),
            body,
        ])
    })
    .map_err(|source| StoreError::Query {
        action: format!("save incident {id}"),
        source,
    })?;
    Ok(())
}

fn decode(id: u64, body: &str) -> Result<Incident, StoreError> {
    serde_json::from_str(body).map_err(|source| StoreError::Decode { id, source })
}

/// Nanoseconds since the epoch: fits an `i64` until 2262; times before 1970 become 0.
fn nanos(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;
