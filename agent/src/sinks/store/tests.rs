use std::time::{Duration, SystemTime};

use super::{testing, IncidentFilter, Store, StoreWriter};
use crate::model::incident::{Cause, Incident, IncidentState};

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db/why502.db")).unwrap();
    (dir, store)
}

fn ids(store: &Store, filter: &IncidentFilter) -> Vec<u64> {
    store.list(filter).unwrap().iter().map(|i| i.id).collect()
}

#[test]
fn an_incident_round_trips_whole() {
    let (dir, store) = temp_store();
    let incident = testing::incident(17, testing::base_time());
    store.upsert(&incident).unwrap();
    assert_eq!(store.get(17).unwrap(), Some(incident.clone()));
    assert_eq!(store.get(18).unwrap(), None);
    assert_eq!(store.get(u64::MAX).unwrap(), None);
    assert_eq!(
        store.list(&IncidentFilter::default()).unwrap(),
        vec![incident]
    );

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o027, 0, "directory mode {mode:o}");
}

#[test]
fn upsert_replaces_by_id() {
    let (_dir, store) = temp_store();
    let mut incident = testing::incident(3, testing::base_time());
    incident.state = IncidentState::Open;
    incident.closed_at = None;
    store.upsert(&incident).unwrap();
    incident.state = IncidentState::Closed;
    incident.closed_at = Some(testing::base_time() + Duration::from_secs(7));
    incident.failures = 400;
    incident.causes.swap(0, 1);
    store.upsert(&incident).unwrap();
    let stored = store.list(&IncidentFilter::default()).unwrap();
    assert_eq!(stored, vec![incident]);
    assert_eq!(stored[0].top_cause().unwrap().cause, Cause::Restart);
}

#[test]
fn filters_select_and_limit() {
    let (_dir, store) = temp_store();
    // 1: closed two days ago; 2: closed 30 min ago; 3: open, started 3 h ago; 4 and 5: recent.
    let mut old = testing::recent_incident(1, 48 * 60);
    old.upstream = "unix:/run/php/php-fpm.sock".into();
    let closed_recently = testing::recent_incident(2, 31);
    let mut open = testing::recent_incident(3, 180);
    open.state = IncidentState::Open;
    open.closed_at = None;
    let mut haproxy = testing::recent_incident(4, 5);
    haproxy.proxy.comm = "haproxy".into();
    haproxy.proxy.unit = Some("haproxy.service".into());
    haproxy.upstream = "10.0.0.5:8080".into();
    let latest = testing::recent_incident(5, 1);
    // In a pod's network namespace: the same address, another upstream.
    let mut pod = testing::recent_incident(6, 2);
    pod.upstream = "10.0.0.5:8080 [netns 4026532398]".into();
    pod.closed_at = Some(SystemTime::now() - Duration::from_secs(3 * 86_400));
    pod.started_at = pod.closed_at.unwrap();
    for incident in [&old, &closed_recently, &open, &haproxy, &latest, &pod] {
        store.upsert(incident).unwrap();
    }

    let all = IncidentFilter::default();
    assert_eq!(ids(&store, &all), [5, 4, 2, 3, 1, 6], "newest first");

    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let since = IncidentFilter {
        since: Some(hour_ago),
        ..all.clone()
    };
    assert_eq!(ids(&store, &since), [5, 4, 2, 3], "the open one is active");

    let upstream = |u: &str| IncidentFilter {
        upstream: Some(u.into()),
        ..all.clone()
    };
    assert_eq!(ids(&store, &upstream("unix:/run/php/php-fpm.sock")), [1]);
    assert_eq!(
        ids(&store, &upstream("10.0.0.5:8080")),
        [4, 6],
        "an address in every namespace"
    );
    assert_eq!(
        ids(&store, &upstream("10.0.0.5:8080 [netns 4026532398]")),
        [6],
        "an address with its namespace only there"
    );
    assert_eq!(
        ids(&store, &upstream("10.0.0.5")),
        [0u64; 0],
        "an address, not a prefix"
    );
    assert_eq!(ids(&store, &upstream("10.0.0.5:80")), [0u64; 0]);

    let proxy = |p: &str| IncidentFilter {
        proxy: Some(p.into()),
        ..all.clone()
    };
    assert_eq!(ids(&store, &proxy("haproxy")), [4], "by comm");
    assert_eq!(ids(&store, &proxy("haproxy.service")), [4], "by unit");
    assert_eq!(ids(&store, &proxy("nginx.service")), [5, 2, 3, 1, 6]);

    let combined = IncidentFilter {
        since: Some(hour_ago),
        proxy: Some("nginx".into()),
        limit: 2,
        ..all.clone()
    };
    assert_eq!(ids(&store, &combined), [5, 2]);

    let huge = IncidentFilter {
        limit: usize::MAX,
        ..all
    };
    assert_eq!(
        ids(&store, &huge).len(),
        6,
        "the limit is capped, not overflowed"
    );
}

