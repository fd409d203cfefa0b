//! Lock access that survives poisoning. The proxy's shared state behind a
//! `Mutex` (matchmaker registries and caches, the RPC client's waiters) is
//! changed by single inserts, removes or assignments, so a thread that
//! panicked while holding a lock cannot have left it half-updated: others
//! keep using it instead of panicking in turn. A state that could be left
//! inconsistent must not use this.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking the value over from a panicked holder.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_still_yields_its_value() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let held = std::sync::Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _guard = held.lock();
            panic!("poison the lock");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
    }
}
