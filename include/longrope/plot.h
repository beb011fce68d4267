// Line plots for evaluation results: one line per series over a log2 x axis (sequence lengths,
// the default) or a linear x axis (e.g. optimizer steps of a training loss curve, log_x = false)
// and a linear or log10 y axis, with a legend, axis labels and an optional vertical marker (the
// model's original context). SVG is written directly as XML (one <polyline> per series); PNG is
// drawn with PLplot's pngcairo driver when the library is built with LONGROPE_HAVE_PLPLOT.
#pragma once
#include <optional>
#include <string>
#include <vector>

namespace longrope {

struct PlotSeries {
  std::string label;
  std::vector<double> x;  // log2 axis: <= 0 or NaN is a gap; linear axis: non-finite is a gap
  std::vector<double> y;  // NaN or, on a log y axis, <= 0: a gap (the point is skipped)
  // Error bars [y_lo[i], y_hi[i]] (empty: none; NaN: none at that point).
  std::vector<double> y_lo, y_hi;
};

struct PlotSpec {
  std::string title;
  std::string xlabel = "sequence length (tokens)";
  std::string ylabel;
  // true: log2 x axis (x > 0), ticks at powers of two labelled as lengths ("512", "4k"), the x
  // label gets " (log2 scale)"; a plot whose points all share one x draws bars side by side.
  // false: linear x axis (any finite x, including 0 and negatives) over the data's range with a
  // small pad, "nice" ticks (1, 2 or 5 x 10^k apart, at most 10 of them), the x label as given;
  // every point set is drawn as lines (no bars mode).
  bool log_x = true;
  bool log_y = false;
  std::optional<double> y_min, y_max;  // default: the data's range
  std::optional<double> vline_x;       // vertical dashed line (e.g. the original context); drawn
                                       // when usable on the x axis (log2: > 0; linear: finite)
  std::string vline_label;
  std::vector<PlotSeries> series;
  int width = 900, height = 600;  // pixels
};

// Writes an SVG document (root <svg>, one <polyline> per series that has at least one point).
// Throws Error when the file cannot be written or no series has a point.
void write_plot_svg(const PlotSpec& spec, const std::string& path);
// Writes a PNG with PLplot. Throws Error when PNG support is not built in or drawing fails.
void write_plot_png(const PlotSpec& spec, const std::string& path);
// Whether write_plot_png is available in this build.
bool plot_png_supported();

// A heat map: one cell per (row, column), coloured from red (0) through yellow to green (1) by its
// value, with its text written inside (e.g. "3/4"); NaN = no data (grey). Rows are drawn top to
// bottom (row 0 at the top).
struct HeatmapSpec {
  std::string title, xlabel, ylabel;
  std::vector<std::string> columns, rows;       // labels
  std::vector<std::vector<double>> values;      // [row][column], in [0, 1] or NaN
  std::vector<std::vector<std::string>> texts;  // [row][column], may be empty
  int width = 900, height = 600;
};
void write_heatmap_svg(const HeatmapSpec& spec, const std::string& path);
void write_heatmap_png(const HeatmapSpec& spec, const std::string& path);  // needs PLplot

}  // namespace longrope
