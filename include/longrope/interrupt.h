// Ctrl-C and SIGTERM during long work. While a StopOnSignal is alive, the first SIGINT/SIGTERM
// only sets a flag that the running command checks at safe points (after each evaluation): it
// then saves what it has and throws Interrupted. A second signal ends the process at once
// (exit status 130).
#pragma once
#include <string>

#include "longrope/error.h"

namespace longrope {

class Interrupted : public Error {
 public:
  explicit Interrupted(const std::string& what) : Error(what) {}
};

bool stop_requested();
void request_stop();  // what the handler does; tests call it to interrupt at a chosen point
void clear_stop();

class StopOnSignal {
 public:
  StopOnSignal();   // installs the handlers and clears the flag
  ~StopOnSignal();  // restores the previous handlers
  StopOnSignal(const StopOnSignal&) = delete;
  StopOnSignal& operator=(const StopOnSignal&) = delete;

 private:
  void (*old_int_)(int) = nullptr;
  void (*old_term_)(int) = nullptr;
};

}  // namespace longrope
