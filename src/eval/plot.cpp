// Line plots: SVG written as XML by hand, PNG drawn with PLplot (pngcairo driver).
#include "longrope/plot.h"

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>

#include "longrope/atomic_file.h"
#include "longrope/error.h"

#ifdef LONGROPE_HAVE_PLPLOT
#include <plplot.h>
#endif

namespace longrope {

namespace {

constexpr std::array<std::array<int, 3>, 10> kPalette = {{{31, 119, 180},
                                                          {214, 39, 40},
                                                          {44, 160, 44},
                                                          {255, 127, 14},
                                                          {148, 103, 189},
                                                          {140, 86, 75},
                                                          {227, 119, 194},
                                                          {127, 127, 127},
                                                          {188, 189, 34},
                                                          {23, 190, 207}}};

// One style per series: a palette slot (colour), a marker and a dash pattern, all from the same
// slot. Rule-based methods keep their slot in every plot; other labels (searched factors) take a
// slot from their name, moved to the next free one when another series of the plot has it, so
// overlapping series stay apart by marker and dash as well as colour.
size_t known_slot(const std::string& label) {
  static const std::array<const char*, 6> names = {"yarn",    "linear", "ntk",
                                                   "dynamic", "none",   "llama3"};
  static const std::array<size_t, 6> slots = {0, 1, 2, 3, 7, 5};
  for (size_t i = 0; i < names.size(); ++i)
    if (label == names[i]) return slots[i];
  return kPalette.size();
}

std::vector<size_t> series_slots(const std::vector<PlotSeries>& series) {
  std::vector<size_t> slots(series.size(), kPalette.size());
  std::vector<bool> used(kPalette.size(), false);
  for (size_t i = 0; i < series.size(); ++i)
    if ((slots[i] = known_slot(series[i].label)) < kPalette.size()) used[slots[i]] = true;
  for (size_t i = 0; i < series.size(); ++i) {
    if (slots[i] < kPalette.size()) continue;
    uint32_t h = 2166136261u;  // FNV-1a of the label
    for (unsigned char c : series[i].label) h = (h ^ c) * 16777619u;
    static const std::array<size_t, 4> free_slots = {4, 6, 8, 9};
    size_t s = free_slots[h % free_slots.size()];
    for (size_t n = 0; n < kPalette.size() && used[s]; ++n) s = (s + 1) % kPalette.size();
    slots[i] = s;
    used[s] = true;
  }
  return slots;
}

// Error bars of series si of n sit this far (log2 units) beside their point, so that bars of
// several series at one length do not hide each other.
double bar_dodge(size_t si, size_t n) {
  return (double(si) - double(n - 1) / 2.0) * 0.04;
}

// The marker of slot s: 0 circle, 1 square, 2 triangle, 3 diamond, 4 cross, 5 plus. The six
// rule-based methods' slots (known_slot: 0, 1, 2, 3, 5, 7) have six different markers.
size_t marker_of(size_t s) {
  static const std::array<size_t, 10> kinds = {0, 1, 2, 3, 4, 4, 1, 5, 2, 3};
  return kinds[s % kinds.size()];
}

// SVG: marker path around (x, y) and the stroke-dasharray of slot s.
std::string svg_marker(size_t s, double x, double y, const std::string& color) {
  switch (marker_of(s)) {
    case 0:
      return fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3.5\" fill=\"{}\"/>", x, y,
                         color);
    case 1:
      return fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"7\" height=\"7\" fill=\"{}\"/>",
                         x - 3.5, y - 3.5, color);
    case 2:
      return fmt::format("<path d=\"M{:.1f},{:.1f}l4.5,8h-9z\" fill=\"{}\"/>", x, y - 5, color);
    case 3:
      return fmt::format("<path d=\"M{:.1f},{:.1f}l4.5,4.5l-4.5,4.5l-4.5,-4.5z\" fill=\"{}\"/>", x,
                         y - 4.5, color);
    case 5:
      return fmt::format(
          "<path d=\"M{:.1f},{:.1f}h10M{:.1f},{:.1f}v10\" stroke=\"{}\" stroke-width=\"2\"/>",
          x - 5, y, x, y - 5, color);
    default:
      return fmt::format(
          "<path d=\"M{0:.1f},{1:.1f}l8,8M{0:.1f},{2:.1f}l8,-8\" stroke=\"{3}\" "
          "stroke-width=\"2\"/>",
          x - 4, y - 4, y + 4, color);
  }
}
const char* svg_dash(size_t s) {
  static const std::array<const char*, 4> d = {"none", "7,4", "2,3", "9,3,2,3"};
  return d[(s / 5 + s) % d.size()];
}

// Red (0) -> yellow (0.5) -> green (1).
std::array<int, 3> heat_colour(double v) {
  v = std::clamp(v, 0.0, 1.0);
  if (v < 0.5) return {215, static_cast<int>(48 + (220 - 48) * v * 2), 39};
  return {static_cast<int>(215 - (215 - 26) * (v - 0.5) * 2),
          static_cast<int>(220 - (220 - 152) * (v - 0.5) * 2),
          static_cast<int>(39 + (80 - 39) * (v - 0.5) * 2)};
}

