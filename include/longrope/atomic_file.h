// One way to write an output file: never a half-written file under the real name. The bytes go to
// a temporary file in the same folder (".NAME.tmp"), are flushed to disk (fsync), and the
// temporary is renamed over NAME; on any failure it is removed and Error (one line, naming the
// path and the reason) is thrown. A temporary left by a killed earlier run is replaced.
#pragma once
#include <cstdio>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "longrope/error.h"

namespace longrope {

// The temporary file name used for path (same folder).
std::string atomic_temp_path(const std::string& path);

// Writes data to path atomically.
void write_file_atomically(const std::string& path, std::string_view data);

// Streams into path atomically: write(f, tmp_path) writes to the open temporary file (it may
// throw; the temporary is then removed).
void write_file_atomically(const std::string& path,
                           const std::function<void(std::FILE*, const std::string&)>& write);

// Renames a finished temporary (written by a library that takes a file name, e.g. PLplot) over
// path after an fsync; removes it and throws on failure.
void commit_temp_file(const std::string& tmp, const std::string& path);

// Throws Error unless path is a regular file or a new name (not a folder, device or pipe) and a
// file can be created next to it (checked by creating and removing the temporary): lets a
// command fail before it has done any work.
void check_writable(const std::string& path);

// --- The output guard: nothing a user owns is overwritten ---------------------------------------
// A refusal before any work (the CLI exits 2, like a usage error).
class OutputRefused : public Error {
 public:
  using Error::Error;
};
// Throws OutputRefused when `out` is one of `inputs` (the same file through any path, symbolic
// or hard link; empty names are skipped). `command` starts the message.
void refuse_output_over_inputs(const std::string& command, const std::string& out,
                               const std::vector<std::string>& inputs);
// Throws OutputRefused when `state` (an earlier run's checkpoint or training state: hours of
// work) exists and the run neither resumes nor overwrites it; `flag` names the option that starts
// anew (e.g. "--overwrite").
void refuse_existing_state(const std::string& command, const std::string& state, bool resume,
                           bool overwrite);

}  // namespace longrope
