// The one atomic-write helper: the real name only ever holds a whole file.
#include "longrope/atomic_file.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <stdexcept>
#include <string>

#include "longrope/error.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;

TEST(AtomicFile, WritesWholeFileAndLeavesNoTemporary) {
  const fs::path d = test::fresh_temp_dir("atomic");
  const std::string p = (d / "out.json").string();
  // A temporary left by a killed earlier run is replaced.
  write_file_atomically(atomic_temp_path(p), std::string_view("stale"));
  EXPECT_EQ(atomic_temp_path(p), (d / ".out.json.tmp").string());
  write_file_atomically(p, std::string_view("first\n"));
  write_file_atomically(p, std::string_view("second\n"));
  EXPECT_EQ(test::slurp(p), "second\n");
  EXPECT_FALSE(fs::exists(atomic_temp_path(p)));
  fs::remove_all(d);
}

TEST(AtomicFile, FailedWriterKeepsTheOldFile) {
  const fs::path d = test::fresh_temp_dir("atomic_fail");
  const std::string p = (d / "model.gguf").string();
  write_file_atomically(p, std::string_view("old"));
  EXPECT_THROW(write_file_atomically(p,
                                     [](std::FILE* f, const std::string&) {
                                       std::fputs("half", f);
                                       throw Error("disk full (simulated)");
                                     }),
               Error);
  EXPECT_EQ(test::slurp(p), "old");
  EXPECT_FALSE(fs::exists(atomic_temp_path(p)));
  fs::remove_all(d);
}

TEST(AtomicFile, UnwritablePlacesFailWithOneLine) {
  test::expect_error([] { write_file_atomically("/nonexistent/dir/f.json", "x"); },
                     "cannot write /nonexistent/dir/f.json");
  test::expect_error([] { check_writable("/nonexistent/dir/f.json"); },
                     "cannot write /nonexistent/dir/f.json");
  const fs::path d = test::fresh_temp_dir("atomic_dir");
  test::expect_error([&] { check_writable(d.string()); }, "it is a folder");
  test::expect_error([] { check_writable("/dev/null"); }, "not a regular file");
  check_writable((d / "fine.json").string());
  EXPECT_TRUE(fs::is_empty(d));  // the probe leaves nothing behind
  fs::remove_all(d);
}

}  // namespace
}  // namespace longrope