void check_heatmap(const HeatmapSpec& h) {
  if (h.rows.empty() || h.columns.empty() || h.values.size() != h.rows.size())
    throw Error(fmt::format("heat map '{}': {} rows and {} columns of labels for {} rows of values",
                            h.title, h.rows.size(), h.columns.size(), h.values.size()));
  for (const auto& r : h.values)
    if (r.size() != h.columns.size())
      throw Error(fmt::format("heat map '{}': a row of {} values for {} columns", h.title, r.size(),
                              h.columns.size()));
}

std::string cell_text(const HeatmapSpec& h, size_t r, size_t c) {
  return r < h.texts.size() && c < h.texts[r].size() ? h.texts[r][c] : std::string();
}

bool usable(double y, bool log_y) {
  return std::isfinite(y) && (!log_y || y > 0);
}
// Whether x is a point on the x axis: > 0 on a log2 axis, finite on a linear one.
bool usable_x(double x, bool log_x) {
  return log_x ? x > 0 : std::isfinite(x);
}
// x in axis coordinates: log2(x) or x itself.
double axis_x(double x, bool log_x) {
  return log_x ? std::log2(x) : x;
}

// True when every point of the plot is at one length: the series are drawn as bars side by side
// (a line through one point would be a lone marker). Only on a log2 x axis.
bool single_length(const PlotSpec& s) {
  if (!s.log_x) return false;
  double x0 = 0;
  for (const PlotSeries& se : s.series)
    for (size_t i = 0; i < se.x.size() && i < se.y.size(); ++i) {
      if (!(se.x[i] > 0) || !usable(se.y[i], s.log_y)) continue;
      if (x0 == 0) x0 = se.x[i];
      if (se.x[i] != x0) return false;
    }
  return x0 > 0;
}
// Centre of series si's bar (axis units) and the bar width: the group spans 0.5 log2 units.
double bar_centre(double lg, size_t si, size_t n) {
  return lg + (double(si) - double(n - 1) / 2.0) * (0.5 / double(n));
}
double bar_width(size_t n) {
  return 0.5 / double(n) * 0.85;
}

// The plot in axis coordinates: x = log2(length) or x, y = value or log10(value).
struct Frame {
  double x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  std::vector<std::pair<double, std::string>> xticks;  // axis coords, label
  std::vector<std::pair<double, std::string>> yticks;  // axis coords, label
};

// Error bars of series si of n sit this far (axis units) beside their point: bar_dodge's log2
// units on a log2 axis; on a linear one the same share of a typical log2 plot's width (7 units).
double dodge(const PlotSpec& s, const Frame& f, size_t si, size_t n) {
  return s.log_x ? bar_dodge(si, n) : bar_dodge(si, n) * (f.x1 - f.x0) / 7.0;
}

size_t utf8_chars(const std::string& t) {
  size_t n = 0;
  for (unsigned char c : t) n += (c & 0xC0) != 0x80;
  return n;
}

// The title's scale (1 = its normal size) so that it fits the image width with a 10 px margin on
// each side, `px_per_char` being the width of one character at the normal size.
double title_scale(const std::string& title, double width, double px_per_char) {
  const double need = px_per_char * double(utf8_chars(title));
  return need <= width - 20 ? 1.0 : std::max(0.4, (width - 20) / need);
}

// Width of the legend in pixels at the SVG's 13 px font: line and marker, gap, the longest label.
double legend_width_px(const PlotSpec& s) {
  size_t longest = 0;
  for (const PlotSeries& se : s.series) longest = std::max(longest, utf8_chars(se.label));
  return 36.0 + 7.5 * double(longest);
}

std::string fmt_num(double v) {
  if (v != 0 && (std::fabs(v) >= 1e6 || std::fabs(v) < 1e-3)) return fmt::format("{:.0e}", v);
  return fmt::format("{:g}", v);
}

std::string length_label(double lg) {
  const double v = std::pow(2.0, lg);
  if (v >= 1024 && std::fmod(v, 1024.0) == 0) return fmt::format("{:g}k", v / 1024);
  return fmt::format("{:g}", v);
}

// A tick label on a linear x axis with ticks step apart: integers without decimals, other values
// with the decimals the step needs (trailing zeros dropped); huge or tiny values in e notation.
std::string linear_label(double v, double step) {
  if (std::fabs(v) < step * 1e-9) return "0";
  if (std::fabs(v) >= 1e15 || step < 1e-6) return fmt::format("{:.6g}", v);
  if (v == std::round(v)) return fmt::format("{:.0f}", v);
  const int decimals = std::max(0, int(-std::floor(std::log10(step) + 1e-9)));
  std::string t = fmt::format("{:.{}f}", v, decimals);
  if (t.find('.') != std::string::npos) {
    t.erase(t.find_last_not_of('0') + 1);
    if (t.back() == '.') t.pop_back();
  }
  return t;
}

// A linear x axis over [xmin, xmax]: the range padded by 3% on each side (a single value by 10% of
// itself, at least 0.5), ticks 1, 2 or 5 x 10^k apart: the smallest such step that gives at most
// 10 ticks.
void linear_x_axis(double xmin, double xmax, Frame& f) {
  double pad = 0.03 * (xmax - xmin);
  if (!(pad > 0)) pad = std::max(0.5, std::fabs(xmin) * 0.1);
  f.x0 = xmin - pad;
  f.x1 = xmax + pad;
  const double range = f.x1 - f.x0;
  if (!std::isfinite(range) || !(range > 0))
    throw Error(fmt::format("plot: cannot draw a linear x axis from {} to {}", xmin, xmax));
  const double mag = std::pow(10.0, std::floor(std::log10(range / 10)));
  double step = mag, first = 0, count = 0;
  for (double m : {1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0}) {
    step = m * mag;
    first = std::ceil(f.x0 / step - 1e-9);
    count = std::floor(f.x1 / step + 1e-9) - first + 1;
    if (count <= 10) break;
  }
  for (int i = 0; i < int(std::clamp(count, 0.0, 10.0)); ++i) {
    const double v = (first + i) * step;
    f.xticks.emplace_back(v, linear_label(v, step));
  }
}

