// One exception type for every user-facing failure: a bad file, flag or input.
// The message is one line: what went wrong, where, and what was expected.
#pragma once
#include <stdexcept>
#include <string>

namespace longrope {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace longrope
