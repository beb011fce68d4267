// The test binary's main: the BLAS kernels the CLI runs (longrope/kernels.h,
// restart_with_blas_repair), so that tests and the commands they compare with use the same ones.
#include <gtest/gtest.h>

#include "longrope/kernels.h"

int main(int argc, char** argv) {
  longrope::kernels::restart_with_blas_repair(argv);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