Frame make_frame(const PlotSpec& s) {
  double xmin = std::numeric_limits<double>::infinity(), xmax = -xmin;
  double ymin = xmin, ymax = -xmin;
  size_t points = 0;
  for (const PlotSeries& se : s.series) {
    if (se.x.size() != se.y.size())
      throw Error(fmt::format("plot: series '{}' has {} x and {} y values", se.label, se.x.size(),
                              se.y.size()));
    for (size_t i = 0; i < se.x.size(); ++i) {
      if (!usable_x(se.x[i], s.log_x) || !usable(se.y[i], s.log_y)) continue;
      ++points;
      xmin = std::min(xmin, se.x[i]);
      xmax = std::max(xmax, se.x[i]);
      const double y = s.log_y ? std::log10(se.y[i]) : se.y[i];
      ymin = std::min(ymin, y);
      ymax = std::max(ymax, y);
      for (const std::vector<double>* bar : {&se.y_lo, &se.y_hi})  // error bars in range too
        if (i < bar->size() && usable((*bar)[i], s.log_y)) {
          const double b = s.log_y ? std::log10((*bar)[i]) : (*bar)[i];
          ymin = std::min(ymin, b);
          ymax = std::max(ymax, b);
        }
    }
  }
  if (points == 0) throw Error("plot: no data point to draw");
  if (s.vline_x && usable_x(*s.vline_x, s.log_x)) {
    xmin = std::min(xmin, *s.vline_x);
    xmax = std::max(xmax, *s.vline_x);
  }
  if (s.y_min) ymin = s.log_y ? std::log10(*s.y_min) : *s.y_min;
  if (s.y_max) ymax = s.log_y ? std::log10(*s.y_max) : *s.y_max;
  Frame f;
  if (s.log_x) {
    f.x0 = std::log2(xmin) - 0.3;
    f.x1 = std::log2(xmax) + 0.3;
    for (int k = int(std::ceil(f.x0)); k <= int(std::floor(f.x1)); ++k)
      f.xticks.emplace_back(k, length_label(k));
  } else {
    linear_x_axis(xmin, xmax, f);
  }
  if (ymax - ymin < 1e-9) {
    const double pad = s.log_y ? 0.1 : std::max(0.5, std::fabs(ymin) * 0.1);
    ymin -= pad;
    ymax += pad;
  }
  const double ypad = (s.y_min && s.y_max) ? 0.0 : 0.05 * (ymax - ymin);
  f.y0 = s.y_min ? ymin : ymin - ypad;
  f.y1 = s.y_max ? ymax : ymax + ypad;
  if (s.log_y) {
    // Decades, then 1-2-5, then 1..9 per decade, whichever first gives at least 3 ticks. An
    // automatic end of the axis moves out to the next tick, so labels cover the data range.
    const std::vector<std::vector<int>> steps = {{1}, {1, 2, 5}, {1, 2, 3, 4, 5, 6, 7, 8, 9}};
    for (const auto& mult : steps) {
      std::vector<double> cands;  // tick positions (log10) around the range
      for (int e = int(std::floor(f.y0)) - 1; e <= int(std::ceil(f.y1)) + 1; ++e)
        for (int m : mult) cands.push_back(std::log10(m * std::pow(10.0, e)));
      size_t inside = 0;
      for (double a : cands) inside += a >= f.y0 - 1e-12 && a <= f.y1 + 1e-12;
      if (inside < 3 && &mult != &steps.back()) continue;
      if (inside < 3) break;
      double lo = f.y0, hi = f.y1;
      if (!s.y_min)
        for (double a : cands)
          if (a <= f.y0 + 1e-12) lo = a;
      if (!s.y_max)
        for (auto it = cands.rbegin(); it != cands.rend(); ++it)
          if (*it >= f.y1 - 1e-12) hi = *it;
      f.y0 = lo;
      f.y1 = hi;
      for (double a : cands)
        if (a >= f.y0 - 1e-12 && a <= f.y1 + 1e-12)
          f.yticks.emplace_back(a, fmt_num(std::pow(10.0, a)));
      break;
    }
    if (f.yticks.size() < 3) {  // less than a decade: nice linear values at log positions
      f.yticks.clear();
      double lo = std::pow(10.0, f.y0), hi = std::pow(10.0, f.y1);
      const double raw = (hi - lo) / 5;
      const double mag = std::pow(10.0, std::floor(std::log10(raw)));
      double step = mag;
      for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
        if (m * mag >= raw) {
          step = m * mag;
          break;
        }
      if (!s.y_min && std::floor(lo / step) * step > 0) lo = std::floor(lo / step) * step;
      if (!s.y_max) hi = std::ceil(hi / step * (1 - 1e-12)) * step;
      f.y0 = std::log10(lo);
      f.y1 = std::log10(hi);
      for (double v = std::ceil(lo / step * (1 - 1e-12)) * step; v <= hi * (1 + 1e-12); v += step)
        if (v > 0) f.yticks.emplace_back(std::log10(v), fmt_num(v));
    }
    if (f.yticks.size() > 12) {  // too dense: keep every other one
      std::vector<std::pair<double, std::string>> thin;
      for (size_t i = 0; i < f.yticks.size(); i += 2) thin.push_back(f.yticks[i]);
      f.yticks = thin;
    }
  } else {
    const double range = f.y1 - f.y0;
    const double raw = range / 6;
    const double mag = std::pow(10.0, std::floor(std::log10(raw)));
    double step = mag;
    for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
      if (m * mag >= raw) {
        step = m * mag;
        break;
      }
    if (!s.y_min) f.y0 = std::floor(f.y0 / step + 1e-9) * step;  // axis ends on ticks
    if (!s.y_max) f.y1 = std::ceil(f.y1 / step - 1e-9) * step;
    for (double v = std::ceil(f.y0 / step - 1e-9) * step; v <= f.y1 + step * 1e-9; v += step)
      f.yticks.emplace_back(v, fmt_num(std::fabs(v) < step * 1e-9 ? 0.0 : v));
  }
  return f;
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace

namespace {
// The spec as drawn: bars (one length) stand on a linear axis from zero, never on a log axis
// that starts wherever the data do (which would exaggerate their differences); the vertical line
// (the original context) is left out when it lies more than an octave from every length, so that
// the axis fits the data instead of squeezing them to one side.
PlotSpec as_drawn(const PlotSpec& spec) {
  PlotSpec s = spec;
  if (s.vline_x) {
    double lo = std::numeric_limits<double>::infinity(), hi = 0;
    for (const PlotSeries& se : s.series)
      for (double x : se.x)
        if (usable_x(x, s.log_x)) {
          lo = std::min(lo, x);
          hi = std::max(hi, x);
        }
    if (hi > 0 && (*s.vline_x < lo / 2 || *s.vline_x > hi * 2)) s.vline_x.reset();
  }
  if (single_length(spec)) {
    s.log_y = false;
    if (!s.y_min || *s.y_min > 0) s.y_min = 0.0;
  }
  return s;
}

// Where bars start (axis units): 0 on a linear axis that shows it, else the frame's bottom.
double bar_base(const PlotSpec& s, const Frame& f) {
  return !s.log_y && f.y0 <= 0 && f.y1 >= 0 ? 0.0 : f.y0;
}
}  // namespace

void write_plot_svg(const PlotSpec& spec, const std::string& path) {
  const PlotSpec s = as_drawn(spec);
  const Frame f = make_frame(s);
  const double W = s.width, H = s.height;
  // The right margin holds the legend: wide enough for the longest label.
  const double left = 80, right = std::max(210.0, 15 + legend_width_px(s) + 15), top = 45,
               bottom = 65;
  const double pw = W - left - right, ph = H - top - bottom;
  auto px = [&](double ax) { return left + (ax - f.x0) / (f.x1 - f.x0) * pw; };
  auto py = [&](double ay) { return top + (1 - (ay - f.y0) / (f.y1 - f.y0)) * ph; };
  std::string o;
  o += fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" "
      "width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\" "
      "font-size=\"13\">\n",
      W, H);
  o += fmt::format("<rect x=\"0\" y=\"0\" width=\"{}\" height=\"{}\" fill=\"white\"/>\n", W, H);
  // The title is centred on the image (not the frame) and shrinks to fit it (9.2 px per
  // character at 16 px, the legend's 7.5 px at 13 px scaled).
  o += fmt::format(
      "<text x=\"{:.1f}\" y=\"25\" text-anchor=\"middle\" font-size=\"{:.2f}\">{}</text>\n", W / 2,
      16 * title_scale(s.title, W, 9.2), xml_escape(s.title));
  // Grid, ticks and tick labels.
  o += "<g class=\"grid\" stroke=\"#dddddd\" stroke-width=\"1\">\n";
  for (const auto& [t, lab] : f.xticks)
    o += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\"/>\n", px(t),
                     top, top + ph);
  for (const auto& [t, lab] : f.yticks)
    o += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\"/>\n", left,
                     py(t), left + pw);
  o += "</g>\n<g class=\"ticks\">\n";
  for (const auto& [t, lab] : f.xticks)
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n", px(t),
                     top + ph + 18, xml_escape(lab));
  for (const auto& [t, lab] : f.yticks)
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"end\">{}</text>\n", left - 6,
                     py(t) + 4, xml_escape(lab));
  o += "</g>\n";
  o += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"black\"/>\n", left,
      top, pw, ph);
  o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"middle\">{}</text>\n",
                   left + pw / 2, H - 20, xml_escape(s.xlabel + (s.log_x ? " (log2 scale)" : "")));
  o += fmt::format(
      "<text x=\"18\" y=\"{0:.1f}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {0:.1f})\">"
      "{1}</text>\n",
      top + ph / 2, xml_escape(s.ylabel + (s.log_y ? " (log scale)" : "")));
  if (s.vline_x && usable_x(*s.vline_x, s.log_x)) {
    const double x = px(axis_x(*s.vline_x, s.log_x));
    o += fmt::format(
        "<line class=\"vline\" x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\" "
        "stroke=\"black\" stroke-dasharray=\"6,4\"/>\n",
        x, top, top + ph);
    const bool right_half = x > left + pw / 2;
    if (!s.vline_label.empty())
      o += fmt::format(
          "<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"11\" text-anchor=\"{}\">{}</text>\n",
          right_half ? x - 4 : x + 4, top + 14, right_half ? "end" : "start",
          xml_escape(s.vline_label));
  }
  // One polyline per series (points outside the y range are clipped to the frame).
  o += fmt::format(
      "<defs><clipPath id=\"plotarea\"><rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>"
      "</clipPath></defs>\n",
      left, top, pw, ph);
  size_t legend_row = 0;
  const std::vector<size_t> slots = series_slots(s.series);
  const bool bars = single_length(s);
  const size_t n_series = s.series.size();
  for (size_t si = 0; si < n_series; ++si) {
    const PlotSeries& se = s.series[si];
    const size_t slot = slots[si];
    const auto& c = kPalette[slot];
    const std::string color = fmt::format("rgb({},{},{})", c[0], c[1], c[2]);
    std::string pts, marks;
    for (size_t i = 0; i < se.x.size(); ++i) {
      if (!usable_x(se.x[i], s.log_x) || !usable(se.y[i], s.log_y)) continue;
      const double y = py(s.log_y ? std::log10(se.y[i]) : se.y[i]);
      if (bars) {
        const double lg = std::log2(se.x[i]);
        const double xc = px(bar_centre(lg, si, n_series));
        const double base = py(bar_base(s, f));
        const double w = px(f.x0 + bar_width(n_series)) - px(f.x0);
        marks += fmt::format(
            "<rect class=\"bar\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
            "fill=\"{}\" fill-opacity=\"0.85\"/>",
            xc - w / 2, std::min(y, base), w, std::fabs(base - y), color);
        if (i < se.y_lo.size() && i < se.y_hi.size() && usable(se.y_lo[i], s.log_y) &&
            usable(se.y_hi[i], s.log_y))
          marks += fmt::format(
              "<path class=\"errorbar\" "
              "d=\"M{0:.1f},{1:.1f}V{2:.1f}M{3:.1f},{1:.1f}H{4:.1f}M{3:.1f},"
              "{2:.1f}H{4:.1f}\" stroke=\"black\" stroke-width=\"1.5\" fill=\"none\"/>",
              xc, py(s.log_y ? std::log10(se.y_lo[i]) : se.y_lo[i]),
              py(s.log_y ? std::log10(se.y_hi[i]) : se.y_hi[i]), xc - 4, xc + 4);
        pts = "bar";
        continue;
      }
      const double x = px(axis_x(se.x[i], s.log_x));
      // A linear axis keeps x to 1/1000 px, so that evenly spaced steps stay evenly spaced.
      pts += s.log_x ? fmt::format("{}{:.1f},{:.1f}", pts.empty() ? "" : " ", x, y)
                     : fmt::format("{}{:.3f},{:.1f}", pts.empty() ? "" : " ", x, y);
      marks += svg_marker(slot, x, y, color);
      if (i < se.y_lo.size() && i < se.y_hi.size() && usable(se.y_lo[i], s.log_y) &&
          usable(se.y_hi[i], s.log_y)) {  // error bar with caps
        const double y0 = py(s.log_y ? std::log10(se.y_lo[i]) : se.y_lo[i]);
        const double y1 = py(s.log_y ? std::log10(se.y_hi[i]) : se.y_hi[i]);
        const double xb = px(axis_x(se.x[i], s.log_x) + dodge(s, f, si, s.series.size()));
        marks += fmt::format(
            "<path class=\"errorbar\" d=\"M{0:.1f},{1:.1f}V{2:.1f}M{3:.1f},{1:.1f}H{4:.1f}M{3:.1f},"
            "{2:.1f}H{4:.1f}\" stroke=\"{5}\" stroke-width=\"1.5\" fill=\"none\"/>",
            xb, y0, y1, xb - 4, xb + 4, color);
      }
    }
    if (pts.empty()) continue;
    if (bars)
      o += fmt::format("<g clip-path=\"url(#plotarea)\" class=\"bars\" data-label=\"{}\">{}</g>\n",
                       xml_escape(se.label), marks);
    else
      o += fmt::format(
          "<g clip-path=\"url(#plotarea)\"><polyline class=\"series\" data-label=\"{}\" "
          "points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\" "
          "stroke-dasharray=\"{}\"/>{}</g>\n",
          xml_escape(se.label), pts, color, svg_dash(slot), marks);
    const double ly = top + 10 + 22 * double(legend_row++);
    const double lx = left + pw + 15;
    o += fmt::format(
        "<g class=\"legend\"><line x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{2:.1f}\" y2=\"{1:.1f}\" "
        "stroke=\"{3}\" stroke-width=\"2\" stroke-dasharray=\"{4}\"/>{5}"
        "<text x=\"{6:.1f}\" y=\"{7:.1f}\">{8}</text></g>\n",
        lx, ly, lx + 28, color, svg_dash(slot), svg_marker(slot, lx + 14, ly, color), lx + 36,
        ly + 4, xml_escape(se.label));
  }
  o += "</svg>\n";
  write_file_atomically(path, o);
}

