// Stop-on-signal flag (include/longrope/interrupt.h).
#include "longrope/interrupt.h"

#include <unistd.h>

#include <atomic>
#include <csignal>

namespace longrope {

namespace {

std::atomic<bool> g_stop{false};

extern "C" void on_stop_signal(int) {
  if (g_stop.exchange(true)) _exit(130);  // the second signal: now
  static const char msg[] =
      "\nstopping after the running evaluation or training step (saving the checkpoint); signal "
      "again to quit at once\n";
  const ssize_t n = write(STDERR_FILENO, msg, sizeof msg - 1);
  (void)n;
}

}  // namespace

bool stop_requested() {
  return g_stop.load();
}
void request_stop() {
  g_stop.store(true);
}
void clear_stop() {
  g_stop.store(false);
}

StopOnSignal::StopOnSignal() {
  clear_stop();
  old_int_ = std::signal(SIGINT, on_stop_signal);
  old_term_ = std::signal(SIGTERM, on_stop_signal);
}

StopOnSignal::~StopOnSignal() {
  std::signal(SIGINT, old_int_ == SIG_ERR ? SIG_DFL : old_int_);
  std::signal(SIGTERM, old_term_ == SIG_ERR ? SIG_DFL : old_term_);
}

}  // namespace longrope
