// Helpers shared by the subcommands: model loading with a status line, text files, progress.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "longrope/model.h"

namespace longrope::cli {

// Loads a model, printing what was loaded (and how long it took) on stderr.
std::shared_ptr<const Model> load_model_verbose(const std::string& path,
                                                const std::string& tokenizer_path, int threads);
// Whole file as bytes; throws Error naming the file when it cannot be read or is empty.
std::string read_text_file(const std::string& path);

// A one-line progress bar on stderr (only when stderr is a terminal or `force` is set):
// "label [#####.....] done/total  extra  ETA 12s".
class Progress {
 public:
  Progress(std::string label, int64_t total, bool enabled);
  void update(int64_t done, const std::string& extra = "");
  void finish();

 private:
  std::string label_;
  int64_t total_;
  bool enabled_;
  double start_;
};

}  // namespace longrope::cli
