//! Property tests against a `Vec` model: one thread drives a `Simulated` machine with
//! injected CPU ids (including none, and an index past the array) and injected aborts, and
//! every pop, hand-back and drain must match the model exactly: LIFO per CPU, the fallback
//! when there is no CPU, and the steal order (the victim's newest to the caller, the next
//! ones moved onto the thief's CPU).

use percpu_queue::{FreeList, Node, PerCpuBuffer, Pool};
use proptest::prelude::*;
use rseq_sys::simulation::{abort_next, set_cpu};
use rseq_sys::Simulated;

const CPUS: usize = 3;
const STEAL_BATCH: usize = 16;

/// 0..CPUS are CPUs; CPUS is an index past the array; anything above is "no CPU".
fn cpu_strategy() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![
        6 => (0..CPUS).prop_map(Some),
        1 => Just(Some(CPUS)),
        1 => Just(None),
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Push { cpu: Option<usize>, aborts: u32 },
    Pop { cpu: Option<usize>, aborts: u32 },
    Drain,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        5 => (cpu_strategy(), 0..3u32).prop_map(|(cpu, aborts)| Op::Push { cpu, aborts }),
        4 => (cpu_strategy(), 0..3u32).prop_map(|(cpu, aborts)| Op::Pop { cpu, aborts }),
        1 => Just(Op::Drain),
    ];
    proptest::collection::vec(op, 0..if cfg!(miri) { 24 } else { 160 })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Per-CPU stacks and the fallback, newest last.
#[derive(Default)]
struct Model {
    cpus: Vec<Vec<u64>>,
    fallback: Vec<u64>,
    capacity: Option<usize>,
}

impl Model {
    fn new(capacity: Option<usize>) -> Self {
        Model {
            cpus: vec![Vec::new(); CPUS],
            fallback: Vec::new(),
            capacity,
        }
    }

    fn fits(&self, stack: &[u64]) -> bool {
        self.capacity.is_none_or(|cap| stack.len() < cap)
    }

    fn valid(cpu: Option<usize>) -> Option<usize> {
        cpu.filter(|&c| c < CPUS)
    }

    /// `Err(value)` when handed back.
    fn push(&mut self, cpu: Option<usize>, value: u64) -> Result<(), u64> {
        let stack = match Self::valid(cpu) {
            Some(c) => &self.cpus[c],
            None => &self.fallback,
        };
        if !self.fits(stack) {
            return Err(value);
        }
        match Self::valid(cpu) {
            Some(c) => self.cpus[c].push(value),
            None => self.fallback.push(value),
        }
        Ok(())
    }

    fn pop(&mut self, cpu: Option<usize>) -> Option<u64> {
        self.pop_nearby(cpu).or_else(|| self.steal(cpu))
    }

    /// This CPU's newest, else the fallback's.
    fn pop_nearby(&mut self, cpu: Option<usize>) -> Option<u64> {
        let local = Self::valid(cpu);
        if let Some(value) = local.and_then(|c| self.cpus[c].pop()) {
            return Some(value);
        }
        self.fallback.pop()
    }

    /// The first non-empty other CPU's newest, moving up to 15 more onto this CPU.
    fn steal(&mut self, cpu: Option<usize>) -> Option<u64> {
        let local = Self::valid(cpu);
        let start = local.map_or(0, |c| c + 1);
        for i in 0..CPUS {
            let victim = (start + i) % CPUS;
            let Some(first) = self.cpus[victim].pop() else {
                continue;
            };
            for _ in 1..STEAL_BATCH {
                let Some(c) = local.filter(|&c| c != victim) else {
                    break;
                };
                if self.cpus[victim].is_empty() || !self.fits(&self.cpus[c]) {
                    break;
                }
                let moved = self.cpus[victim].pop().unwrap();
                self.cpus[c].push(moved);
            }
            return Some(first);
        }
        None
    }

    /// Per CPU newest first, CPUs in order, then the fallback newest first.
    fn drain(&mut self) -> Vec<u64> {
        let mut all = Vec::new();
        for stack in self
            .cpus
            .iter_mut()
            .chain(std::iter::once(&mut self.fallback))
        {
            all.extend(stack.drain(..).rev());
        }
        all
    }
}

