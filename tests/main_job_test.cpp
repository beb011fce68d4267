// The main job's closing summary (scripts/main_summary.py, step 5 of scripts/main.sh) on the
// files the job writes: the searched set against each rule on the held-out text, and the exported
// GGUF's perplexity beside the searched set's, with the difference stated rather than "equal".
#include <fmt/core.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "test_paths.h"

namespace longrope {
namespace {

namespace fs = std::filesystem;

TEST(MainJob, SummaryComparesTheSearchedSetWithEachRuleAndTheExport) {
  const fs::path d = test::fresh_temp_dir("main_summary");
  const test::RemoveOnExit clean{d};
  fs::create_directories(d / "eval");
  std::ofstream(d / "f.json") << R"({"max_position_embeddings": 16384, "n_hat": 4,
    "attention_factor": 1.07, "provenance": {"best_ppl": 20.5,
    "evaluations": {"full": 10, "partial": 3}}})";
  std::ofstream(d / "eval" / "results.json") << R"({"kind": "perplexity", "version": 1, "cells": [
    {"label": "none", "length": 16384, "ppl": 80.0, "key": {"texts": ["moby-dick.txt"]}},
    {"label": "yarn", "length": 16384, "ppl": 40.0, "key": {"texts": ["moby-dick.txt"]}},
    {"label": "searched", "length": 16384, "ppl": 36.0, "key": {"texts": ["moby-dick.txt"]}}]})";
  std::ofstream(d / "ppl.json") << R"({"model": "out.gguf", "ppl": 36.036})";
  std::string out;
  ASSERT_EQ(
      test::run_command(
          fmt::format("python3 '{}' '{}' '{}' '{}' cfg.json",
                      (test::source_dir() / "scripts" / "main_summary.py").string(),
                      (d / "f.json").string(), (d / "eval").string(), (d / "ppl.json").string()),
          &out),
      0)
      << out;
  EXPECT_NE(out.find("10 full + 3 partial evaluations"), std::string::npos) << out;
  EXPECT_NE(out.find("searched is -55.0% against it"), std::string::npos) << out;  // none
  EXPECT_NE(out.find("searched is -10.0% against it"), std::string::npos) << out;  // yarn
  EXPECT_NE(out.find("+0.100% against the searched set"), std::string::npos) << out;
  EXPECT_NE(out.find("n_hat 4 becomes 0"), std::string::npos) << out;
  EXPECT_EQ(out.find("equal"), std::string::npos) << out;
}

}  // namespace
}  // namespace longrope
