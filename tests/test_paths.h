// Locations of shared test material, helpers to skip (loudly) when it is absent, and the small
// file and error-checking helpers the tests share.
#pragma once
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <initializer_list>
#include <string>
#include <system_error>
#include <vector>

#include "longrope/error.h"
#include "longrope/kernels.h"

namespace longrope::test {

// True when CI=true: a missing test input fails instead of skipping.
bool in_ci();

// The checkout's root (scripts/, docs/).
std::filesystem::path source_dir();
// ../shared beside the checkout, or $LONGROPE_SHARED_DIR.
std::filesystem::path shared_dir();
// models/ of the checkout (the default model lives there after scripts/setup.sh), or
// $LONGROPE_MODELS_DIR.
std::filesystem::path models_dir();
std::filesystem::path smollm_path();
std::filesystem::path cli_path();
// Runs a shell command; returns exit status and captures stdout+stderr.
int run_command(const std::string& cmd, std::string* output);

// shared/models/stories260K.gguf and shared/data/NAME (e.g. "moby-dick.txt").
std::filesystem::path stories_gguf();
std::filesystem::path shared_text(const std::string& name);
// Whole file as bytes / as a string (empty when unreadable: the test's checks then fail).
std::vector<uint8_t> read_bytes(const std::filesystem::path& p);
std::string slurp(const std::filesystem::path& p);
// n normal(0, scale) values from a seeded generator (kernel tests' inputs).
std::vector<float> rnd(size_t n, uint64_t seed, float scale = 1.0f);
// An empty directory <tmp>/longrope_TAG_<pid>, created afresh.
std::filesystem::path fresh_temp_dir(const std::string& tag);
// Removes a directory when it goes out of scope, also when an ASSERT leaves the test early.
struct RemoveOnExit {
  std::filesystem::path dir;
  ~RemoveOnExit() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

// Runs f, which must throw a one-line longrope::Error whose message contains every part.
void expect_error_parts(const std::function<void()>& f, const std::vector<std::string>& parts);
template <class F>
void expect_error(F&& f, const std::string& want) {
  expect_error_parts(std::forward<F>(f), {want});
}
template <class F>
void expect_error(F&& f, std::initializer_list<const char*> parts) {
  expect_error_parts(std::forward<F>(f), std::vector<std::string>(parts.begin(), parts.end()));
}
template <class F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  expect_error_parts(std::forward<F>(f), parts);
}

}  // namespace longrope::test

// Skips the test, or fails it with CI=true (in CI a missing input is a failure, never a skip).
#define LONGROPE_SKIP_OR_FAIL(why)                                \
  do {                                                            \
    if (longrope::test::in_ci()) FAIL() << (why) << " (CI=true)"; \
    GTEST_SKIP() << (why);                                        \
  } while (0)

// Skips (fails with CI=true) when a test input is missing.
#define LONGROPE_REQUIRE_FILE(p)                                                        \
  do {                                                                                  \
    if (!std::filesystem::exists(p))                                                    \
      LONGROPE_SKIP_OR_FAIL("missing test input " + std::filesystem::path(p).string() + \
                            " (run scripts/setup.sh / need ../shared)");                \
  } while (0)

// Skips a test of a path that needs CPU variant `v` (kernels::CpuVariant) where the variant in
// effect lacks it, saying why: this CPU lacks the feature, or LONGROPE_CPU chose a lower variant
// (docs/design.md, "CPU variants and the conformance suite"). A skip, also with CI=true: the path
// runs in the runs of the higher variants, and BackendConformance runs every variant the CPU has.
#define LONGROPE_REQUIRE_CPU_VARIANT(v)                                                      \
  do {                                                                                       \
    const std::string longrope_why_ = longrope::kernels::cpu_variant_missing(v);             \
    if (!longrope_why_.empty())                                                              \
      GTEST_SKIP() << "needs CPU variant " << longrope::kernels::cpu_variant_name(v) << ": " \
                   << longrope_why_;                                                         \
  } while (0)