namespace {
// Characters of the longest row label: the left margin grows with it (RULER's task names).
double longest_row_label(const HeatmapSpec& h) {
  size_t n = 0;
  for (const std::string& r : h.rows) n = std::max(n, r.size());
  return double(n);
}
}  // namespace

void write_heatmap_svg(const HeatmapSpec& h, const std::string& path) {
  check_heatmap(h);
  // Row labels in 12 px sans-serif (about 7 px a character), right-aligned 8 px from the cells,
  // after the rotated y label.
  const double left = std::max(110.0, 7.0 * longest_row_label(h) + 40), right = 30, top = 50,
               bottom = 70;
  const double cw = (h.width - left - right) / double(h.columns.size());
  const double ch = (h.height - top - bottom) / double(h.rows.size());
  std::string o = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" "
      "viewBox=\"0 0 {0} {1}\" font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" "
      "fill=\"white\"/>\n<text x=\"{2:.1f}\" y=\"28\" font-size=\"16\" "
      "text-anchor=\"middle\">{3}</text>\n",
      h.width, h.height, h.width / 2.0, xml_escape(h.title));
  for (size_t r = 0; r < h.rows.size(); ++r) {
    const double y = top + ch * double(r);
    o += fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"12\" text-anchor=\"end\">{}</text>\n",
        left - 8, y + ch / 2 + 4, xml_escape(h.rows[r]));
    for (size_t c = 0; c < h.columns.size(); ++c) {
      const double v = h.values[r][c];
      const std::string fill = std::isfinite(v) ? [&] {
        const auto k = heat_colour(v);
        return fmt::format("rgb({},{},{})", k[0], k[1], k[2]);
      }()
                                                 : std::string("rgb(200,200,200)");
      const double x = left + cw * double(c);
      o += fmt::format(
          "<rect class=\"cell\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
          "fill=\"{}\" stroke=\"white\"/>",
          x, y, cw, ch, fill);
      const std::string t = cell_text(h, r, c);
      if (!t.empty())
        o += fmt::format(
            "<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"12\" text-anchor=\"middle\">{}</text>",
            x + cw / 2, y + ch / 2 + 4, xml_escape(t));
      o += "\n";
    }
  }
  for (size_t c = 0; c < h.columns.size(); ++c)
    o += fmt::format(
        "<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n",
        left + cw * (double(c) + 0.5), top + ch * double(h.rows.size()) + 18,
        xml_escape(h.columns[c]));
  o += fmt::format(
      "<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"13\" text-anchor=\"middle\">{}</text>\n"
      "<text x=\"18\" y=\"{:.1f}\" font-size=\"13\" text-anchor=\"middle\" "
      "transform=\"rotate(-90 18 {:.1f})\">{}</text>\n</svg>\n",
      left + (h.width - left - right) / 2, double(h.height) - 20, xml_escape(h.xlabel),
      top + (h.height - top - bottom) / 2, top + (h.height - top - bottom) / 2,
      xml_escape(h.ylabel));
  write_file_atomically(path, o);
}

