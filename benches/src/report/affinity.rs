//! Pinning a one-thread round to one CPU.
//!
//! On the shared hosts this report runs on, each CPU has stretches of half a second to
//! several seconds when everything on it runs 1.6-1.8x slower (the host's other hardware
//! thread busy, as far as can be told from inside), independently of the other CPU. A
//! one-thread sample lands on whichever CPU the scheduler picks, so two contenders of the
//! same round could be timed one on a slow CPU and one on a fast one. Pinning every sample
//! of a round to the same CPU, and the rounds to the CPUs in turn, puts both sides of each
//! per-round ratio on the same CPU, in the same stretch of time as far as the round is short.
//!
//! The mask is the calling thread's: threads it spawns and children it starts inherit it,
//! which is how an isolated sample's child process ends up pinned too.

use std::io;

/// The CPUs the calling thread may run on, in increasing order; empty when they cannot be
/// read (the caller then does not pin).
pub fn allowed_cpus() -> Vec<usize> {
    match current_mask() {
        Ok(mask) => (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `cpu` is below `CPU_SETSIZE`, the size of the set; `CPU_ISSET` only
            // reads the set.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &mask) })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Run `f` with the calling thread (and what it spawns or starts meanwhile) allowed only on
/// `cpu`, then give the thread its previous mask back. Without `cpu`, just run `f`.
pub fn pinned<T>(cpu: Option<usize>, f: impl FnOnce() -> T) -> io::Result<T> {
    let Some(cpu) = cpu else {
        return Ok(f());
    };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is past CPU_SETSIZE"),
        ));
    }
    let previous = current_mask()?;
    // SAFETY: an all-zero `cpu_set_t` is the empty set (it is plain bits).
    let mut only = unsafe { std::mem::zeroed::<libc::cpu_set_t>() };
    // SAFETY: `cpu` was checked to be below `CPU_SETSIZE`, so `CPU_SET` writes inside the
    // set.
    unsafe { libc::CPU_SET(cpu, &mut only) };
    set_mask(&only)?;
    let restore = Restore(previous);
    let result = f();
    drop(restore);
    Ok(result)
}

/// Gives the calling thread `.0` back as its mask when dropped, on unwinding too.
struct Restore(libc::cpu_set_t);

impl Drop for Restore {
    fn drop(&mut self) {
        // The mask was in force a moment ago, so setting it again does not fail in practice;
        // if it did, the thread would stay pinned, which slows later samples but corrupts
        // nothing.
        let _ = set_mask(&self.0);
    }
}

fn current_mask() -> io::Result<libc::cpu_set_t> {
    // SAFETY: an all-zero `cpu_set_t` is the empty set (it is plain bits).
    let mut mask = unsafe { std::mem::zeroed::<libc::cpu_set_t>() };
    // SAFETY: the kernel writes at most `size_of::<cpu_set_t>()` bytes into `mask`, which is
    // that large and lives for the call; pid 0 is the calling thread.
    let status =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut mask) };
    if status == 0 {
        Ok(mask)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn set_mask(mask: &libc::cpu_set_t) -> io::Result<()> {
    // SAFETY: the kernel reads `size_of::<cpu_set_t>()` bytes from `mask`, a live set of
    // that size; pid 0 is the calling thread.
    let status =
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), mask) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CPU this thread runs on now.
    fn current_cpu() -> usize {
        // SAFETY: `sched_getcpu` has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        usize::try_from(cpu).expect("sched_getcpu failed")
    }

    #[test]
    fn a_pinned_closure_runs_on_its_cpu_and_the_mask_comes_back() {
        let before = allowed_cpus();
        assert!(!before.is_empty(), "the affinity mask could not be read");
        for &cpu in &before {
            let (here, inside, spawned) = pinned(Some(cpu), || {
                let spawned = std::thread::spawn(|| (current_cpu(), allowed_cpus()))
                    .join()
                    .expect("the spawned thread panicked");
                (current_cpu(), allowed_cpus(), spawned)
            })
            .expect("pinning to an allowed CPU");
            assert_eq!((here, inside), (cpu, vec![cpu]));
            assert_eq!(
                spawned,
                (cpu, vec![cpu]),
                "a spawned thread inherits the pin"
            );
            assert_eq!(allowed_cpus(), before, "the previous mask is restored");
        }
    }

    #[test]
    fn no_cpu_means_no_pin_and_a_bad_cpu_is_an_error() {
        let before = allowed_cpus();
        assert_eq!(pinned(None, allowed_cpus).expect("no pin"), before);
        assert!(pinned(Some(libc::CPU_SETSIZE as usize), || ()).is_err());
        assert_eq!(allowed_cpus(), before);
    }
}
