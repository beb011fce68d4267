// libFuzzer target, built twice: arbitrary bytes as JSON text for
//  - factors_fuzz (LONGROPE_FUZZ_HF_CONFIG=0): a LongRoPE factors file, both through
//    factors_from_json(json::parse(text)) and through read_factors_file on the same text;
//  - hf_config_fuzz (LONGROPE_FUZZ_HF_CONFIG=1): a Hugging Face config.json through
//    rope_from_hf_config(json::parse(text)).
// json::parse may throw its documented nlohmann exceptions; the parsers may throw only
// longrope::Error (anything else escapes and is reported). A parsed scaling must describe itself
// and give RopeTables (or Error) at a few lengths; a longrope scaling must go through
// write_factors_file and read back identically, and writing what was read must give the same
// bytes (the round trip docs/factors-format.md promises).
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "longrope/error.h"
#include "longrope/rope.h"

using namespace longrope;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

volatile uint64_t g_sink;

// Scratch files (removed after each input) on a RAM disk when there is one: write_factors_file
// syncs what it writes.
std::string scratch(const char* tag) {
  std::error_code ec;
  const fs::path dir =
      fs::is_directory("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
  return (dir / ("longrope_fuzz_" + std::to_string(::getpid()) + "_" + tag + ".json")).string();
}

const std::string& scratch_path(int k) {
  static const std::string paths[3] = {scratch("in"), scratch("a"), scratch("b")};
  return paths[k];
}

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The rotary dims a validated scaling fits.
int n_rot_for(const RopeScaling& s) {
  if (s.method == RopeMethod::kLongrope) return static_cast<int>(2 * s.sets.front().factors.size());
  if (!s.freq_factors.empty()) return static_cast<int>(2 * s.freq_factors.size());
  return 64;
}

void exercise(const RopeScaling& s) {
  g_sink = g_sink + s.describe().size();
  const int n_rot = n_rot_for(s);
  const int64_t past_orig = s.orig_ctx < INT64_MAX ? s.orig_ctx + 1 : s.orig_ctx;
  for (int64_t len : {int64_t{1}, int64_t{4096}, s.orig_ctx, past_orig, s.target_ctx}) {
    try {
      const RopeTables t = s.tables(len, n_rot, 10000.0, 2048);
      if (t.inv_freq.size() != static_cast<size_t>(n_rot / 2) ||
          t.inv_freq_orig.size() != t.inv_freq.size()) {
        __builtin_trap();
      }
      g_sink = g_sink + static_cast<uint64_t>(t.n_hat);
    } catch (const Error&) {
    }
  }
}

// write -> read gives the same scaling and provenance; write(read(file)) gives the same bytes.
void round_trip(const RopeScaling& s, const json& provenance) {
  if (s.method != RopeMethod::kLongrope) return;
  const std::string& a = scratch_path(1);
  const std::string& b = scratch_path(2);
  write_factors_file(a, s, provenance);  // an Error here is a finding: s came from a reader
  json prov_back;
  const RopeScaling back = read_factors_file(a, &prov_back);
  if (!(back == s) || prov_back != provenance) __builtin_trap();
  write_factors_file(b, back, prov_back);
  if (read_text(a) != read_text(b)) __builtin_trap();
  std::remove(a.c_str());
  std::remove(b.c_str());
}

#if !LONGROPE_FUZZ_HF_CONFIG
void write_bytes(const std::string& path, const uint8_t* data, size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!f) __builtin_trap();
}

#endif

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  json j;
  bool parsed = true;
  try {
    j = json::parse(data, data + size);
  } catch (const json::exception&) {
    parsed = false;
  }
#if LONGROPE_FUZZ_HF_CONFIG
  if (!parsed) return 0;
  RopeScaling s;
  try {
    s = rope_from_hf_config(j, "fuzz config.json");
  } catch (const Error&) {
    return 0;
  }
  exercise(s);
  round_trip(s, json());
#else
  // The file reader must agree with parse + factors_from_json, and fail only with Error.
  const std::string& in = scratch_path(0);
  write_bytes(in, data, size);
  bool read_ok = true;
  json file_prov;
  RopeScaling from_file;
  try {
    from_file = read_factors_file(in, &file_prov);
  } catch (const Error&) {
    read_ok = false;
  }
  std::remove(in.c_str());
  if (!parsed) {
    if (read_ok) __builtin_trap();
    return 0;
  }
  json prov;
  RopeScaling s;
  try {
    s = factors_from_json(j, "fuzz factors JSON", &prov);
  } catch (const Error&) {
    if (read_ok) __builtin_trap();
    return 0;
  }
  if (!read_ok || !(from_file == s) || file_prov != prov) __builtin_trap();
  exercise(s);
  round_trip(s, prov);
#endif
  return 0;
}
