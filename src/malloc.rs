//! glibc's allocator set for a daemon whose memory `server.max_memory` bounds: what a message
//! frees goes back to the system instead of staying in per-thread arenas.
//!
//! Left to its defaults, glibc keeps up to 8 arenas per CPU (one per thread that allocates at
//! once: the async workers and every blocking thread a MIME walk runs on), trims an arena only
//! from its top, and raises its mmap threshold to the size of every large block freed (up to
//! 32 MiB), so a 2 MiB message copy freed once makes every later one come from an arena, where
//! it stays. With 64 hostile messages at once (`bench/run hostile`) postsift then peaked at
//! 262–317 MiB while the budget held 128 MiB. Here: as many arenas as CPUs (at least 2), large
//! blocks (256 KiB and up: message copies, decoded parts, decoder windows, MIME trees' vectors)
//! always mapped on their own and unmapped when freed, and an arena's free top returned past
//! 1 MiB. Small allocations, which a clean message's handling is made of, are untouched.

/// Sets the allocator up: called first thing, before any thread is started.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Blocks at least this large are mapped on their own, and unmapped when freed.
        const MMAP_THRESHOLD: usize = 256 * 1024;
        // Free memory at the top of an arena past this is returned to the system.
        const TRIM_THRESHOLD: usize = 1024 * 1024;
        let arenas = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let settings = [
            (libc::M_ARENA_MAX, arenas),
            (libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ];
        for (param, value) in settings {
            let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
            // SAFETY: mallopt only sets allocator parameters; a value it refuses is ignored
            // (it returns 0) and the default stays.
            unsafe { libc::mallopt(param, value) };
        }
    }
}
