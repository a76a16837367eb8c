//! The bounded pool of worker threads every job's tasks run on, so that however many jobs
//! and partitions there are, processing never takes more than `processing.worker.threads`
//! cores from the broker's network tasks.
//!
//! A task is a closure that owns what it works on and hands it back when done; a job's
//! driver submits one round of tasks and waits for all of them.

use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::Mutex;

type Task = Box<dyn FnOnce() + Send + 'static>;

pub struct WorkerPool {
    sender: Mutex<Option<mpsc::Sender<Task>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl WorkerPool {
    pub fn new(size: usize) -> Arc<WorkerPool> {
        let size = size.max(1);
        let (sender, receiver) = mpsc::channel::<Task>();
        let receiver = Arc::new(Mutex::new(receiver));
        let threads = (0..size)
            .map(|i| {
                let receiver = receiver.clone();
                std::thread::Builder::new()
                    .name(format!("sluice-job-worker-{i}"))
                    .spawn(move || loop {
                        // The lock is held only while waiting for the next task, never while
                        // one runs.
                        let task = receiver.lock().recv();
                        match task {
                            Ok(task) => task(),
                            Err(_) => return,
                        }
                    })
                    .expect("spawn a job worker thread")
            })
            .collect();
        Arc::new(WorkerPool { sender: Mutex::new(Some(sender)), threads: Mutex::new(threads) })
    }

    /// Runs `work` on every item on the pool and returns the results in the items' order.
    /// A panicking task is reported as `None` in its place (the job then restarts from its
    /// last checkpoint) rather than taking the worker thread down.
    pub fn run_all<T, R, F>(&self, items: Vec<T>, work: F) -> Vec<Option<R>>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: Fn(T) -> R + Send + Sync + 'static,
    {
        let count = items.len();
        let work = Arc::new(work);
        let (done_tx, done_rx) = mpsc::channel();
        {
            let sender = self.sender.lock();
            let Some(sender) = sender.as_ref() else { return (0..count).map(|_| None).collect() };
            for (index, item) in items.into_iter().enumerate() {
                let work = work.clone();
                let done_tx = done_tx.clone();
                let task: Task = Box::new(move || {
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(item))).ok();
                    done_tx.send((index, result)).ok();
                });
                if sender.send(task).is_err() {
                    break;
                }
            }
        }
        drop(done_tx);
        let mut results: Vec<Option<R>> = (0..count).map(|_| None).collect();
        // Ends when every task has reported (each holds a sender until it finishes).
        for (index, result) in done_rx {
            results[index] = result;
        }
        results
    }

    /// Stops the threads once the queued tasks are done.
    pub fn shutdown(&self) {
        self.sender.lock().take();
        for thread in self.threads.lock().drain(..) {
            thread.join().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_and_a_panic_is_contained() {
        let pool = WorkerPool::new(2);
        let results = pool.run_all((0..100u64).collect(), |i| {
            if i == 13 {
                panic!("task 13 fails");
            }
            i * 2
        });
        assert_eq!(results[12], Some(24));
        assert_eq!(results[13], None);
        assert_eq!(results[99], Some(198));
        assert_eq!(pool.run_all(vec![1], |i| i + 1), vec![Some(2)], "the pool still works");
        pool.shutdown();
    }
}
