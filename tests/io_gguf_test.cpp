// GgufFile / GgufWriter: the stories260K file, a full round trip, every value type, and a
// catalogue of malformed inputs that must give a clear Error (never a crash).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/gguf.h"
#include "longrope/quant.h"
#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;
using test::expect_error;
using test::read_bytes;
using test::stories_gguf;

// Little-endian byte builder for hand-made GGUF images.
struct Bytes {
  std::vector<uint8_t> b;
  template <class T>
  Bytes& put(T v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    b.insert(b.end(), p, p + sizeof v);
    return *this;
  }
  Bytes& str(const std::string& s) {
    put<uint64_t>(s.size());
    b.insert(b.end(), s.begin(), s.end());
    return *this;
  }
  Bytes& header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    b.insert(b.end(), {'G', 'G', 'U', 'F'});
    put<uint32_t>(version).put<uint64_t>(n_tensors).put<uint64_t>(n_kv);
    return *this;
  }
  Bytes& pad_to(size_t a) {
    while (b.size() % a) b.push_back(0);
    return *this;
  }
};

// Runs f, expects an Error whose message contains want.
void expect_bad(const std::vector<uint8_t>& bytes, const std::string& want) {
  expect_error([&] { GgufFile::from_memory(bytes, "bad.gguf"); }, want);
}

// A small valid file: two keys and one F32 tensor [4, 2].
Bytes small_file() {
  Bytes x;
  x.header(1, 2);
  x.str("general.architecture").put<uint32_t>(8).str("llama");
  x.str("n").put<uint32_t>(4).put<uint32_t>(7);
  x.str("t").put<uint32_t>(2).put<uint64_t>(4).put<uint64_t>(2).put<uint32_t>(0).put<uint64_t>(0);
  x.pad_to(32);
  for (int k = 0; k < 8; ++k) x.put<float>(static_cast<float>(k));
  return x;
}

TEST(IoGguf, StoriesHeaderKeysAndTensors) {
  LONGROPE_REQUIRE_FILE(stories_gguf());
  auto g = GgufFile::open(stories_gguf().string());
  EXPECT_EQ(g->version(), 3u);
  EXPECT_EQ(g->alignment(), 32u);
  EXPECT_EQ(g->metadata().size(), 18u);
  EXPECT_EQ(g->tensors().size(), 47u);
  EXPECT_EQ(g->size(), fs::file_size(stories_gguf()));
  EXPECT_EQ(g->data_offset() % 32, 0u);
  EXPECT_EQ(g->get<std::string>("general.architecture"), "llama");
  EXPECT_EQ(g->get<uint32_t>("llama.context_length"), 512u);
  EXPECT_EQ(g->get<uint32_t>("llama.embedding_length"), 64u);
  EXPECT_EQ(g->get<uint32_t>("llama.block_count"), 5u);
  EXPECT_EQ(g->get<uint32_t>("llama.attention.head_count_kv"), 4u);
  EXPECT_FLOAT_EQ(g->get<float>("llama.rope.freq_base"), 10000.0f);
  EXPECT_EQ(g->get_int("llama.feed_forward_length"), 172);
  EXPECT_DOUBLE_EQ(g->get_number("llama.context_length"), 512.0);
  EXPECT_FALSE(g->get_opt<uint32_t>("llama.no_such_key").has_value());
  EXPECT_FALSE(g->get_int_opt("llama.no_such_key").has_value());
  const auto& toks = g->get_string_array("tokenizer.ggml.tokens");
  ASSERT_EQ(toks.size(), 512u);
  EXPECT_EQ(toks[0], "<unk>");
  EXPECT_EQ(toks[1], "<s>");
  EXPECT_EQ(toks[3], "<0x00>");
  EXPECT_EQ(g->get_array_size("tokenizer.ggml.scores"), 512u);
  EXPECT_EQ(g->get_float_array("tokenizer.ggml.scores").size(), 512u);
  const auto types = g->get_int_array("tokenizer.ggml.token_type");
  ASSERT_EQ(types.size(), 512u);
  EXPECT_EQ(types[0], 2);
  EXPECT_EQ(types[1], 3);
  EXPECT_EQ(types[3], 6);

  expect_error([&] { g->get<std::string>("llama.context_length"); },
               "key llama.context_length has type u32, expected string");
  expect_error([&] { g->get<uint32_t>("tokenizer.ggml.tokens"); },
               "key tokenizer.ggml.tokens has type array of string, expected u32");
  expect_error([&] { g->get_opt<float>("llama.context_length"); }, "has type u32, expected f32");
  expect_error([&] { g->get_int("general.architecture"); }, "has type string, expected an integer");
  expect_error([&] { g->get_float_array("tokenizer.ggml.tokens"); },
               "has type array of string, expected array of f32");
  expect_error([&] { g->get_string_array("tokenizer.ggml.scores"); },
               "has type array of f32, expected array of string");
  expect_error([&] { g->get<uint32_t>("nope"); }, "key nope not found");

  const GgufTensorInfo* emb = g->find_tensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->type, 0u);
  EXPECT_EQ(emb->ne, (std::vector<int64_t>{64, 512}));
  EXPECT_EQ(emb->nbytes, 64u * 512 * 4);
  EXPECT_EQ(emb->data, g->bytes() + g->data_offset() + emb->offset);
  const GgufTensorInfo* k = g->find_tensor("blk.4.attn_k.weight");
  ASSERT_NE(k, nullptr);
  EXPECT_EQ(k->ne, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(g->find_tensor("output.weight"), nullptr);  // tied embeddings
  for (const auto& t : g->tensors()) {
    EXPECT_LE(t.data + t.nbytes, g->bytes() + g->size()) << t.name;
  }
}

