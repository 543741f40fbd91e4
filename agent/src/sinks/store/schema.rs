//! The database schema, versioned by `PRAGMA user_version`: version N is reached by applying
//! the first N migrations in order. A migration is never edited once released; a change is
//! a new entry at the end.

use rusqlite::{Connection, TransactionBehavior};

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // v1: one row per incident. The whole incident is `body` (JSON); the other columns are
    // copies of the fields that queries filter and sort on.
    "CREATE TABLE incidents (
        id INTEGER PRIMARY KEY,
        started_at_ns INTEGER NOT NULL,
        last_failure_at_ns INTEGER NOT NULL,
        closed_at_ns INTEGER NULL,
        state TEXT NOT NULL,
        proxy_comm TEXT NOT NULL,
        proxy_unit TEXT NULL,
        upstream TEXT NOT NULL,
        top_cause TEXT NULL,
        failures INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX incidents_started_at ON incidents (started_at_ns);
    CREATE INDEX incidents_upstream ON incidents (upstream);",
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot read the schema version")]
    ReadVersion(#[source] rusqlite::Error),
    #[error(
        "the database has schema version {found}, newer than this why502 knows ({VERSION}); \
         upgrade why502 or move the database away"
    )]
    TooNew { found: i64 },
    #[error("the database has an invalid schema version {found}")]
    Invalid { found: i64 },
    #[error("cannot migrate the schema to version {version}")]
    Migrate {
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
}

/// Brings the schema to [`VERSION`]. Each step runs in its own transaction, so a crash
/// leaves the database at a consistent version; an exclusive one, so two processes
/// opening the same file at once do not both apply it.
pub fn migrate(conn: &mut Connection) -> Result<(), SchemaError> {
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(SchemaError::ReadVersion)?;
        let found: i64 = tx
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(SchemaError::ReadVersion)?;
        if found > VERSION {
            return Err(SchemaError::TooNew { found });
        }
        if found < 0 {
            return Err(SchemaError::Invalid { found });
        }
        if found == VERSION {
            return Ok(());
        }
        let version = found + 1;
        let step = |source| SchemaError::Migrate { version, source };
        tx.execute_batch(MIGRATIONS[found as usize]).map_err(step)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(step)?;
        tx.commit().map_err(step)?;
    }
}
