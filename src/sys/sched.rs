//! Where control-plane work runs: off the workers' CPUs. [`place_control_thread`] pins the
//! calling thread to CPUs no worker uses, or, when the workers have every CPU, gives it the
//! lowest scheduling priority (`SCHED_IDLE`), so that parsing a reload never takes a worker's
//! CPU time. Threads started from it inherit both, so [`parallel_map`]'s helpers do too.

/// How the calling thread was placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Pinned to these CPUs (none of them a worker's).
    Pinned(Vec<usize>),
    /// Sharing the workers' CPUs at `SCHED_IDLE`: it runs only when they have nothing to do.
    Idle,
    /// Neither could be set (the reason); it runs as any thread.
    Unchanged(String),
}

/// Places the calling thread off the CPUs in `workers`: on the allowed CPUs that no worker has,
/// else at `SCHED_IDLE`.
pub fn place_control_thread(workers: &[usize]) -> Placement {
    let allowed: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let free: Vec<usize> = allowed.iter().copied().filter(|c| !workers.contains(c)).collect();
    if !free.is_empty() && !workers.is_empty() {
        // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within it for ids below
        // CPU_SETSIZE (checked); sched_setaffinity(0) reads it for the calling thread.
        let ok = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in free.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
                libc::CPU_SET(c, &mut set);
            }
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        };
        if ok {
            return Placement::Pinned(free);
        }
    }
    // SAFETY: sched_param is plain data; SCHED_IDLE takes priority 0; pid 0 is this thread.
    let rc = unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
    };
    if rc == 0 {
        Placement::Idle
    } else {
        Placement::Unchanged(std::io::Error::last_os_error().to_string())
    }
}

/// The threads [`parallel_map`] uses: the CPUs the caller may run on, at most 8.
pub fn parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(8)
}

/// `f` over every item of `items`, on up to the machine's CPUs (scoped threads, which inherit the caller's
/// CPU placement; the caller is the control plane, never a worker).
pub fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = parallelism();
    if threads < 2 || items.len() < 2 {
        return items.iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> =
            items.chunks(per).map(|chunk| s.spawn(move || chunk.iter().map(f).collect::<Vec<R>>())).collect();
        let mut out = Vec::with_capacity(items.len());
        for p in parts {
            match p.join() {
                Ok(v) => out.extend(v),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}
