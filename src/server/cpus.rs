//! Where the threads run: one CPU per worker, and a CPU for the admin thread that no worker uses.

use crate::config::Runtime;

/// One CPU (or none, unpinned) per worker.
pub fn plan_cpus(rt: &Runtime) -> Vec<Option<usize>> {
    let allowed: Vec<usize> = core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect();
    let cpus = rt.cpus.clone().unwrap_or(allowed);
    let n = match rt.workers {
        0 => cpus.len().max(1),
        n => n,
    };
    (0..n).map(|i| if cpus.is_empty() { None } else { Some(cpus[i % cpus.len()]) }).collect()
}

/// A CPU for the admin thread that no worker is pinned to (the first allowed one), if any.
pub fn admin_cpu(workers: &[Option<usize>]) -> Option<usize> {
    core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).find(|id| !workers.contains(&Some(*id)))
}
