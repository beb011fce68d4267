// The CLI's flag vocabulary: every flag that more than one command takes is declared here, once,
// with its name, help and checks, and attached to the commands that take it (docs/cli.md lists
// the vocabulary). Names mean one thing everywhere:
//   -m/--model MODEL, --tokenizer FILE     the model (GGUF, llama2.c checkpoint, HF folder)
//   -f/--file TEXT[,TEXT]                  text files
//   -c/--ctx N                             one context length (a window, a sequence, a target)
//   --lengths N[,N...]                     a list of lengths (a sweep)
//   --orig-ctx N                           the original (trained) context L_orig
//   --methods M[,M...]                     RoPE methods and factors files of a sweep
//   -o/--output FILE                       one output file
//   -O/--out-dir DIR                       an output directory
//   --n-hat N                              one number of start tokens (search: --n-hat-candidates)
// Old spellings stay for one release as hidden aliases that print a deprecation line.
#pragma once
#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "longrope/error.h"
#include "longrope/eval.h"

namespace longrope::cli {

// A flag combination a command refuses after parsing: reported like CLI11's own usage errors
// ("error: ... (see longrope CMD --help)", exit code 2).
class UsageError : public Error {
 public:
  UsageError(const std::string& cmd, const std::string& what) : Error(what), cmd(cmd) {}
  std::string cmd;
};

// Runs f; a longrope::Error it throws (a malformed flag value found after parsing: --lengths,
// --methods, --depths) becomes a UsageError of `cmd` (exit 2).
template <class F>
void as_usage_error(const std::string& cmd, F&& f) {
  try {
    f();
  } catch (const UsageError&) {
    throw;
  } catch (const Error& e) {
    throw UsageError(cmd, e.what());
  }
}

// --resume without -O DIR: a UsageError of cmd (the results to resume are in DIR).
void check_resume_has_out_dir(const std::string& cmd, bool resume, const std::string& out_dir);

// The largest context length any command accepts (tokens).
inline constexpr int64_t kMaxContext = int64_t(1) << 24;

// A flag check with a readable message: "--temp: -1 is not in [0, 100]" (CLI11's Range prints
// its bounds as %f, and PositiveNumber as DBL_MAX in full).
CLI::Validator in_range(double lo, double hi);

// -m/--model (required unless told) and --tokenizer. model_help replaces the default help of -m.
void add_model_flags(CLI::App* cmd, std::string& model, std::string& tokenizer,
                     const std::string& model_help = "", bool required = true);
// -f/--file TEXT[,TEXT...] (required): the text files of a command that reads several.
void add_texts_option(CLI::App* cmd, std::vector<std::string>& texts, const std::string& help);
// -c/--ctx N in [min_ctx, kMaxContext]; the caller states what the length is.
CLI::Option* add_ctx_option(CLI::App* cmd, int64_t& ctx, const std::string& help,
                            int64_t min_ctx = 2);
// --lengths LIST ("512,1k,4k"; parsed by parse_lengths after the flags).
CLI::Option* add_lengths_option(CLI::App* cmd, std::string& lengths, const std::string& help);
// --orig-ctx N in [1, kMaxContext], handed to set.
CLI::Option* add_orig_ctx_option(CLI::App* cmd, std::function<void(int64_t)> set,
                                 const std::string& help);
// --methods LIST: none, linear, ntk, dynamic, yarn, llama3, longrope=F.json, LABEL=F.json,
// LABEL=METHOD (the syntax is checked after the flags: parse_method_specs).
void add_methods_option(CLI::App* cmd, std::vector<std::string>& methods,
                        const std::string& default_list = "none");
// After parsing: the --methods list (default_list when not given, comma-separated), its syntax
// checked (a UsageError of cmd), and the --lengths list (likewise).
std::vector<std::string> methods_flag(const std::string& cmd, const std::vector<std::string>& given,
                                      const std::string& default_list = "none");
std::vector<int64_t> lengths_flag(const std::string& cmd, const std::string& given);
// -O/--out-dir DIR, with -o/--output as a deprecated alias (these commands took -o DIR before).
void add_out_dir_option(CLI::App* cmd, std::string& dir, const std::string& help);

// A deprecation line on stderr (rank 0 only): "warning: CMD OLD is deprecated; use NEW (...)".
void warn_deprecated(const CLI::App* cmd, const std::string& old_name, const std::string& new_name);
// A hidden option old_name that sets target like new_name does and prints a deprecation line.
template <class T>
CLI::Option* add_deprecated_alias(CLI::App* cmd, const std::string& old_name,
                                  const std::string& new_name, T& target) {
  return cmd
      ->add_option_function<T>(
          old_name,
          [cmd, old_name, new_name, &target](const T& v) {
            warn_deprecated(cmd, old_name, new_name);
            target = v;
          },
          "deprecated spelling of " + new_name)
      ->group("");
}

// --compute auto|f32|bf16 (the arithmetic of prompt processing, scoring and attention).
void add_compute_flag(CLI::App* cmd, std::string& value);
// A --no-X flag that sets `on` to false, shown in the help without CLI11's "{false}".
void add_off_flag(CLI::App* cmd, const std::string& name, bool& on, const std::string& help);
// --no-progress (sets progress to false).
void add_no_progress_flag(CLI::App* cmd, bool& progress);
// -t/--threads, checked to [0, 1024] (0 = all cores; with MPI, the cores shared among the ranks
// of a host).
void add_threads_option(CLI::App* cmd, int& threads);
// --overwrite: replace an earlier run's state or results that the command otherwise refuses to
// touch (the output guard, include/longrope/atomic_file.h); the help says what it replaces.
void add_overwrite_flag(CLI::App* cmd, bool& overwrite, const std::string& help);
// --convention longrope|llama.cpp (include/longrope/perplexity.h's WindowConvention): how windows
// are cut from a text and which tokens are scored.
void add_convention_flag(CLI::App* cmd, std::string& value);
// --deploy longrope|llama.cpp|transformers|vllm (where a factors file will run; see
// DeployTarget), default longrope, with the command's own help text.
void add_deploy_flag(CLI::App* cmd, std::string& value, const std::string& help);
// The rule-based methods' scale and the deployment of factors files, as eval and passkey take
// them: --orig-ctx, --rope-factor, --deploy and --deploy-ctx, declared once.
struct ScaleFlags {
  int64_t orig_ctx = 0;
  double rope_factor = 0;
  std::string deploy = "longrope";
  int64_t deploy_ctx = 0;
};
void add_scale_flags(CLI::App* cmd, ScaleFlags& f);
ScaleOptions scale_options(const ScaleFlags& f);

}  // namespace longrope::cli
