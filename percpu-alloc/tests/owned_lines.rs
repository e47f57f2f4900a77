//! Objects smaller than a cache line stay with the CPU whose span they came from: a thread
//! on another CPU that frees them never gets them, or their lines, back from its own
//! allocations (passive false sharing, as in Hoard's cache-scratch).

mod support;

use percpu_alloc::PerCpuAlloc;
use std::collections::HashSet;
use std::sync::mpsc;
use support::{pin_to_cpu, slot};

#[global_allocator]
static A: PerCpuAlloc = PerCpuAlloc::new();

const OBJECTS: usize = 64;
const LINE: usize = 64;

fn line(address: usize) -> usize {
    address / LINE
}

#[test]
fn a_cpu_never_hands_out_lines_another_cpus_objects_live_in() {
    drop(Box::new(0u64));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !percpu_alloc::stats().per_cpu_active || cpus < 2 {
        eprintln!("skipped: needs the per-CPU caches and two CPUs");
        return;
    }
    let (to_freer, from_owner) = mpsc::channel::<(Vec<Box<u64>>, Option<u32>)>();
    let owner = std::thread::spawn(move || {
        assert!(pin_to_cpu(0), "pin to CPU 0");
        // Allocated back to back: eight to a line.
        let objects: Vec<Box<u64>> = (0..OBJECTS as u64).map(Box::new).collect();
        to_freer.send((objects, slot())).unwrap();
    });
    let freer = std::thread::spawn(move || {
        assert!(pin_to_cpu(1), "pin to CPU 1");
        let (objects, owner_slot) = from_owner.recv().unwrap();
        if owner_slot.is_none() || owner_slot == slot() {
            return None;
        }
        let freed_lines: HashSet<usize> = objects
            .iter()
            .map(|b| line(&**b as *const u64 as usize))
            .collect();
        for (i, object) in objects.iter().enumerate() {
            assert_eq!(**object, i as u64);
        }
        drop(objects);
        // Hold them all, so that each allocation is a new object.
        let mine: Vec<Box<u64>> = (0..4 * OBJECTS as u64).map(Box::new).collect();
        let shared = mine
            .iter()
            .filter(|b| freed_lines.contains(&line(&***b as *const u64 as usize)))
            .count();
        Some(shared)
    });
    owner.join().unwrap();
    match freer.join().unwrap() {
        None => eprintln!("skipped: both threads had the same slot"),
        Some(shared) => assert_eq!(
            shared, 0,
            "objects handed out on CPU 1 share lines with CPU 0's objects freed there"
        ),
    }
}
