/* For measuring PyTorch on AMD CPUs only (BENCHMARKS.md, round 14 of issue 26); not used by
 * the crate. oneMKL takes its Intel code paths (AVX-512 kernels included) only on CPUs it
 * identifies as Intel's, and MKL_ENABLE_INSTRUCTIONS does not change that. PyTorch's wheel
 * exports MKL's vendor check from libtorch_cpu.so, so preloading this one-line override makes
 * MKL take those paths on an AMD CPU (on a 2-vCPU Zen 4: 2048³ f32 matmul 194–197 → 216–218
 * GFLOP/s, the attention's d_h = 32 products 1.3–1.9× faster, training steps 8–19 % faster):
 *
 *   gcc -shared -fPIC -O2 -o /tmp/mkl-intel-cpu.so scripts/mkl-intel-cpu.c
 *   LD_PRELOAD=/tmp/mkl-intel-cpu.so .venv/bin/python scripts/baseline.py --mode matmul
 *
 * The strongest PyTorch baseline on such a CPU is the one run this way. */
int mkl_serv_intel_cpu_true(void) { return 1; }
