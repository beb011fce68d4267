// libFuzzer target: arbitrary bytes as a llama2.c checkpoint or tokenizer.bin. The first byte
// picks the parser; for the tokenizer the next two give the vocabulary size. Parsing must either
// succeed (every tensor byte then lies inside the input or an owned buffer) or throw Error.
#include <cstdint>
#include <cstring>

#include "longrope/error.h"
#include "longrope/llama2c.h"

using namespace longrope;

namespace {
volatile uint64_t g_sink;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  ++data;
  --size;
  try {
    if ((mode & 1) == 0) {
      const bool detected = llama2c_detect(data, size);
      Llama2cCheckpoint ck = parse_llama2c(data, size, "fuzz.bin");
      if (!detected && ck.config.version == 0) __builtin_trap();  // parsed but not detected
      for (const auto& t : ck.tensors) {
        if (t.nbytes != static_cast<size_t>(t.nelements()) * 4) __builtin_trap();
        if (t.nbytes) g_sink = g_sink + t.data[0] + t.data[t.nbytes - 1];
      }
    } else {
      if (size < 2) return 0;
      const int n_vocab = (data[0] | data[1] << 8) % 4096 + 1;
      VocabSpec v = parse_llama2c_tokenizer(data + 2, size - 2, n_vocab, "fuzz_tok.bin");
      if (v.tokens.size() != static_cast<size_t>(n_vocab) || v.scores.size() != v.tokens.size() ||
          v.types.size() != v.tokens.size()) {
        __builtin_trap();
      }
      for (const auto& t : v.tokens) g_sink = g_sink + t.size();
    }
  } catch (const Error&) {
  }
  return 0;
}
