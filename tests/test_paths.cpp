#include "test_paths.h"

#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

namespace longrope::test {

std::filesystem::path source_dir() {
  return LONGROPE_SOURCE_DIR;
}

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

bool in_ci() {
  const char* ci = std::getenv("CI");
  return ci && std::string(ci) == "true";
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

std::filesystem::path stories_gguf() {
  return shared_dir() / "models" / "stories260K.gguf";
}

std::filesystem::path shared_text(const std::string& name) {
  return shared_dir() / "data" / name;
}

std::vector<uint8_t> read_bytes(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<float> rnd(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::filesystem::path fresh_temp_dir(const std::string& tag) {
  const auto d = std::filesystem::temp_directory_path() /
                 ("longrope_" + tag + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

void expect_error_parts(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected an Error containing '" << parts.front() << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "message is not one line: " << msg;
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

}  // namespace longrope::test
