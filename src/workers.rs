//! The threads client connections run on: one single-threaded tokio runtime per thread,
//! each connection pinned to one of them (round robin at accept).
//!
//! Why: a request passes through four tasks (client reader, backend writer, backend reader,
//! client writer). On a work-stealing runtime each hand-over may wake another worker thread
//! (a futex wake and a context switch); profiles of the 1-in-flight produce path showed a
//! third of kshift's time in task switching. With every task of a connection — and its
//! sockets, registered with that thread's reactor — on one thread, hand-overs are local
//! queue pushes. Connections still spread over all cores. The accept loop, admin API and
//! mirror writers stay on the main runtime.
//!
//! Invariants: a worker runs until [`Workers::stop`] (or drop); stopping drops the tasks
//! still on it. A socket moved to a worker is deregistered from the accepting runtime's
//! reactor first ([`tokio::net::TcpStream::into_std`]) and registered with the worker's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::runtime::Handle;
use tokio::sync::oneshot;

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    /// Dropping a sender ends its worker's thread.
    stops: Mutex<Vec<oneshot::Sender<()>>>,
}

impl Workers {
    /// Starts `count` worker threads (0: one per available core).
    pub fn start(count: usize) -> std::io::Result<Workers> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("kshift-worker-{index}"))
                .spawn(move || {
                    // Returns on `stop` or when the sender is dropped.
                    let _ = runtime.block_on(stopped);
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            stops: Mutex::new(stops),
        })
    }

    /// The worker the next connection goes to.
    pub fn next(&self) -> &Handle {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[index]
    }

    /// Ends every worker thread; tasks still on them are dropped.
    pub fn stop(&self) {
        self.stops
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_of_one_worker_run_on_one_thread_and_stop_ends_it() {
        let workers = Workers::start(2).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        for _ in 0..2 {
            let sender = sender.clone();
            workers.next().spawn(async move {
                let before = std::thread::current().id();
                tokio::task::yield_now().await;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                sender.send(before == std::thread::current().id()).unwrap();
            });
        }
        assert!(receiver.recv().unwrap() && receiver.recv().unwrap());
        // After stop, a spawned task never runs.
        workers.stop();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (sender, receiver) = std::sync::mpsc::channel::<()>();
        workers.next().spawn(async move {
            let _ = sender.send(());
        });
        assert!(receiver
            .recv_timeout(std::time::Duration::from_millis(200))
            .is_err());
    }
}
