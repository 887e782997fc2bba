//! glibc malloc and the page faults of a training step.
//!
//! glibc serves a block of at least its *mmap threshold* with a fresh `mmap` (its pages fault
//! in on first touch and go back to the system on free), and gives the top of its heap back
//! to the system when more than the *trim threshold* lies free there. Both start at 128 KiB
//! and adapt: freeing an mmapped block raises the mmap threshold to that block's size (up to
//! 32 MiB) and the trim threshold to twice it (mallopt(3), `M_MMAP_THRESHOLD`). A training
//! step allocates and frees tens of `[B, L, d]` tensors (8 MiB at 16,384 tokens and d = 128)
//! and, with a batch of sequences, many `[B, m, d]` ones of 1–2 MiB. Whether they reuse the
//! heap or fault in fresh pages every step then depends on the largest block the program
//! happened to free first. Measured on Luna training (BENCHMARKS.md, "Stock allocator against
//! the tuned one"): 106,833 page faults a step at a batch of 16 sequences, where nothing
//! larger than 8 MiB had been freed, 42,887 at one sequence, where a 16 MiB buffer had; with
//! the prime below, 9,908 and none.
//!
//! [`prime_glibc_malloc`] makes that state deterministic: it allocates and frees one mmapped
//! block just under 32 MiB, which moves both thresholds where glibc's own adaptation would
//! put them after any such block (mmap threshold 32 MiB − 4 KiB, trim threshold twice that).
//! It changes no setting the program chose: an explicit `mallopt` or `GLIBC_TUNABLES`
//! threshold turns glibc's adaptation off, and then the call changes nothing. The fused
//! kernels call it once per process, on their first CPU op (`CONVLUNA_NO_MALLOC_PRIME=1`
//! skips that). Its cost: up to twice 32 MiB of freed memory per malloc arena may stay in the
//! heap instead of going back to the system. [`tune_glibc_malloc`] is the stronger, opt-in
//! setting: never `mmap`, never trim, so the process keeps its peak memory.

/// Sets glibc's adaptive malloc thresholds as freeing a 32 MiB block would (see the module
/// docs): allocates one block of just under 32 MiB (never touched, so no page is faulted in)
/// and frees it. Returns false where it does nothing (not glibc). Idempotent and cheap (two
/// system calls); the crate's CPU kernels call it once on their first op, so a program only
/// calls it itself to have it in effect earlier.
pub fn prime_glibc_malloc() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc(size: usize) -> *mut std::ffi::c_void;
            fn free(ptr: *mut std::ffi::c_void);
        }
        // The chunk of an mmapped block is the request plus a header, rounded up to pages:
        // a request 8 KiB under 32 MiB gives a 32 MiB − 4 KiB chunk, within glibc's 32 MiB
        // cap on the adaptive threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit targets).
        const REQUEST: usize = (32 << 20) - (8 << 10);
        // SAFETY: a plain malloc/free pair of a block nothing else sees; `black_box` keeps
        // the optimizer from deleting the pair (it may remove an unused malloc + free).
        unsafe {
            let p = std::hint::black_box(malloc(REQUEST));
            if p.is_null() {
                return false;
            }
            free(p);
        }
        true
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Once per process: [`prime_glibc_malloc`], unless `CONVLUNA_NO_MALLOC_PRIME` is set (to
/// anything but `0`).
pub(crate) fn prime_once() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let off = std::env::var("CONVLUNA_NO_MALLOC_PRIME").is_ok_and(|v| v != "0");
        if !off {
            prime_glibc_malloc();
        }
    });
}

/// Tells glibc's malloc to keep freed memory (no `mmap` for large blocks, no trimming, a
/// 1 GiB top pad), as `GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=…:
/// glibc.malloc.top_pad=1073741824` does: the remaining page faults of a step go too, and the
/// process keeps its peak memory. Opt-in (the crate's own binaries call it first thing in
/// `main`); returns false where it does nothing (not glibc).
pub fn tune_glibc_malloc() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(
                param: std::os::raw::c_int,
                value: std::os::raw::c_int,
            ) -> std::os::raw::c_int;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_MAX: i32 = -4;
        // SAFETY: mallopt only changes allocator parameters.
        unsafe {
            mallopt(M_MMAP_MAX, 0) == 1
                && mallopt(M_TRIM_THRESHOLD, i32::MAX) == 1
                && mallopt(M_TOP_PAD, 1 << 30) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