#ifdef LONGROPE_HAVE_PLPLOT

namespace {
// PLplot keeps global state: one plot at a time.
std::mutex& plplot_mutex() {
  static std::mutex m;
  return m;
}
// PLplot treats '#' as an escape character in text.
std::string pl_text(const std::string& s) {
  std::string out;
  for (char c : s) {
    out += c;
    if (c == '#') out += '#';
  }
  return out;
}
// Starts a PNG of w x h pixels with PLplot (white background, colour 15 black); holds PLplot's
// lock until end_png(). Fails with a clear message before PLplot (which exits on errors) touches
// the file.
std::unique_lock<std::mutex> begin_png(const std::string& path, int w, int h) {
  check_writable(path);
  std::unique_lock<std::mutex> lock(plplot_mutex());
  plsstrm(0);
  plsdev("pngcairo");
  plsfnam(atomic_temp_path(path).c_str());  // renamed over path by end_png()
  plspage(0, 0, w, h, 0, 0);
  plscolbg(255, 255, 255);
  plscol0(15, 0, 0, 0);  // black
  return lock;
}

void end_png(const std::string& path) {
  plend();
  const std::string tmp = atomic_temp_path(path);
  std::error_code ec;
  if (std::filesystem::file_size(tmp, ec) == 0 || ec) {
    std::remove(tmp.c_str());
    throw Error(fmt::format("PLplot wrote no image to {}", path));
  }
  commit_temp_file(tmp, path);
}

}  // namespace