TEST(IoGguf, StoriesRoundTripIsIdentical) {
  LONGROPE_REQUIRE_FILE(stories_gguf());
  std::shared_ptr<const GgufFile> g = GgufFile::open(stories_gguf().string());
  GgufWriter w;
  w.copy_from(g);
  const auto bytes = w.to_bytes();
  auto back = GgufFile::from_memory(bytes, "copy.gguf");
  ASSERT_EQ(back->metadata().size(), g->metadata().size());
  for (size_t k = 0; k < g->metadata().size(); ++k) {
    EXPECT_EQ(back->metadata()[k].key, g->metadata()[k].key);
    EXPECT_TRUE(back->metadata()[k].value == g->metadata()[k].value) << g->metadata()[k].key;
  }
  ASSERT_EQ(back->tensors().size(), g->tensors().size());
  for (size_t k = 0; k < g->tensors().size(); ++k) {
    const auto& a = g->tensors()[k];
    const auto& b = back->tensors()[k];
    EXPECT_EQ(a.name, b.name);
    EXPECT_EQ(a.type, b.type);
    EXPECT_EQ(a.ne, b.ne);
    EXPECT_EQ(a.offset, b.offset);
    ASSERT_EQ(a.nbytes, b.nbytes);
    EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes), 0) << a.name;
  }
  // The writer lays the file out the way ggml does: byte-identical to the original.
  EXPECT_EQ(bytes, read_bytes(stories_gguf()));

  // Through a file, with a changed key and a replaced tensor.
  const fs::path dir =
      fs::temp_directory_path() / ("longrope_io_gguf_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  w.set_u32("llama.context_length", 1024);
  w.set_string("general.name", "changed");
  std::vector<float> norm(64, 0.5f);
  std::vector<uint8_t> raw(64 * 4);
  std::memcpy(raw.data(), norm.data(), raw.size());
  w.add_tensor("output_norm.weight", 0, {64}, raw);
  EXPECT_TRUE(w.remove("general.name"));
  w.set_string("general.name", "changed");
  w.write((dir / "out.gguf").string());
  auto f = GgufFile::open((dir / "out.gguf").string());
  EXPECT_EQ(f->get<uint32_t>("llama.context_length"), 1024u);
  EXPECT_EQ(f->get<std::string>("general.name"), "changed");
  EXPECT_EQ(f->metadata().back().key, "general.name");
  const auto* on = f->find_tensor("output_norm.weight");
  ASSERT_NE(on, nullptr);
  float v;
  std::memcpy(&v, on->data, 4);
  EXPECT_EQ(v, 0.5f);
  EXPECT_EQ(f->tensors().size(), 47u);
  EXPECT_FALSE(fs::exists(dir / "out.gguf.tmp"));
  fs::remove_all(dir);
}

