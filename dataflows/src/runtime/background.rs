//! Threads that work beside the timely workers: they run at a lower priority, so they take
//! mostly CPU the workers leave idle rather than one of the workers' cores (the workers wait
//! for each other every round, so one slowed worker slows them all).

use std::io;
use std::thread::JoinHandle;

/// How far below the workers a background thread runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// Nice 19 under `SCHED_BATCH`: it gets a small share of a busy core, so it always
    /// finishes (the catalog's folds, which rounds are waiting to use, and the freeing of the
    /// old bases they replace).
    Low,
    /// `SCHED_IDLE`: only CPU nothing else wants (the lake's encoders, whose bounded queues
    /// hold the workers back if they fall behind).
    Idle,
}

/// Puts the calling thread at `priority` (Linux). Elsewhere, or if the system refuses, the
/// thread keeps its normal priority (logged at debug, with the thread's name).
fn lower_priority(priority: Priority) {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadPriority,
            ThreadSchedulePolicy,
        };
        let policy = match priority {
            Priority::Low => NormalThreadSchedulePolicy::Batch,
            Priority::Idle => NormalThreadSchedulePolicy::Idle,
        };
        let policy = ThreadSchedulePolicy::Normal(policy);
        if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, policy) {
            let thread = std::thread::current();
            tracing::debug!("{} keeps its normal priority: {e:?}", thread.name().unwrap_or("a background thread"));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
}

/// Runs `f` on a new thread named `name`, at `priority`.
pub fn spawn<T, F>(name: &str, priority: Priority, f: F) -> io::Result<JoinHandle<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    std::thread::Builder::new().name(name.into()).spawn(move || {
        lower_priority(priority);
        f()
    })
}
