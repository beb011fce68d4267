// Locations of shared test material and helpers to skip (loudly) when it is absent.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

namespace longrope::test {

// ../shared beside the checkout, or $LONGROPE_SHARED_DIR.
std::filesystem::path shared_dir();
// models/ of the checkout (the default model lives there after scripts/setup.sh), or
// $LONGROPE_MODELS_DIR.
std::filesystem::path models_dir();
std::filesystem::path smollm_path();
std::filesystem::path cli_path();
// Runs a shell command; returns exit status and captures stdout+stderr.
int run_command(const std::string& cmd, std::string* output);

}  // namespace longrope::test

#define LONGROPE_REQUIRE_FILE(p)                                                                  \
  do {                                                                                            \
    if (!std::filesystem::exists(p))                                                              \
      GTEST_SKIP() << "missing test input " << (p) << " (run scripts/setup.sh / need ../shared)"; \
  } while (0)
