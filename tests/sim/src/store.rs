//! The scheduler's store as a process sees it: the real [`RedbStore`] in the seed's directory,
//! and a crash that takes it away at once, as `kill -9` does.
//!
//! A crash drops the open database (so a restarted scheduler can open the same directory);
//! every later call of the dead incarnation fails, so nothing it does after the crash is
//! committed. What was committed before survives.

use std::{
    path::Path,
    sync::{Arc, Mutex, PoisonError},
};

use snapgate_scheduler::store::{Batch, Loaded, RedbStore, Store, StoreError};

/// One incarnation's store. Clones share it.
#[derive(Clone)]
pub struct CrashableStore {
    inner: Arc<Mutex<Option<RedbStore>>>,
}

impl CrashableStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            inner: Arc::new(Mutex::new(Some(RedbStore::open(dir)?))),
        })
    }

    /// The process is killed: the database is closed, nothing more is committed.
    pub fn kill(&self) {
        drop(
            self.inner
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

impl Store for CrashableStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        match &*self.inner.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(store) => store.load(),
            None => Err(StoreError::Injected),
        }
    }

    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        match &mut *self.inner.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(store) => store.commit(batch),
            None => Err(StoreError::Injected),
        }
    }
}