TEST(IoGguf, EveryValueTypeRoundTrips) {
  GgufWriter w;
  w.set("u8", GgufValue::make_u8(200));
  w.set("i8", GgufValue::make_i8(-100));
  w.set("u16", GgufValue::make_u16(60000));
  w.set("i16", GgufValue::make_i16(-30000));
  w.set("u32", GgufValue::make_u32(4000000000u));
  w.set("i32", GgufValue::make_i32(-2000000000));
  w.set("f32", GgufValue::make_f32(1.25f));
  w.set("bool", GgufValue::make_bool(true));
  w.set("string", GgufValue::make_string(std::string("a\0b", 3)));
  w.set("u64", GgufValue::make_u64(18000000000000000000ull));
  w.set("i64", GgufValue::make_i64(-9000000000000000000ll));
  w.set("f64", GgufValue::make_f64(-2.5e300));
  w.set("arr.str", GgufValue::make_string_array({"x", "", "yz"}));
  w.set("arr.f32", GgufValue::make_f32_array({1.0f, -2.0f}));
  w.set("arr.i32", GgufValue::make_i32_array({-1, 2, 3}));
  w.set("arr.u32", GgufValue::make_u32_array({}));
  std::vector<uint8_t> u64raw(16, 0xff);
  w.set("arr.u64", GgufValue::make_packed_array(GgufType::U64, u64raw));
  w.set("arr.bool", GgufValue::make_packed_array(GgufType::BOOL, {1, 0, 1}));
  w.set("arr.f64", GgufValue::make_packed_array(GgufType::F64, std::vector<uint8_t>(8, 0)));
  w.set("arr.nested", GgufValue::make_array_of_arrays(
                          {GgufValue::make_i32_array({1, 2}), GgufValue::make_string_array({"q"}),
                           GgufValue::make_array_of_arrays({GgufValue::make_f32_array({3.0f})})}));
  w.set_u32("general.alignment", 64);
  std::vector<uint8_t> t1(18 * 2, 0x11), t2(3 * 2, 0x22);
  w.add_tensor("q", 2, {64, 1}, t1);
  w.add_tensor("h", 1, {3}, t2);
  const auto bytes = w.to_bytes();
  auto g = GgufFile::from_memory(bytes);
  ASSERT_EQ(g->metadata().size(), w.metadata().size());
  for (size_t k = 0; k < w.metadata().size(); ++k) {
    EXPECT_EQ(g->metadata()[k].key, w.metadata()[k].key);
    EXPECT_TRUE(g->metadata()[k].value == w.metadata()[k].value) << w.metadata()[k].key;
  }
  EXPECT_EQ(g->alignment(), 64u);
  EXPECT_EQ(g->data_offset() % 64, 0u);
  EXPECT_EQ(g->get<uint8_t>("u8"), 200);
  EXPECT_EQ(g->get<int8_t>("i8"), -100);
  EXPECT_EQ(g->get<uint16_t>("u16"), 60000);
  EXPECT_EQ(g->get<int16_t>("i16"), -30000);
  EXPECT_EQ(g->get<uint32_t>("u32"), 4000000000u);
  EXPECT_EQ(g->get<int32_t>("i32"), -2000000000);
  EXPECT_EQ(g->get<float>("f32"), 1.25f);
  EXPECT_EQ(g->get<bool>("bool"), true);
  EXPECT_EQ(g->get<std::string>("string"), std::string("a\0b", 3));
  EXPECT_EQ(g->get<uint64_t>("u64"), 18000000000000000000ull);
  EXPECT_EQ(g->get<int64_t>("i64"), -9000000000000000000ll);
  EXPECT_EQ(g->get<double>("f64"), -2.5e300);
  EXPECT_EQ(g->get_int("u8"), 200);
  EXPECT_EQ(g->get_int("i64"), -9000000000000000000ll);
  expect_error([&] { g->get_int("u64"); }, "out of range");
  EXPECT_EQ(g->get_int_array("arr.i32"), (std::vector<int64_t>{-1, 2, 3}));
  EXPECT_EQ(g->get_float_array("arr.f32"), (std::vector<float>{1.0f, -2.0f}));
  EXPECT_EQ(g->get_float_array("arr.f64"), (std::vector<float>{0.0f}));
  EXPECT_TRUE(g->get_int_array("arr.u32").empty());
  expect_error([&] { g->get_int_array("arr.u64"); }, "out of range");
  EXPECT_EQ(g->get_string_array("arr.str"), (std::vector<std::string>{"x", "", "yz"}));
  const GgufValue& nested = g->at("arr.nested");
  ASSERT_EQ(nested.items.size(), 3u);
  EXPECT_EQ(nested.items[2].items[0].number_at(0), 3.0);
  EXPECT_EQ(nested.to_string(), "[[1, 2], [\"q\"], [[3]]]");
  EXPECT_EQ(g->at("arr.str").to_string(2), "[\"x\", \"\", ... (3 items)]");
  ASSERT_EQ(g->tensors().size(), 2u);
  EXPECT_EQ(g->tensors()[1].offset, 64u);
  EXPECT_EQ(g->tensors()[1].data[0], 0x22);
  EXPECT_EQ(ggml_type_name(g->tensors()[0].type), "Q4_0");
}