#[test]
fn max_id_is_zero_when_empty() {
    let (_dir, store) = temp_store();
    assert_eq!(store.max_id().unwrap(), 0);
    store.upsert(&testing::recent_incident(41, 5)).unwrap();
    store.upsert(&testing::recent_incident(7, 1)).unwrap();
    assert_eq!(store.max_id().unwrap(), 41);
}

#[test]
fn prune_deletes_old_then_excess_closed_incidents() {
    let (_dir, store) = temp_store();
    let day = 24 * 60;
    for (id, minutes_ago) in [
        (1, 40 * day),
        (2, 31 * day),
        (3, 10 * day),
        (4, 2 * day),
        (5, 60),
    ] {
        store
            .upsert(&testing::recent_incident(id, minutes_ago))
            .unwrap();
    }
    let mut open_and_old = testing::recent_incident(6, 50 * day);
    open_and_old.state = IncidentState::Open;
    open_and_old.closed_at = None;
    store.upsert(&open_and_old).unwrap();
    let all = IncidentFilter::default();

    let month = Duration::from_secs(30 * 86_400);
    assert_eq!(store.prune(month, 100).unwrap(), 2);
    assert_eq!(ids(&store, &all), [5, 4, 3, 6]);

    // Keeps the newest two by id (5 and 6); the open one survives anyway.
    assert_eq!(store.prune(month, 2).unwrap(), 2);
    assert_eq!(ids(&store, &all), [5, 6]);
    assert_eq!(store.prune(month, 2).unwrap(), 0);
}

#[test]
fn reopening_keeps_the_incidents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("why502.db");
    let incident = testing::incident(9, testing::base_time());
    {
        let store = Store::open(&path).unwrap();
        store.upsert(&incident).unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(store.get(9).unwrap(), Some(incident));
    assert_eq!(store.max_id().unwrap(), 9);
    drop(store);
    // A third open (migrations already applied) is as good.
    assert_eq!(Store::open(&path).unwrap().max_id().unwrap(), 9);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("why502.db");
    drop(Store::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", 99).unwrap();
    drop(conn);
    let err = Store::open(&path).err().expect("a newer schema must fail");
    let text = crate::error_chain(&err);
    assert!(text.contains("schema version 99"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
}

#[test]
fn a_file_that_is_not_a_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("why502.db");
    std::fs::write(&path, vec![b'x'; 4096]).unwrap();
    let err = Store::open(&path)
        .err()
        .expect("garbage must fail")
        .to_string();
    assert!(err.contains("cannot open the incident store"), "{err}");
}

#[test]
fn the_writer_thread_saves_and_drops_nothing_normally() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("why502.db");
    let retention = (Duration::from_secs(30 * 86_400), 1000);
    let writer = StoreWriter::spawn(&path, retention).unwrap();
    let mut incident = testing::recent_incident(1, 2);
    for failures in 1..=50 {
        incident.failures = failures;
        writer.save(incident.clone());
    }
    writer.save(testing::recent_incident(2, 1));
    assert_eq!(writer.dropped_writes(), 0);
    writer.close();

    let store = Store::open(&path).unwrap();
    assert_eq!(
        store.get(1).unwrap().unwrap().failures,
        50,
        "the last save wins"
    );
    assert_eq!(ids(&store, &IncidentFilter::default()), [2, 1]);
}

#[test]
fn the_writer_prunes_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("why502.db");
    let store = Store::open(&path).unwrap();
    store
        .upsert(&testing::recent_incident(1, 90 * 24 * 60))
        .unwrap();
    store.upsert(&testing::recent_incident(2, 10)).unwrap();
    let writer = StoreWriter::spawn(&path, (Duration::from_secs(86_400), 1000)).unwrap();
    drop(writer);
    assert_eq!(ids(&store, &IncidentFilter::default()), [2]);
}

