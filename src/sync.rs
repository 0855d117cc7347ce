//! Locking helpers shared by the crate.

/// Locks `mutex`. A poisoned one (a task panicked while holding it) is used as it is, rather
/// than failing every later caller: one task's bug must not stop the proxy.
pub fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
