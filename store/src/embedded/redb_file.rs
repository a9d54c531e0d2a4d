//! The embedded store's file: the live keyspace, the current revision and the
//! leases, in one redb database. It holds no history: history lives in
//! memory only, and a reopened store starts compacted at its revision.
//!
//! ```text
//!   <dir>/meshplane-store.redb
//!     meta                  "format" -> 1, "revision" -> R, "next_lease" -> id
//!     keys                  key -> (create_revision, mod_revision, version, lease, value)
//!     leases                lease id -> TTL (secs, nanos)
//!     deleted_at_revision   key -> ()   keys deleted at revision R, so a watch
//!                                       from R still replays R after a reopen
//! ```
//!
//! Each [`Changes`] is one redb write transaction with redb's default
//! `Durability::Immediate`: when a write returns, the revision is on disk.
//! That costs one fsync per revision; callers that change many keys at once
//! should use `Store::batch`, which is one revision and one fsync.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, DatabaseError, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::keyspace::{Changes, Restored};
use crate::{Event, KeyValue, LeaseId, StoreError};

/// The database file's name inside the store directory.
pub(crate) const FILE_NAME: &str = "meshplane-store.redb";

/// The layout version written to `meta["format"]`; bump it on any change to the tables.
const FORMAT: i64 = 1;

/// (create_revision, mod_revision, version, lease, value)
type StoredKey = (i64, i64, i64, Option<i64>, &'static [u8]);

const META: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
const KEYS: TableDefinition<'_, &str, StoredKey> = TableDefinition::new("keys");
const LEASES: TableDefinition<'_, i64, (u64, u32)> = TableDefinition::new("leases");
const DELETED_AT_REVISION: TableDefinition<'_, &str, ()> = TableDefinition::new("deleted_at_revision");

/// redb's page cache; every read after open is served from memory anyway.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

pub(crate) struct RedbFile {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl RedbFile {
    /// Open (or create) the database in `dir` and read everything it holds.
    pub(crate) fn open(dir: &Path) -> Result<(RedbFile, Restored), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| corrupt(dir, format!("cannot create directory: {e}")))?;
        let path = dir.join(FILE_NAME);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            // A file damaged outside redb must be an error, not a panic.
            .set_check_integrity_on_open(true)
            .create(&path)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                    StoreError::Unavailable(format!(
                        "{} is already open in another store or process ({e}); stop it or point --data-dir elsewhere",
                        path.display()
                    ))
                }
                other => corrupt(&path, other),
            })?;
        let file = RedbFile { db, path };
        let restored = file.load().map_err(|detail| corrupt(&file.path, detail))?;
        Ok((file, restored))
    }

    /// Read the whole database, initialising an empty one.
    fn load(&self) -> Result<Restored, String> {
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        let restored = {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            let keys = txn.open_table(KEYS).map_err(|e| e.to_string())?;
            let leases = txn.open_table(LEASES).map_err(|e| e.to_string())?;
            let deleted = txn.open_table(DELETED_AT_REVISION).map_err(|e| e.to_string())?;
            match read_meta(&meta, "format")? {
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(format!("layout format {other} is not the format {FORMAT} this meshplane reads"));
                }
                None if keys.is_empty().map_err(|e| e.to_string())? => {
                    meta.insert("format", FORMAT).map_err(|e| e.to_string())?;
                    meta.insert("revision", 1).map_err(|e| e.to_string())?;
                    meta.insert("next_lease", 1).map_err(|e| e.to_string())?;
                }
                None => return Err("keys are stored but the layout format is missing".to_owned()),
            }
            let revision = read_meta(&meta, "revision")?.ok_or("the revision is missing")?;
            let next_lease = read_meta(&meta, "next_lease")?.ok_or("the next lease id is missing")?;
            let mut kvs = Vec::new();
            for entry in keys.iter().map_err(|e| e.to_string())? {
                let (key, value) = entry.map_err(|e| e.to_string())?;
                let (create_revision, mod_revision, version, lease, bytes) = value.value();
                kvs.push(KeyValue {
                    key: key.value().to_owned(),
                    value: Bytes::copy_from_slice(bytes),
                    create_revision,
                    mod_revision,
                    version,
                    lease: lease.map(LeaseId),
                });
            }
            let mut granted = Vec::new();
            for entry in leases.iter().map_err(|e| e.to_string())? {
                let (id, ttl) = entry.map_err(|e| e.to_string())?;
                let (secs, nanos) = ttl.value();
                granted.push((LeaseId(id.value()), Duration::new(secs, nanos)));
            }
            let mut deleted_at_revision = Vec::new();
            for entry in deleted.iter().map_err(|e| e.to_string())? {
                let (key, _) = entry.map_err(|e| e.to_string())?;
                deleted_at_revision.push(key.value().to_owned());
            }
            Restored { revision, kvs, deleted_at_revision, leases: granted, next_lease }
        };
        txn.commit().map_err(|e| e.to_string())?;
        Ok(restored)
    }

    /// Persist planned changes in one durable transaction.
    pub(crate) fn write(&self, changes: &Changes) -> Result<(), StoreError> {
        self.try_write(changes).map_err(|e| {
            StoreError::Unavailable(format!("writing {}: {e}; check free space and permissions", self.path.display()))
        })
    }

    fn try_write(&self, changes: &Changes) -> Result<(), redb::Error> {
        let txn = self.db.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            if changes.bumps_revision() {
                let mut keys = txn.open_table(KEYS)?;
                let mut deleted = txn.open_table(DELETED_AT_REVISION)?;
                deleted.retain(|_, ()| false)?;
                for event in &changes.events {
                    match event {
                        Event::Put(kv) => {
                            let stored = (
                                kv.create_revision,
                                kv.mod_revision,
                                kv.version,
                                kv.lease.map(|lease| lease.0),
                                kv.value.as_ref(),
                            );
                            keys.insert(kv.key.as_str(), stored)?;
                        }
                        Event::Delete { key, .. } => {
                            keys.remove(key.as_str())?;
                            deleted.insert(key.as_str(), ())?;
                        }
                    }
                }
                meta.insert("revision", changes.revision)?;
            }
            let mut leases = txn.open_table(LEASES)?;
            if let Some((id, ttl)) = changes.granted_lease {
                leases.insert(id.0, (ttl.as_secs(), ttl.subsec_nanos()))?;
                meta.insert("next_lease", id.0 + 1)?;
            }
            if let Some(id) = changes.removed_lease {
                leases.remove(id.0)?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

fn read_meta(meta: &impl ReadableTable<&'static str, i64>, name: &str) -> Result<Option<i64>, String> {
    Ok(meta.get(name).map_err(|e| e.to_string())?.map(|v| v.value()))
}

fn corrupt(path: &Path, detail: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { path: path.display().to_string(), detail: detail.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_layout_format_is_refused_with_the_file_path() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("format", FORMAT + 1).unwrap();
            txn.commit().unwrap();
        }
        let err = RedbFile::open(dir.path()).unwrap_err();
        let StoreError::Corrupt { path, detail } = &err else { panic!("expected Corrupt, got {err:?}") };
        assert!(path.ends_with(FILE_NAME), "{path}");
        assert!(detail.contains("format 2"), "{detail}");
    }

    #[test]
    fn an_empty_directory_opens_as_revision_one() {
        let dir = tempfile::tempdir().unwrap();
        let (_file, restored) = RedbFile::open(&dir.path().join("nested")).unwrap();
        assert_eq!((restored.revision, restored.next_lease), (1, 1));
        assert!(restored.kvs.is_empty() && restored.leases.is_empty());
    }
}