#[test]
fn an_open_store_is_shareable_across_threads() {
    fn sync<T: Send + Sync>() {}
    sync::<Store>();
}

mod agent_fallback {
    //! [`open_for_agent`]: every bad state of the file still gives the agent a store.

    use std::{
        os::unix::fs::PermissionsExt,
        path::{Path, PathBuf},
        time::Duration,
    };

    use super::super::{open_for_agent, AgentStore, Persistence, Store, FILE_MODE};
    use super::testing;

    const RETENTION: (Duration, u32) = (Duration::from_secs(86_400), 1000);

    /// The `<name>.bad-*` files next to `path`, sorted.
    fn moved_aside(path: &Path) -> Vec<PathBuf> {
        let prefix = format!("{}.bad-", path.file_name().unwrap().to_str().unwrap());
        let mut found: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .starts_with(&prefix)
            })
            .collect();
        found.sort();
        found
    }

    /// Saves an incident through the writer, stops it, and reads it back from `store`.
    fn writes_and_reads(opened: AgentStore, id: u64) -> Store {
        opened.writer.save(testing::recent_incident(id, 1));
        opened.writer.close();
        let store = std::sync::Arc::try_unwrap(opened.store)
            .unwrap_or_else(|_| panic!("the store is still shared"));
        assert_eq!(store.get(id).unwrap().map(|i| i.id), Some(id));
        store
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_moved_aside_for_a_fresh_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("why502.db");
        std::fs::write(&path, vec![b'x'; 8192]).unwrap();
        std::fs::write(dir.path().join("why502.db-wal"), b"old wal").unwrap();

        let opened = open_for_agent(&path, RETENTION).unwrap();
        assert_eq!(opened.persistence, Persistence::File);
        assert_eq!(opened.store.max_id().unwrap(), 0, "a fresh store");
        let aside = moved_aside(&path);
        assert_eq!(
            std::fs::read(&aside[0]).unwrap(),
            vec![b'x'; 8192],
            "{aside:?}"
        );
        // The old -wal (SQLite may have deleted it, not being a WAL) is not the fresh
        // store's.
        let wal = std::fs::read(dir.path().join("why502.db-wal")).unwrap_or_default();
        assert!(!wal.starts_with(b"old wal"), "{aside:?}");
        drop(writes_and_reads(opened, 7));
        // The fresh store is the file: it survives.
        assert_eq!(Store::open(&path).unwrap().max_id().unwrap(), 7);
    }

    #[test]
    fn a_corrupt_file_is_found_at_start_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("why502.db");
        let store = Store::open(&path).unwrap();
        let incidents: Vec<_> = (1..=200)
            .map(|id| testing::recent_incident(id, 5))
            .collect();
        store.upsert_all(&incidents).unwrap();
        drop(store);
        // Page 1 (the header and the schema) intact, every other page garbage.
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 16 * 4096, "{} bytes", bytes.len());
        for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
            *b = (i * 131 % 251) as u8;
        }
        std::fs::write(&path, &bytes).unwrap();
        // Opening and migrating read only page 1: only the check sees the damage.
        let unchecked = Store::open(&path).unwrap();
        let err = unchecked
            .check()
            .expect_err("the check must see garbage pages");
        assert!(err.to_string().contains("is corrupt"), "{err}");
        drop(unchecked);

        let opened = open_for_agent(&path, RETENTION).unwrap();
        assert_eq!(opened.persistence, Persistence::File);
        assert_eq!(opened.store.max_id().unwrap(), 0, "a fresh store");
        let aside = moved_aside(&path);
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes);
        drop(writes_and_reads(opened, 3));
    }

    #[test]
    fn a_newer_schema_is_kept_untouched_and_the_run_is_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("why502.db");
        let store = Store::open(&path).unwrap();
        store.upsert(&testing::recent_incident(41, 5)).unwrap();
        drop(store);
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let before = std::fs::read(&path).unwrap();

        let opened = open_for_agent(&path, RETENTION).unwrap();
        let Persistence::Memory { reason } = &opened.persistence else {
            panic!("{:?}", opened.persistence);
        };
        assert!(reason.contains("schema version 99"), "{reason}");
        assert_eq!(
            opened.store.max_id().unwrap(),
            0,
            "not the file's incidents"
        );
        assert_eq!(opened.store.path(), Path::new(":memory:"));
        // The in-memory store is shared by the writer and the readers.
        let store = writes_and_reads(opened, 1);
        drop(store);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the newer data is kept"
        );
        assert_eq!(moved_aside(&path), Vec::<PathBuf>::new());
    }

    #[test]
    fn a_path_that_cannot_be_created_runs_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file where the directory should be: even root cannot create in it
        // (a read-only directory is the e2e test's, in a mount namespace of its own).
        std::fs::write(dir.path().join("not-a-dir"), b"").unwrap();
        let path = dir.path().join("not-a-dir/why502.db");

        let opened = open_for_agent(&path, RETENTION).unwrap();
        let Persistence::Memory { reason } = &opened.persistence else {
            panic!("{:?}", opened.persistence);
        };
        assert!(reason.contains("cannot create the directory"), "{reason}");
        drop(writes_and_reads(opened, 2));
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_store_and_its_wal_and_shm_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("why502.db");
        let store = Store::open(&path).unwrap();
        store.upsert(&testing::recent_incident(1, 5)).unwrap();
        // Written while open: the -wal and -shm exist now.
        for file in ["why502.db", "why502.db-wal", "why502.db-shm"] {
            assert_eq!(mode(&dir.path().join(file)), FILE_MODE, "{file}");
        }
        drop(store);

        // Files an older version left world-readable are closed at the next open.
        let loose = dir.path().join("loose.db");
        drop(Store::open(&loose).unwrap());
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
        let wal = dir.path().join("loose.db-wal");
        std::fs::write(&wal, b"").unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Store::open(&loose).unwrap());
        assert_eq!(mode(&loose), FILE_MODE);
        if wal.exists() {
            assert_eq!(mode(&wal), FILE_MODE);
        }
    }

    #[test]
    fn saves_the_store_refuses_are_counted_and_the_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("why502.db");
        let opened = open_for_agent(&path, RETENTION).unwrap();
        // An id SQLite cannot hold fails the whole batch, then itself alone.
        opened.writer.save(testing::recent_incident(u64::MAX, 2));
        opened.writer.save(testing::recent_incident(5, 1));
        let writer = opened.writer;
        let errors = writer.write_errors_counter();
        writer.close();
        assert_eq!(errors.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(opened.store.max_id().unwrap(), 5);
    }
}

