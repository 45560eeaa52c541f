//! The shards' executor must not go to sleep while tasks are ready to run. glommio 0.9.0 did
//! when a turn began already preempted (a latency-ring completion landed between its I/O poll
//! and its first task): it took "preempted before running anything" for "nothing to run" and
//! parked. HeliosProxy builds against a patched copy (engine/vendor/glommio/PATCHES.md).
//!
//! A 1 ns preemption timer makes every turn begin preempted. Unpatched, the executor parks with
//! the task below runnable and nothing left to wake it: this test then fails on its deadline.

use std::sync::mpsc;
use std::time::Duration;

use glommio::LocalExecutorBuilder;

#[test]
fn a_turn_that_begins_preempted_still_runs_the_ready_tasks() {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let ex = LocalExecutorBuilder::default()
            .io_memory(256 << 10)
            .preempt_timer(Duration::from_nanos(1))
            .make()
            .expect("an executor (io_uring and locked memory)");
        for _ in 0..1000 {
            ex.run(async {
                // A task that is runnable again and again: each yield hands the turn back.
                let t = glommio::spawn_local(async {
                    for _ in 0..3 {
                        glommio::yield_if_needed().await;
                    }
                });
                t.await;
            });
        }
        let _ = done.send(());
    });
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the executor stopped running tasks that were ready (parked with work)");
}
