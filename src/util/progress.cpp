#include "longrope/progress.h"

#include <fmt/core.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

namespace longrope {

double eta_seconds(double elapsed, double work_done, double work_left, double budget_left,
                   double per_item) {
  if (!(work_done > 0) || !(elapsed >= 0)) return 0.0;
  double eta = elapsed * std::max(0.0, work_left) / work_done;
  if (budget_left >= 0) eta = std::min(eta, budget_left + per_item);
  return eta;
}

Progress::Progress(std::string label, int64_t total, bool enabled, std::string unit)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      enabled_(enabled),
      tty_(isatty(2) != 0),
      start_(omp_get_wtime()),
      last_line_(start_) {}

void Progress::update(int64_t done, const std::string& extra) {
  if (!enabled_) return;
  const double now = omp_get_wtime();
  // Redirected stderr (a log file): a plain line at most every kLogInterval seconds.
  if (!tty_ && now - last_line_ < kLogInterval) return;
  const int width = 30;
  const int fill = total_ > 0 ? int(width * std::clamp<int64_t>(done, 0, total_) / total_) : 0;
  const double el = now - start_;
  const double units = static_cast<double>(done - before_);
  const double budget_left = deadline_ > 0 ? std::max(0.0, deadline_ - now) : -1.0;
  const double per_unit = units > 0 ? el / units : 0.0;
  const double eta =
      work_done_ >= 0
          ? eta_seconds(el, work_done_, work_left_, budget_left, per_unit)
          : eta_seconds(el, units, static_cast<double>(total_ - done), budget_left, per_unit);
  const std::string count =
      unit_.empty()
          ? fmt::format("{:.1f}%", total_ > 0 ? 100.0 * double(done) / double(total_) : 100.0)
          : fmt::format("{}/{} {}", done, total_, unit_);
  const std::string bar = fmt::format("{} [{}{}] {} {} ETA {:.0f}s", label_, std::string(fill, '#'),
                                      std::string(width - fill, '.'), count, extra, eta);
  if (tty_) {
    fmt::print(stderr, "\r{}   ", bar);
  } else {
    fmt::print(stderr, "{} (elapsed {:.0f}s)\n", bar, el);
    last_line_ = now;
  }
  std::fflush(stderr);
}

void Progress::finish() {
  if (enabled_ && tty_) fmt::print(stderr, "\n");
}

}  // namespace longrope
