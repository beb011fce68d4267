// The main of the Google Benchmark programs: OpenBLAS's kernels are repaired first
// (kernels::restart_with_blas_repair, as the CLI and the test binary do), so that a kernel
// benchmark measures the kernels a command runs.
#include <benchmark/benchmark.h>

#include "longrope/kernels.h"

int main(int argc, char** argv) {
  longrope::kernels::restart_with_blas_repair(argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