TEST(IoGguf, WriterRejectsInconsistentInput) {
  GgufWriter w;
  expect_error([&] { w.add_tensor("t", 0, {4}, std::vector<uint8_t>(15)); }, "expected 16");
  expect_error([&] { w.add_tensor("t", 2, {16}, std::vector<uint8_t>(9)); },
               "expected a multiple of 32");
  expect_error([&] { w.add_tensor("t", 77, {4}, std::vector<uint8_t>(4)); },
               "unknown ggml type 77");
  expect_error([&] { w.add_tensor("t", 0, {-1}, std::vector<uint8_t>(4)); }, "invalid shape");
  expect_error([&] { w.set_u32("general.alignment", 24); }, "power of two");
  expect_error([&] { GgufValue::make_packed_array(GgufType::STRING, {}); }, "cannot be packed");
  GgufValue bad = GgufValue::make_i32_array({1, 2});
  bad.count = 5;
  w.set("bad", bad);
  expect_error([&] { w.to_bytes(); }, "has count 5 but 2 elements");
}

TEST(IoGguf, SmallFileParses) {
  auto g = GgufFile::from_memory(small_file().b);
  EXPECT_EQ(g->get<uint32_t>("n"), 7u);
  ASSERT_EQ(g->tensors().size(), 1u);
  float v;
  std::memcpy(&v, g->tensors()[0].data + 4 * 7, 4);
  EXPECT_EQ(v, 7.0f);
  EXPECT_EQ(g->tensors()[0].nelements(), 8);
}

TEST(IoGguf, BadMagicVersionAndEmpty) {
  expect_bad({}, "file is empty");
  expect_bad({'G', 'G'}, "bad magic");
  expect_bad({'G', 'G', 'U', 'X', 3, 0, 0, 0}, "bad magic (expected the bytes \"GGUF\"");
  expect_bad(Bytes().header(0, 0, 1).b,
             "GGUF version 1 is not supported (expected version 2 or 3)");
  expect_bad(Bytes().header(0, 0, 4).b, "unsupported GGUF version 4");
  expect_bad(Bytes().header(0, 0, 0x03000000).b, "big-endian");
  EXPECT_NO_THROW(GgufFile::from_memory(Bytes().header(0, 0, 2).b));
  EXPECT_NO_THROW(GgufFile::from_memory(Bytes().header(0, 0, 3).b));
}

TEST(IoGguf, EveryTruncationIsAnError) {
  const auto full = small_file().b;
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + static_cast<long>(n));
    try {
      GgufFile::from_memory(cut);
      ADD_FAILURE() << "prefix of " << n << " bytes parsed";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_TRUE(m.find("truncated") != std::string::npos ||
                  m.find("beyond the end") != std::string::npos ||
                  m.find("remain") != std::string::npos || m.find("empty") != std::string::npos ||
                  m.find("magic") != std::string::npos)
          << n << ": " << m;
    }
  }
}

TEST(IoGguf, StoriesTruncatedAtSeveralPoints) {
  LONGROPE_REQUIRE_FILE(stories_gguf());
  const auto full = read_bytes(stories_gguf());
  const struct {
    size_t n;
    const char* want;
  } cases[] = {
      {10, "truncated at byte 8 while reading the tensor count"},
      {24, "claims 18 metadata keys but only 0 bytes remain"},
      {1000, "claims 47 tensors but only 976 bytes remain"},
      {5000,
       "truncated at byte 4996 while reading the length of the value of key tokenizer.ggml.tokens"},
      {8000, "key tokenizer.ggml.scores claims 512 elements of type f32"},
      {13000, "truncated at byte 12996 while reading the length of the name of tensor #29"},
      {14045, "tensor data section would start at byte 14048"},
      {14100, "tensor token_embd.weight data [0, 0+131072) extends beyond the end"},
      {500000, "extends beyond the end of the file"},
      {full.size() - 1, "tensor output_norm.weight data"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.n);
    expect_bad(std::vector<uint8_t>(full.begin(), full.begin() + static_cast<long>(c.n)), c.want);
  }
}