// PLplot's legend text (plschr 0.85) is wider than the SVG's 13 px font by about this factor
// (measured on the PNGs; 1.25 cut the box of a 19-character label).
constexpr double kPngLegendScale = 1.4;
// Width of PLplot's title characters at plschr 0.9, in pixels (measured on the PNGs).
constexpr double kPngTitlePxPerChar = 11.5;

bool plot_png_supported() {
  return true;
}

void write_plot_png(const PlotSpec& spec, const std::string& path) {
  const PlotSpec s = as_drawn(spec);
  const Frame f = make_frame(s);
  const auto lock = begin_png(path, s.width, s.height);
  plscol0(14, 221, 221, 221);  // grid grey
  for (size_t i = 0; i < kPalette.size(); ++i)
    plscol0(PLINT(i + 1), kPalette[i][0], kPalette[i][1], kPalette[i][2]);
  plinit();
  pladv(0);
  plschr(0, 0.85);
  // The frame ends where the legend (outside it, on the right) still fits the image.
  const double legend = kPngLegendScale * legend_width_px(s) / double(s.width);
  const double vx0 = 0.10, vx1 = std::clamp(0.96 - legend, 0.45, 0.74), vy0 = 0.12, vy1 = 0.90;
  plvpor(vx0, vx1, vy0, vy1);
  plwind(f.x0, f.x1, f.y0, f.y1);
  // Grid.
  plcol0(14);
  plwidth(1);
  for (const auto& [t, lab] : f.xticks) pljoin(t, f.y0, t, f.y1);
  for (const auto& [t, lab] : f.yticks) pljoin(f.x0, t, f.x1, t);
  // Frame, ticks, labels.
  plcol0(15);
  plbox("bc", 0, 0, "bc", 0, 0);
  const double tx = (f.x1 - f.x0) * 0.012, ty = (f.y1 - f.y0) * 0.018;
  for (const auto& [t, lab] : f.xticks) {
    pljoin(t, f.y0, t, f.y0 + ty);
    plmtex("b", 1.6, (t - f.x0) / (f.x1 - f.x0), 0.5, pl_text(lab).c_str());
  }
  for (const auto& [t, lab] : f.yticks) {
    pljoin(f.x0, t, f.x0 + tx, t);
    plmtex("lv", 0.8, (t - f.y0) / (f.y1 - f.y0), 1.0, pl_text(lab).c_str());
  }
  plmtex("b", 3.4, 0.5, 0.5, pl_text(s.xlabel + (s.log_x ? " (log2 scale)" : "")).c_str());
  plmtex("l", 5.0, 0.5, 0.5, pl_text(s.ylabel + (s.log_y ? " (log scale)" : "")).c_str());
  // The title centred on the image, shrunk to fit it.
  plschr(0, 0.9 * title_scale(s.title, s.width, kPngTitlePxPerChar));
  plmtex("t", 1.5, (0.5 - vx0) / (vx1 - vx0), 0.5, pl_text(s.title).c_str());
  plschr(0, 0.85);
  if (s.vline_x && usable_x(*s.vline_x, s.log_x)) {
    const double x = axis_x(*s.vline_x, s.log_x);
    pllsty(2);
    pljoin(x, f.y0, x, f.y1);
    pllsty(1);
    if (!s.vline_label.empty()) {
      plschr(0, 0.7);
      const bool right_half = x > (f.x0 + f.x1) / 2;
      plptex(x + (f.x1 - f.x0) * (right_half ? -0.01 : 0.01), f.y1 - (f.y1 - f.y0) * 0.04, 1, 0,
             right_half ? 1.0 : 0.0, pl_text(s.vline_label).c_str());
      plschr(0, 0.85);
    }
  }
  // Series, clipped to the frame by PLplot's window.
  std::vector<std::string> labels;
  std::vector<PLINT> colors, line_styles, symbol_codes;
  const std::vector<size_t> slots = series_slots(s.series);
  // PLplot line styles 1 (solid), 2, 3, 4 and plpoin codes (circle, square, triangle, diamond,
  // cross, plus) in the order of svg_dash and marker_of.
  static const std::array<PLINT, 4> kLineStyles = {1, 2, 3, 4};
  static const std::array<PLINT, 6> kPoints = {4, 6, 7, 11, 5, 2};
  const bool bars = single_length(s);
  for (size_t si = 0; si < s.series.size(); ++si) {
    const PlotSeries& se = s.series[si];
    const size_t slot = slots[si];
    const PLINT color = PLINT(slot) + 1;
    const PLINT lsty = kLineStyles[(slot / 5 + slot) % kLineStyles.size()];
    const PLINT point = kPoints[marker_of(slot)];
    std::vector<PLFLT> xs, ys;
    for (size_t i = 0; i < se.x.size(); ++i) {
      if (!usable_x(se.x[i], s.log_x) || !usable(se.y[i], s.log_y)) continue;
      xs.push_back(axis_x(se.x[i], s.log_x));
      ys.push_back(s.log_y ? std::log10(se.y[i]) : se.y[i]);
    }
    if (xs.empty()) continue;
    plcol0(color);
    plwidth(2.5);
    if (bars) {  // one length: a filled bar per series, from the frame's bottom
      const double xc = bar_centre(xs[0], si, s.series.size()), w = bar_width(s.series.size());
      PLFLT bx[4] = {xc - w / 2, xc - w / 2, xc + w / 2, xc + w / 2};
      const double base = bar_base(s, f);
      PLFLT by[4] = {base, ys[0], ys[0], base};
      plfill(4, bx, by);
    } else {
      pllsty(lsty);
      plline(PLINT(xs.size()), xs.data(), ys.data());
      pllsty(1);
      plssym(0, 1.3);
      plpoin(PLINT(xs.size()), xs.data(), ys.data(), point);
    }
    std::vector<PLFLT> ex, elo, ehi;  // error bars
    for (size_t i = 0; i < se.x.size() && i < se.y_lo.size() && i < se.y_hi.size(); ++i) {
      if (!usable_x(se.x[i], s.log_x) || !usable(se.y_lo[i], s.log_y) ||
          !usable(se.y_hi[i], s.log_y))
        continue;
      ex.push_back(bars ? bar_centre(std::log2(se.x[i]), si, s.series.size())
                        : axis_x(se.x[i], s.log_x) + dodge(s, f, si, s.series.size()));
      elo.push_back(s.log_y ? std::log10(se.y_lo[i]) : se.y_lo[i]);
      ehi.push_back(s.log_y ? std::log10(se.y_hi[i]) : se.y_hi[i]);
    }
    if (!ex.empty()) {
      plwidth(1.5);
      if (bars) plcol0(15);  // black bars over the coloured fill
      plerry(PLINT(ex.size()), ex.data(), elo.data(), ehi.data());
    }
    labels.push_back(pl_text(se.label));
    colors.push_back(color);
    line_styles.push_back(lsty);
    symbol_codes.push_back(point);
  }
  plwidth(1);
  // Legend outside the frame, on the right.
  const PLINT n = PLINT(labels.size());
  std::vector<PLINT> opt(n, PL_LEGEND_LINE | PL_LEGEND_SYMBOL), sym_numbers(n, 1), box_colors(n, 0),
      box_patterns(n, 0);
  std::vector<PLFLT> widths(n, 2.5), sym_scales(n, 1.0), box_scales(n, 0), box_widths(n, 0);
  // Legend symbols as Hershey glyphs matching the plpoin codes above.
  std::vector<std::string> glyphs;
  for (PLINT c : symbol_codes)
    glyphs.push_back(c == 4    ? "#(840)"
                     : c == 6  ? "#(841)"
                     : c == 7  ? "#(842)"
                     : c == 11 ? "#(843)"
                     : c == 2  ? "+"
                               : "#(846)");
  std::vector<const char*> texts(n), symbols(n);
  for (PLINT i = 0; i < n; ++i) {
    texts[i] = labels[i].c_str();
    symbols[i] = glyphs[size_t(i)].c_str();
  }
  std::vector<PLINT>& styles = line_styles;
  PLFLT lw = 0, lh = 0;
  pllegend(&lw, &lh, PL_LEGEND_BACKGROUND | PL_LEGEND_BOUNDING_BOX,
           PL_POSITION_RIGHT | PL_POSITION_OUTSIDE, 0.02, 0.0, 0.06, 0, 15, 1, 0, 0, n, opt.data(),
           1.0, 0.9, 2.0, 0.0, colors.data(), texts.data(), box_colors.data(), box_patterns.data(),
           box_scales.data(), box_widths.data(), colors.data(), styles.data(), widths.data(),
           colors.data(), sym_scales.data(), sym_numbers.data(), symbols.data());
  end_png(path);
}

