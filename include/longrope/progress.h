// Progress on stderr for long work (search, sweeps, fine-tuning, long prompts), and the ETA it
// shows. One bar per piece of work: "label [#####.....] done/total unit  extra  ETA 12s",
// redrawn in place when stderr is a terminal; when it is redirected (a log file), the same text
// as a plain line at most every 30 s, so that short runs print nothing and long ones leave a
// readable trail.
#pragma once
#include <cstdint>
#include <string>

namespace longrope {

// The seconds left of some work, from what this run has measured: `elapsed` seconds for
// `work_done` units of work (tokens, steps...), and `work_left` units still to do. With a time
// budget (`budget_left` >= 0 seconds), at most the budget left plus the mean time of one of
// `per_item` units (the item in flight when the budget ends still finishes). 0 before anything
// was measured.
double eta_seconds(double elapsed, double work_done, double work_left, double budget_left = -1,
                   double per_item = 0);

class Progress {
 public:
  // unit names what done/total count ("steps"); empty: the bar shows a percentage (for work
  // counted in internal units, such as a sweep's weighted cells).
  Progress(std::string label, int64_t total, bool enabled, std::string unit = "");
  // The ETA follows done/total at the pace measured since this bar started (or since
  // resumed_at), unless work() gave a better measure of what is left.
  void update(int64_t done, const std::string& extra = "");
  // Work finished by an earlier run that this one resumes: the ETA counts only this run's pace.
  void resumed_at(int64_t done_before) { before_ = done_before; }
  // Work that stops at a time budget: the ETA is at most the budget left plus one unit at the
  // measured pace (the unit in flight when the budget ends still finishes).
  void stop_by(double wall_deadline) { deadline_ = wall_deadline; }
  // The work behind the units, when units differ in cost (a search's candidates: complete or
  // cut at their first stage): `done` units of work finished by this run, `left` estimated
  // still to do. The next update's ETA is eta_seconds of these.
  void work(double done, double left) {
    work_done_ = done;
    work_left_ = left;
  }
  void finish();

 private:
  std::string label_;
  int64_t total_;
  std::string unit_;
  static constexpr double kLogInterval = 30.0;  // seconds between lines when not a terminal
  bool enabled_;
  bool tty_;
  double start_;
  double last_line_;
  int64_t before_ = 0;
  double deadline_ = 0;                    // 0: none
  double work_done_ = -1, work_left_ = 0;  // work_done_ < 0: count units
};

}  // namespace longrope
