// Atomic output files (include/longrope/atomic_file.h).
#include "longrope/atomic_file.h"

#include <fcntl.h>
#include <fmt/core.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "longrope/error.h"

namespace longrope {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& what, int err) {
  throw Error(fmt::format("cannot write {}: {}: {} (expected a writable location with free space)",
                          path, what, std::strerror(err)));
}

// fsync of the folder that holds path, so that the rename itself is durable (best effort).
void sync_parent(const std::string& path) {
  std::filesystem::path dir = std::filesystem::path(path).parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

std::string atomic_temp_path(const std::string& path) {
  const std::filesystem::path p(path);
  std::string name(1, '.');  // built step by step: GCC 12 warns (falsely) on "." + string
  name.append(p.filename().string());
  name.append(".tmp");
  return (p.parent_path() / name).string();
}

void commit_temp_file(const std::string& tmp, const std::string& path) {
  const int fd = ::open(tmp.c_str(), O_RDONLY);
  if (fd < 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    fail(path, "cannot reopen " + tmp, e);
  }
  if (::fsync(fd) != 0) {
    const int e = errno;
    ::close(fd);
    std::remove(tmp.c_str());
    fail(path, "fsync of " + tmp, e);
  }
  ::close(fd);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    fail(path, "rename from " + tmp, e);
  }
  sync_parent(path);
}

void write_file_atomically(const std::string& path,
                           const std::function<void(std::FILE*, const std::string&)>& write) {
  const std::string tmp = atomic_temp_path(path);
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail(path, "cannot create " + tmp, errno);
  try {
    write(f, tmp);
  } catch (...) {
    std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  if (std::fflush(f) != 0 || std::ferror(f)) {
    const int e = errno;
    std::fclose(f);
    std::remove(tmp.c_str());
    fail(path, "write to " + tmp, e);
  }
  if (std::fclose(f) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    fail(path, "close of " + tmp, e);
  }
  commit_temp_file(tmp, path);
}

void write_file_atomically(const std::string& path, std::string_view data) {
  write_file_atomically(path, [&](std::FILE* f, const std::string& tmp) {
    if (!data.empty() && std::fwrite(data.data(), 1, data.size(), f) != data.size())
      fail(path, "write to " + tmp, errno);
  });
}

void check_writable(const std::string& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (std::filesystem::is_directory(st))
    throw Error(fmt::format("cannot write {}: it is a folder (expected a file name)", path));
  if (std::filesystem::exists(st) && !std::filesystem::is_regular_file(st))
    throw Error(fmt::format(
        "cannot write {}: it exists and is not a regular file (expected a file or a new path)",
        path));
  const std::string tmp = atomic_temp_path(path);
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail(path, "cannot create " + tmp, errno);
  std::fclose(f);
  std::remove(tmp.c_str());
}

void refuse_output_over_inputs(const std::string& command, const std::string& out,
                               const std::vector<std::string>& inputs) {
  for (const std::string& in : inputs) {
    std::error_code ec;
    if (in.empty() || out.empty() || !std::filesystem::equivalent(in, out, ec)) continue;
    throw OutputRefused(fmt::format(
        "{}: the output {} is the input {} (the same file); nothing was written (expected "
        "another output path)",
        command, out, in));
  }
}

void refuse_existing_state(const std::string& command, const std::string& state, bool resume,
                           bool overwrite) {
  std::error_code ec;
  if (resume || overwrite || !std::filesystem::exists(state, ec)) return;
  throw OutputRefused(fmt::format(
      "{}: {} holds an earlier run's progress; --resume continues it, --overwrite starts again "
      "and replaces it (nothing was written)",
      command, state));
}

}  // namespace longrope