fn inject(cpu: Option<usize>, aborts: u32) {
    set_cpu(cpu);
    abort_next(aborts);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn freelist_matches_the_model(ops in ops()) {
        let mut list: FreeList<u64, Simulated> = FreeList::with_backend(Simulated::new(CPUS));
        let mut model = Model::new(None);
        for (id, op) in ops.into_iter().enumerate() {
            let id = id as u64;
            match op {
                Op::Push { cpu, aborts } => {
                    inject(cpu, aborts);
                    list.push(Box::new(Node::new(id)));
                    model.push(cpu, id).unwrap();
                }
                Op::Pop { cpu, aborts } => {
                    inject(cpu, aborts);
                    let got = list.pop().map(|node| node.into_inner());
                    prop_assert_eq!(got, model.pop(cpu));
                }
                Op::Drain => {
                    let got: Vec<u64> = list.drain().into_iter().map(|n| n.into_inner()).collect();
                    prop_assert_eq!(got, model.drain());
                }
            }
            abort_next(0);
        }
        let rest: Vec<u64> = list.drain().into_iter().map(|n| n.into_inner()).collect();
        prop_assert_eq!(rest, model.drain());
        prop_assert!(list.is_empty());
    }

    #[test]
    fn buffer_matches_the_model(capacity in 0..4usize, ops in ops()) {
        let mut buffer: PerCpuBuffer<u64, Simulated> =
            PerCpuBuffer::with_backend(Simulated::new(CPUS), capacity);
        let mut model = Model::new(Some(capacity));
        for (id, op) in ops.into_iter().enumerate() {
            let id = id as u64;
            match op {
                Op::Push { cpu, aborts } => {
                    inject(cpu, aborts);
                    let got = buffer.push(Box::new(id)).map_err(|back| *back);
                    prop_assert_eq!(got, model.push(cpu, id));
                }
                Op::Pop { cpu, aborts } => {
                    inject(cpu, aborts);
                    let got = buffer.pop().map(|b| *b);
                    prop_assert_eq!(got, model.pop(cpu));
                }
                Op::Drain => {
                    let got: Vec<u64> = buffer.drain().into_iter().map(|b| *b).collect();
                    prop_assert_eq!(got, model.drain());
                }
            }
            abort_next(0);
        }
        let rest: Vec<u64> = buffer.drain().into_iter().map(|b| *b).collect();
        prop_assert_eq!(rest, model.drain());
    }

    /// The pool hands out each object to one guard at a time, keeps at most `max_idle`, and
    /// reuses idle objects before creating.
    #[test]
    fn pool_reuses_and_bounds(max_idle in 0..4usize, ops in ops()) {
        let created = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = created.clone();
        let mut pool = Pool::with_backend(Simulated::new(CPUS), max_idle, move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        });
        let mut idle = Model::new(None);
        let mut out = Vec::new();
        let mut kept = 0usize;
        for op in ops {
            match op {
                Op::Push { cpu, aborts } => {
                    // Give back the oldest guard on `cpu`.
                    if out.is_empty() {
                        continue;
                    }
                    inject(cpu, aborts);
                    let guard: percpu_queue::Pooled<'_, u64, Simulated> = out.remove(0);
                    let id = *guard;
                    let was_kept = guard.is_kept();
                    drop(guard);
                    if was_kept {
                        idle.push(cpu, id).unwrap();
                    }
                }
                Op::Pop { cpu, aborts } => {
                    inject(cpu, aborts);
                    let guard = pool.get();
                    // Nearby idle objects first, then a new kept one while under the bound,
                    // then a stolen one, then a new temporary one.
                    let reuse = match idle.pop_nearby(cpu) {
                        Some(id) => Some(id),
                        None if kept < max_idle => None,
                        None => idle.steal(cpu),
                    };
                    match reuse {
                        Some(expected) => {
                            prop_assert_eq!(*guard, expected);
                            prop_assert!(guard.is_kept());
                        }
                        None => {
                            prop_assert_eq!(*guard + 1, created.load(std::sync::atomic::Ordering::Relaxed));
                            prop_assert_eq!(guard.is_kept(), kept < max_idle);
                            kept += usize::from(guard.is_kept());
                        }
                    }
                    out.push(guard);
                }
                Op::Drain => {}
            }
            abort_next(0);
            prop_assert!(pool.kept() <= max_idle);
            prop_assert_eq!(pool.kept(), kept);
        }
        drop(out);
        let mut drained = pool.drain();
        drained.sort_unstable();
        let mut expected = idle.drain();
        expected.sort_unstable();
        // Guards still out at the end went back on the last injected CPU: compare as sets of
        // kept objects instead.
        prop_assert_eq!(drained.len(), kept);
        prop_assert!(expected.iter().all(|id| drained.contains(id)));
    }
}