TEST(IoGguf, HugeCountsAndLengths) {
  // n_kv / n_tensors far beyond the file.
  expect_bad(Bytes().header(0, 1ull << 60).b, "claims 1152921504606846976 metadata keys");
  expect_bad(Bytes().header(~0ull, 0).b, "tensors but only 0 bytes remain");
  // A key whose length is 2^63.
  Bytes k;
  k.header(0, 1).put<uint64_t>(1ull << 63).put<uint32_t>(0).put<uint32_t>(0);
  expect_bad(k.b, "claims 9223372036854775808 bytes but only");
  // A string value of 2^40 bytes.
  Bytes s;
  s.header(0, 1).str("k").put<uint32_t>(8).put<uint64_t>(1ull << 40).put<uint32_t>(0);
  expect_bad(s.b, "the value of key k at byte");
  // Arrays of 2^62 elements, of each element kind.
  for (uint32_t et : {0u, 6u, 8u, 9u, 12u}) {
    Bytes a;
    a.header(0, 1).str("arr").put<uint32_t>(9).put<uint32_t>(et).put<uint64_t>(1ull << 62);
    expect_bad(a.b, "key arr claims 4611686018427387904 elements");
  }
  // Nested arrays deeper than the limit.
  Bytes d;
  d.header(0, 1).str("deep").put<uint32_t>(9);
  for (int k2 = 0; k2 < 40; ++k2) d.put<uint32_t>(9).put<uint64_t>(1);
  d.put<uint32_t>(0).put<uint64_t>(0);
  expect_bad(d.b, "nested more than 16 deep");
}

TEST(IoGguf, BadTypesAndShapes) {
  Bytes unknown_value;
  unknown_value.header(0, 1).str("k").put<uint32_t>(13).put<uint32_t>(0);
  expect_bad(unknown_value.b, "key k has unknown value type 13");
  Bytes unknown_elem;
  unknown_elem.header(0, 1).str("k").put<uint32_t>(9).put<uint32_t>(99).put<uint64_t>(0);
  expect_bad(unknown_elem.b, "key k is an array of unknown type 99");

  auto tensor_file = [](uint32_t n_dims, std::vector<uint64_t> dims, uint32_t type, uint64_t offset,
                        size_t data_bytes) {
    Bytes x;
    x.header(1, 0).str("w").put<uint32_t>(n_dims);
    for (uint64_t d : dims) x.put<uint64_t>(d);
    x.put<uint32_t>(type).put<uint64_t>(offset).pad_to(32);
    x.b.resize(x.b.size() + data_bytes);
    return x.b;
  };
  EXPECT_NO_THROW(GgufFile::from_memory(tensor_file(2, {4, 2}, 0, 0, 32)));
  expect_bad(tensor_file(2, {4, 2}, 0, 0, 31), "tensor w data [0, 0+32) extends beyond the end");
  expect_bad(tensor_file(2, {4, 2}, 0, 32, 63), "extends beyond the end of the file");
  expect_bad(tensor_file(2, {4, 2}, 0, 16, 64), "has data offset 16 (expected a multiple of 32)");
  expect_bad(tensor_file(1, {4}, 0, ~0ull - 31, 64), "extends beyond the end");
  expect_bad(tensor_file(5, {1, 1, 1, 1, 1}, 0, 0, 0),
             "tensor w has 5 dimensions (expected at most 4)");
  expect_bad(tensor_file(2, {1ull << 40, 1ull << 40}, 0, 0, 0), "overflows 64 bits");
  expect_bad(tensor_file(1, {1ull << 63 | 1}, 0, 0, 0), "has dimension");
  expect_bad(tensor_file(1, {1ull << 62}, 0, 0, 0), "too large");
  expect_bad(tensor_file(1, {4}, 77, 0, 64), "tensor w has unknown ggml type 77");
  expect_bad(tensor_file(1, {48}, 2, 0, 64),
             "rows of 48 elements of type Q4_0 (expected a multiple of 32)");
  // An IQ type is known (sized) even though it cannot be dequantized.
  EXPECT_NO_THROW(GgufFile::from_memory(tensor_file(1, {256}, 16, 0, 66)));

  Bytes dup;
  dup.header(0, 2)
      .str("k")
      .put<uint32_t>(4)
      .put<uint32_t>(1)
      .str("k")
      .put<uint32_t>(4)
      .put<uint32_t>(2);
  expect_bad(dup.b, "duplicate key k");
  Bytes dupt;
  dupt.header(2, 0);
  for (int k = 0; k < 2; ++k)
    dupt.str("t").put<uint32_t>(1).put<uint64_t>(1).put<uint32_t>(0).put<uint64_t>(0);
  dupt.pad_to(32).put<float>(0);
  expect_bad(dupt.b, "duplicate tensor t");

  Bytes align_type;
  align_type.header(0, 1).str("general.alignment").put<uint32_t>(5).put<int32_t>(32);
  expect_bad(align_type.b, "key general.alignment has type i32, expected u32");
  Bytes align_val;
  align_val.header(0, 1).str("general.alignment").put<uint32_t>(4).put<uint32_t>(48);
  expect_bad(align_val.b, "general.alignment is 48 (expected a power of two)");
}

}  // namespace
}  // namespace longrope