/// A closed incident of the proxy `comm` (a known proxy when `known`) started
/// `minutes_ago`.
fn closed_incident(id: u64, minutes_ago: u64, comm: &str, known: bool) -> Incident {
    let mut incident = testing::recent_incident(id, minutes_ago);
    incident.proxy.comm = comm.into();
    incident.proxy.unit = None;
    incident.proxy.known_proxy = known.then(|| comm.to_string());
    incident
}

/// A user's own "proxy" opening 2,000 incidents in the last hour (well above the count
/// kept) does not push out nginx's of three days ago, nor another proxy's two: its own
/// oldest go.
#[test]
fn a_flood_of_junk_incidents_keeps_known_proxies_and_other_proxies_incidents() {
    let (_dir, store) = temp_store();
    let day = 24 * 60;
    let mut batch = Vec::new();
    for id in 1..=5 {
        batch.push(closed_incident(id, 3 * day, "nginx", true));
    }
    for id in 6..=7 {
        batch.push(closed_incident(id, 2 * day, "gateway", false));
    }
    const JUNK: u64 = 2_000;
    for id in 8..8 + JUNK {
        batch.push(closed_incident(id, 60, "junk", false));
    }
    store.upsert_all(&batch).unwrap();

    let month = Duration::from_secs(30 * 86_400);
    let kept = 100;
    assert_eq!(store.prune(month, kept).unwrap() as u64, 7 + JUNK - 100);
    let all = IncidentFilter {
        limit: super::MAX_LIMIT,
        ..Default::default()
    };
    let left = ids(&store, &all);
    assert_eq!(left.len(), kept as usize);
    for id in 1..=7 {
        assert!(left.contains(&id), "incident {id} kept: {left:?}");
    }
    // The junk kept its newest.
    let junk_kept: Vec<u64> = left.iter().copied().filter(|id| *id >= 8).collect();
    let newest_junk: Vec<u64> = (8 + JUNK - 93..8 + JUNK).rev().collect();
    assert_eq!(junk_kept, newest_junk);
}