void write_heatmap_png(const HeatmapSpec& h, const std::string& path) {
  check_heatmap(h);
  const auto lock = begin_png(path, h.width, h.height);
  plscol0(14, 200, 200, 200);
  plinit();
  pladv(0);
  plschr(0, 0.85);
  const PLFLT nc = PLFLT(h.columns.size()), nr = PLFLT(h.rows.size());
  // Row labels at this character size take about 9.5 px a character.
  plvpor(std::max(0.17, (9.5 * longest_row_label(h) + 40) / double(h.width)), 0.96, 0.13, 0.90);
  plwind(0, nc, 0, nr);
  for (size_t r = 0; r < h.rows.size(); ++r) {
    const PLFLT y0 = nr - PLFLT(r) - 1;  // row 0 at the top
    for (size_t c = 0; c < h.columns.size(); ++c) {
      const double v = h.values[r][c];
      if (std::isfinite(v)) {
        const auto k = heat_colour(v);
        plscol0(13, k[0], k[1], k[2]);
        plcol0(13);
      } else {
        plcol0(14);
      }
      PLFLT xs[4] = {PLFLT(c), PLFLT(c) + 1, PLFLT(c) + 1, PLFLT(c)};
      PLFLT ys[4] = {y0, y0, y0 + 1, y0 + 1};
      plfill(4, xs, ys);
      plcol0(15);
      const std::string t = cell_text(h, r, c);
      if (!t.empty()) plptex(PLFLT(c) + 0.5, y0 + 0.5, 1, 0, 0.5, pl_text(t).c_str());
    }
    plmtex("lv", 0.8, (nr - PLFLT(r) - 0.5) / nr, 1.0, pl_text(h.rows[r]).c_str());
  }
  plcol0(15);
  for (size_t c = 0; c < h.columns.size(); ++c)
    plmtex("b", 1.4, (PLFLT(c) + 0.5) / nc, 0.5, pl_text(h.columns[c]).c_str());
  plbox("bc", 0, 0, "bc", 0, 0);
  plmtex("b", 3.2, 0.5, 0.5, pl_text(h.xlabel).c_str());
  plmtex("l", 7.5, 0.5, 0.5, pl_text(h.ylabel).c_str());
  plschr(0, 0.9);
  plmtex("t", 1.5, 0.5, 0.5, pl_text(h.title).c_str());
  end_png(path);
}

#else

bool plot_png_supported() {
  return false;
}

void write_heatmap_png(const HeatmapSpec&, const std::string& path) {
  throw Error(fmt::format("cannot write {}: this build has no PNG support", path));
}

void write_plot_png(const PlotSpec&, const std::string& path) {
  throw Error(
      fmt::format("cannot write {}: this build has no PNG support (configure with PLplot, see "
                  "docs/evaluation.md)",
                  path));
}

#endif

}  // namespace longrope
