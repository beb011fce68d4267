// The ETA of a progress bar (longrope/progress.h): from the work this run measured, capped by a
// time budget.
#include <gtest/gtest.h>

#include "longrope/progress.h"

namespace longrope {
namespace {

TEST(UtilProgress, EtaFollowsTheMeasuredCostOfTheWorkLeft) {
  // 100 s for 1000 tokens: 4000 tokens left take 400 s.
  EXPECT_DOUBLE_EQ(eta_seconds(100, 1000, 4000), 400);
  // Work whose cost per item fell (cut candidates): the estimate of what is left says so.
  EXPECT_DOUBLE_EQ(eta_seconds(100, 1000, 1000), 100);
  EXPECT_DOUBLE_EQ(eta_seconds(100, 1000, 0), 0);
  // Nothing measured yet: no guess.
  EXPECT_DOUBLE_EQ(eta_seconds(5, 0, 4000), 0);
  // A budget: at most the budget left plus one item in flight.
  EXPECT_DOUBLE_EQ(eta_seconds(100, 1000, 4000, 60, 25), 85);
  EXPECT_DOUBLE_EQ(eta_seconds(100, 1000, 4000, 1000, 25), 400);
  EXPECT_DOUBLE_EQ(eta_seconds(100, 1000, -5), 0);
}

}  // namespace
}  // namespace longrope
