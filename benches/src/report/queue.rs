//! The queue and pool tables: percpu-queue's freelist, buffer and pool against crossbeam,
//! a mutex and the pool crates.

use super::measure::{Contender, Run, Settings, TableSpec};
use crate::queues::{pooled_object, push_then_pop, OpoolAllocator, PushPop, POOL_SIZE};
use crate::run_threads;
use crossbeam_queue::{ArrayQueue, SegQueue};
use percpu_queue::{FreeList, PerCpuBuffer, Pool};
use std::hint::black_box;
use std::sync::Mutex;

const QUEUE_BASELINE: &str = "crossbeam ArrayQueue";
const POOL_BASELINE: &str = "object-pool";

/// Each thread starts with one item and pushes and pops `ops` times. The structure is
/// emptied (untimed) before each run, so every run starts alike and items that a missed pop
/// left behind never pile up.
fn push_pops<Q: PushPop + 'static>(name: &str, queue: Q) -> Contender<'static> {
    Contender::new(name, move |threads, ops| {
        while queue.pop().is_some() {}
        let wall = run_threads(
            threads,
            ops,
            |t| Some(Q::new_item(t as u64)),
            |held| push_then_pop(&queue, held),
        );
        Run {
            wall,
            ops: threads as u64 * ops,
        }
    })
}

/// Each thread gets an object from the pool and drops it back, `ops` times.
fn get_drops<P: Sync + 'static>(
    name: &str,
    pool: P,
    get_and_drop: impl Fn(&P) + Sync + 'static,
) -> Contender<'static> {
    Contender::new(name, move |threads, ops| {
        let wall = run_threads(threads, ops, |_| (), |_| get_and_drop(&pool));
        Run {
            wall,
            ops: threads as u64 * ops,
        }
    })
}

/// The push+pop table and the pool table.
pub fn tables(settings: &Settings) -> Vec<TableSpec<'static>> {
    let most_threads = settings.threads.iter().copied().max().unwrap_or(1);
    vec![
        TableSpec {
            id: "queue-push-pop",
            title: "queue: push one boxed item and pop one back".into(),
            note: "op = one push + one pop of a Box (each thread holds one item between \
                   ops); percpu FreeList and PerCpuBuffer against crossbeam, a Mutex<Vec>"
                .into(),
            baseline: QUEUE_BASELINE.into(),
            threads: settings.threads.clone(),
            isolated: false,
            focus: None,
            contenders: vec![
                push_pops("percpu FreeList", FreeList::<u64>::new()),
                push_pops(
                    "percpu PerCpuBuffer",
                    PerCpuBuffer::<u64>::with_capacity(64),
                ),
                push_pops(
                    QUEUE_BASELINE,
                    ArrayQueue::<Box<u64>>::new(2 * most_threads),
                ),
                push_pops("crossbeam SegQueue", SegQueue::<Box<u64>>::new()),
                push_pops(
                    "Mutex<Vec>",
                    Mutex::new(Vec::<Box<u64>>::with_capacity(2 * most_threads)),
                ),
            ],
        },
        TableSpec {
            id: "pool-get-drop",
            title: "pool: get a pooled Vec<u8> and drop it back".into(),
            note: format!(
                "op = one get + one drop of a 256-byte-capacity Vec<u8>; every pool keeps \
                 up to {POOL_SIZE} idle objects"
            ),
            baseline: POOL_BASELINE.into(),
            threads: settings.threads.clone(),
            isolated: false,
            focus: None,
            contenders: vec![
                get_drops("percpu Pool", Pool::new(POOL_SIZE, pooled_object), |pool| {
                    black_box(&*pool.get());
                }),
                get_drops(
                    POOL_BASELINE,
                    object_pool::Pool::new(POOL_SIZE, pooled_object),
                    |pool| {
                        black_box(&*pool.pull(pooled_object));
                    },
                ),
                get_drops(
                    "opool",
                    opool::Pool::new_prefilled(POOL_SIZE, OpoolAllocator),
                    |pool| {
                        black_box(&*pool.get());
                    },
                ),
            ],
        },
    ]
}
