//! cache-scratch (from Hoard's suite): passive false sharing. The main thread allocates one
//! small object per thread, back to back; each thread frees the one it is given, then many
//! times allocates a small object, writes it over and over, and frees it. An allocator that
//! gives the freed object (or its cache-line neighbours) back to the thread that freed it
//! makes threads on different CPUs write to one cache line, and the time shows it.

use super::{cpus, scaled};
use std::hint::black_box;
use std::sync::atomic::{AtomicU8, Ordering};

/// Bytes per object: one word, so eight neighbours share a cache line.
const OBJECT_SIZE: usize = 8;

/// The object: written with relaxed atomic stores, which the compiler keeps one by one
/// (plain stores to memory about to be freed could be merged or dropped).
type Object = Box<[AtomicU8; OBJECT_SIZE]>;

/// The sizes of one run.
#[derive(Debug, Clone, Copy)]
struct Params {
    threads: usize,
    objects_per_thread: usize,
    writes_per_object: usize,
}

impl Params {
    fn at(scale: f64) -> Self {
        let threads = cpus();
        Params {
            threads,
            objects_per_thread: 1_000,
            // As in the original, the total work is split between the threads: with no
            // false sharing, twice the threads take half the time on enough CPUs.
            writes_per_object: (scaled(60_000, scale) as usize / threads).max(1),
        }
    }
}

/// What a run at `scale` does.
pub fn describe(scale: f64) -> String {
    let p = Params::at(scale);
    format!(
        "{} threads each free an {OBJECT_SIZE}-byte object the main thread allocated, then \
         {} times allocate an {OBJECT_SIZE}-byte object, write all of it {} times and free it",
        p.threads, p.objects_per_thread, p.writes_per_object
    )
}

fn new_object() -> Object {
    Box::new([const { AtomicU8::new(0) }; OBJECT_SIZE])
}

/// Write `object` `writes` times (each pass all bytes, reading each back) and check that it
/// holds the last pass's values; false when it does not.
fn scratch(object: &Object, writes: usize) -> bool {
    for pass in 0..writes {
        for (i, byte) in object.iter().enumerate() {
            byte.store((pass + i) as u8, Ordering::Relaxed);
            black_box(byte.load(Ordering::Relaxed));
        }
    }
    let last = writes.wrapping_sub(1);
    object
        .iter()
        .enumerate()
        .all(|(i, byte)| byte.load(Ordering::Relaxed) == (last + i) as u8)
}

/// Run at `scale`; the objects allocated, all checked and freed.
pub fn run(scale: f64) -> Result<u64, String> {
    let p = Params::at(scale);
    let given: Vec<Object> = (0..p.threads).map(|_| new_object()).collect();
    let results: Vec<(u64, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = given
            .into_iter()
            .map(|object| {
                scope.spawn(move || {
                    drop(object);
                    let (mut allocated, mut intact) = (0, 0);
                    for _ in 0..p.objects_per_thread {
                        let object = new_object();
                        allocated += 1;
                        intact += u64::from(scratch(&object, p.writes_per_object));
                        drop(object);
                    }
                    (allocated, intact)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a cache-scratch thread panicked"))
            .collect()
    });
    let allocated: u64 = results.iter().map(|r| r.0).sum();
    let intact: u64 = results.iter().map(|r| r.1).sum();
    if intact != allocated {
        return Err(format!(
            "{} of {allocated} objects did not hold what was last written to them",
            allocated - intact
        ));
    }
    let expected = (p.threads * p.objects_per_thread) as u64;
    if allocated != expected {
        return Err(format!(
            "{allocated} objects allocated, {expected} expected"
        ));
    }
    Ok(allocated + p.threads as u64)
}
