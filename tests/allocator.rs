//! The crate's first CPU op primes glibc's adaptive malloc thresholds (`kernels::malloc`), so
//! that large tensors come from the heap instead of fresh mappings. A file of its own: the
//! allocator's state is per process, and this test must see it before anything primes it.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn the_first_cpu_op_serves_large_blocks_from_the_heap() {
    use candle_core::{Device, Tensor};

    extern "C" {
        fn malloc(size: usize) -> *mut u8;
        fn free(ptr: *mut u8);
    }
    // glibc marks a block served by its own mmap with bit 1 (IS_MMAPPED) of the chunk's size
    // word, just before the block.
    fn mmapped(p: *mut u8) -> bool {
        assert!(!p.is_null());
        // SAFETY: every block glibc hands out is preceded by its chunk's size word.
        unsafe { *(p as *const usize).sub(1) & 2 != 0 }
    }
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        eprintln!("GLIBC_TUNABLES is set: the thresholds are not glibc's defaults; skipped");
        return;
    }
    const BLOCK: usize = 24 << 20;
    // called through opaque pointers, so that the optimizer does not treat them as the
    // allocator builtins (and the header read below as a read outside an allocation)
    let (malloc, free) = std::hint::black_box((
        malloc as unsafe extern "C" fn(usize) -> *mut u8,
        free as unsafe extern "C" fn(*mut u8),
    ));
    // SAFETY: plain malloc/free pairs of blocks nothing else sees.
    unsafe {
        let before = malloc(BLOCK);
        assert!(
            mmapped(before),
            "a fresh process should serve 24 MiB with mmap (threshold 128 KiB)"
        );
        let x = Tensor::ones((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let w = Tensor::ones((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = convluna::ops::linear(&x, &w, None).unwrap();
        assert_eq!(y.dims(), [2, 4]);
        let after = malloc(BLOCK);
        assert!(
            !mmapped(after),
            "after the first fused CPU op, 24 MiB should come from the heap"
        );
        free(after);
        free(before);
    }
    assert!(convluna::kernels::prime_glibc_malloc());
}
