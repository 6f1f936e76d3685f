//! A small pool of threads for blocking calls a loop must not make (OIDC code exchanges, DNS
//! lookups): jobs go in through a bounded queue, answers come back through a channel, and
//! `wake` runs after each answer so the loop reads it.

use std::io;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// Starts `threads` threads named `name-N` that run `work` on each job of a queue of
/// `capacity`, send its answer back and call `wake`. They end when the job sender is dropped
/// or the answer receiver is.
pub fn start<J, A>(
    threads: usize,
    name: &str,
    capacity: usize,
    work: impl Fn(J) -> A + Send + Sync + 'static,
    wake: impl Fn() + Send + Sync + 'static,
) -> io::Result<(SyncSender<J>, Receiver<A>)>
where
    J: Send + 'static,
    A: Send + 'static,
{
    let (jobs, queue) = mpsc::sync_channel::<J>(capacity);
    let (answer, answers) = mpsc::channel();
    let queue = Arc::new(Mutex::new(queue));
    let (work, wake) = (Arc::new(work), Arc::new(wake));
    for i in 0..threads {
        let (queue, answer, work, wake) =
            (queue.clone(), answer.clone(), work.clone(), wake.clone());
        std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || loop {
                let job = {
                    let q = queue.lock().unwrap_or_else(|e| e.into_inner());
                    match q.recv() {
                        Ok(j) => j,
                        Err(_) => return,
                    }
                };
                if answer.send(work(job)).is_err() {
                    return;
                }
                wake();
            })?;
    }
    Ok((jobs, answers))
}