/// Age goes first: a known proxy's incident older than the maximum age is deleted
/// whatever the count.
#[test]
fn known_proxies_incidents_still_age_out() {
    let (_dir, store) = temp_store();
    store
        .upsert(&closed_incident(1, 40 * 24 * 60, "nginx", true))
        .unwrap();
    store
        .upsert(&closed_incident(2, 60, "junk", false))
        .unwrap();
    assert_eq!(
        store.prune(Duration::from_secs(30 * 86_400), 100).unwrap(),
        1
    );
    assert_eq!(ids(&store, &IncidentFilter::default()), [2]);
}

/// A burst of new incidents is pruned as it comes, not at the next hourly round: the
/// file holds the bound and at most a tenth of it more.
#[test]
fn the_writer_prunes_after_a_burst_of_new_incidents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("why502.db");
    let max_incidents = 20;
    let writer =
        StoreWriter::spawn(&path, (Duration::from_secs(30 * 86_400), max_incidents)).unwrap();
    for id in 1..=500 {
        writer.save(closed_incident(id, 5, "junk", false));
    }
    writer.save(closed_incident(501, 5, "nginx", true));
    assert_eq!(writer.dropped_writes(), 0);
    // Closing joins the thread: every save and the prune after it are done.
    writer.close();
    let store = Store::open(&path).unwrap();
    let left = ids(
        &store,
        &IncidentFilter {
            limit: super::MAX_LIMIT,
            ..Default::default()
        },
    );
    let slack = (max_incidents / 10) as usize;
    assert!(
        left.len() <= max_incidents as usize + slack,
        "{} incidents left",
        left.len()
    );
    assert!(left.contains(&501) && left.contains(&500), "{left:?}");
}

/// Junk under a new name for each incident (each name's newest is its only one) still
/// does not push out a known proxy's incidents: those are kept first.
#[test]
fn junk_under_many_names_does_not_push_out_known_proxies_incidents() {
    let (_dir, store) = temp_store();
    let mut batch: Vec<Incident> = (1..=5)
        .map(|id| closed_incident(id, 3 * 24 * 60, "nginx", true))
        .collect();
    for id in 6..1006 {
        batch.push(closed_incident(id, 60, &format!("junk{id}"), false));
    }
    store.upsert_all(&batch).unwrap();
    store.prune(Duration::from_secs(30 * 86_400), 50).unwrap();
    let left = ids(
        &store,
        &IncidentFilter {
            limit: super::MAX_LIMIT,
            ..Default::default()
        },
    );
    assert_eq!(left.len(), 50);
    assert!((1..=5).all(|id| left.contains(&id)), "{left:?}");
    assert!(left.contains(&1005));
}
