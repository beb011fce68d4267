#include "test_paths.h"

#include <array>
#include <cstdio>
#include <cstdlib>

namespace longrope::test {

std::filesystem::path shared_dir() {
  if (const char* e = std::getenv("LONGROPE_SHARED_DIR")) return e;
  return std::filesystem::path(LONGROPE_SOURCE_DIR) / ".." / "shared";
}

std::filesystem::path models_dir() {
  if (const char* e = std::getenv("LONGROPE_MODELS_DIR")) return e;
  return std::filesystem::path(LONGROPE_SOURCE_DIR) / "models";
}

std::filesystem::path smollm_path() {
  return models_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::filesystem::path cli_path() {
  return LONGROPE_CLI_PATH;
}

int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (!p) return -1;
  std::array<char, 4096> buf{};
  std::string out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int st = pclose(p);
  if (output) *output = out;
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace longrope::test
