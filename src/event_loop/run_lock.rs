//! [`RunLock`]: what makes a `call_soon_threadsafe` handle thread-safe on Python 3.14+.
//!
//! 3.14's `events._ThreadSafeHandle` holds a `threading.RLock` around `_run()`,
//! `cancel()` and `cancelled()`: once the callback has started, another thread's
//! `cancel()` or `cancelled()` waits until it has finished, while the loop thread itself
//! (the callback cancelling its own handle) passes straight through. This is that lock,
//! natively: reentrant for its owner thread, and a thread that has to wait for it does so
//! with the GIL released, since the owner needs the GIL to finish the callback.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::{self, ThreadId};

use pyo3::prelude::*;

/// Who holds the lock, and how many times over.
#[derive(Default)]
struct Ownership {
    owner: Option<ThreadId>,
    depth: u32,
}

/// A reentrant lock whose waits release the GIL.
#[derive(Default)]
pub(crate) struct RunLock {
    ownership: Mutex<Ownership>,
    released: Condvar,
}

/// Holds a [`RunLock`] until dropped.
pub(crate) struct RunLockGuard<'a> {
    lock: &'a RunLock,
}

impl RunLock {
    fn ownership(&self) -> MutexGuard<'_, Ownership> {
        // Poisoning would need a panic inside these few lines; the state stays valid.
        self.ownership.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the lock for the current thread, waiting (without the GIL) while another
    /// thread holds it.
    pub(crate) fn acquire(&self, py: Python<'_>) -> RunLockGuard<'_> {
        let me = thread::current().id();
        if !Self::try_take(&mut self.ownership(), me) {
            py.detach(|| {
                let mut ownership = self.ownership();
                while !Self::try_take(&mut ownership, me) {
                    ownership = self
                        .released
                        .wait(ownership)
                        .unwrap_or_else(|e| e.into_inner());
                }
            });
        }
        RunLockGuard { lock: self }
    }

    fn try_take(ownership: &mut Ownership, me: ThreadId) -> bool {
        match ownership.owner {
            Some(owner) if owner != me => false,
            _ => {
                ownership.owner = Some(me);
                ownership.depth += 1;
                true
            }
        }
    }
}

impl Drop for RunLockGuard<'_> {
    fn drop(&mut self) {
        let mut ownership = self.lock.ownership();
        ownership.depth -= 1;
        if ownership.depth == 0 {
            ownership.owner = None;
            drop(ownership);
            self.lock.released.notify_all();
        }
    }
}
