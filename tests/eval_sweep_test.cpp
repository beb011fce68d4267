// longrope eval: tables, results file, resume and plots on a tiny run (stories260K).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "longrope/error.h"
#include "longrope/eval.h"
#include "longrope/perplexity.h"
#include "longrope/plot.h"
#include "test_paths.h"

namespace {

using longrope::test::cli_path;
using longrope::test::run_command;
using longrope::test::shared_dir;
namespace fs = std::filesystem;
using longrope::test::slurp;

std::string stories() {
  return (shared_dir() / "models" / "stories260K.gguf").string();
}
std::string pride() {
  return (shared_dir() / "data" / "pride_and_prejudice.txt").string();
}

fs::path fresh_dir(const std::string& name) {
  const fs::path d =
      fs::temp_directory_path() / ("longrope_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  return d;
}

// PNG signature, an IHDR chunk with non-zero width and height, and the closing IEND chunk.
void expect_png(const fs::path& p) {
  const std::string s = slurp(p);
  ASSERT_GE(s.size(), 24u) << p;
  EXPECT_EQ(s.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
  EXPECT_EQ(s.substr(12, 4), "IHDR");
  auto be32 = [&](size_t o) {
    return (uint32_t(uint8_t(s[o])) << 24) | (uint32_t(uint8_t(s[o + 1])) << 16) |
           (uint32_t(uint8_t(s[o + 2])) << 8) | uint32_t(uint8_t(s[o + 3]));
  };
  EXPECT_GT(be32(16), 0u);
  EXPECT_GT(be32(20), 0u);
  EXPECT_EQ(s.substr(s.size() - 8, 4), "IEND") << "truncated PNG " << p;
}

// A minimal well-formedness check: tags balance, the root is <svg>. Returns the number of
// <polyline elements.
int check_svg(const std::string& s) {
  std::vector<std::string> stack;
  std::string root;
  int polylines = 0;
  for (size_t i = s.find('<'); i != std::string::npos; i = s.find('<', i + 1)) {
    if (s.compare(i, 5, "<?xml") == 0) continue;
    const size_t end = s.find('>', i);
    EXPECT_NE(end, std::string::npos);
    if (end == std::string::npos) return -1;
    std::string tag = s.substr(i + 1, end - i - 1);
    if (tag[0] == '/') {
      const std::string name = tag.substr(1);
      EXPECT_FALSE(stack.empty());
      if (stack.empty()) return -1;
      EXPECT_EQ(stack.back(), name);
      stack.pop_back();
      continue;
    }
    const std::string name = tag.substr(0, tag.find_first_of(" \n/"));
    if (root.empty()) root = name;
    if (name == "polyline") ++polylines;
    if (tag.back() != '/') stack.push_back(name);
  }
  EXPECT_TRUE(stack.empty());
  EXPECT_EQ(root, "svg");
  return polylines;
}

TEST(EvalSweep, TableMatchesPerplexityAndResumeSkips) {
  LONGROPE_REQUIRE_FILE(stories());
  LONGROPE_REQUIRE_FILE(pride());
  auto model = longrope::Model::load(stories());
  const fs::path dir = fresh_dir("eval_sweep");
  longrope::EvalConfig cfg;
  cfg.model_path = stories();
  cfg.text_paths = {pride()};
  cfg.lengths = {256, 512};
  cfg.methods = {"none,yarn", "pi=linear"};
  cfg.docs = 1;
  cfg.n_threads = 1;
  cfg.out_dir = dir.string();
  const longrope::EvalRun run = longrope::run_eval(*model, cfg);
  EXPECT_EQ(run.computed, 6);
  ASSERT_EQ(run.cells.size(), 6u);
  ASSERT_EQ(run.methods.size(), 3u);
  EXPECT_EQ(run.methods[2].label, "pi");
  EXPECT_EQ(run.methods[2].method, longrope::RopeMethod::kLinear);

  // Values equal perplexity() with the same settings.
  std::ifstream in(pride(), std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const auto tokens = model->tokenizer().encode(longrope::normalize_newlines(ss.str()));
  for (const auto& c : run.cells) {
    const auto& m = run.methods[c["method"] == "none" ? 0 : c["method"] == "yarn" ? 1 : 2];
    const int64_t len = c["length"];
    const auto scaling = longrope::eval_scaling(m, *model, len, {});
    const auto r = longrope::perplexity(*model, tokens, len, 1, scaling, 1);
    EXPECT_NEAR(c["ppl"].get<double>(), r.ppl, 1e-9 * r.ppl) << c.dump();
    EXPECT_EQ(c["tokens"].get<int64_t>(), r.tokens);
  }
  // yarn at 512 (= trained context) has s = 1; at 256 too.
  const std::string md = longrope::write_eval_outputs(run, *model, cfg);
  EXPECT_NE(md.find("| none |"), std::string::npos);
  EXPECT_NE(md.find("| pi |"), std::string::npos);
  EXPECT_EQ(slurp(dir / "results.md"), md);

  // CSV: a header and one row per method, each with one number per length.
  std::istringstream csv(slurp(dir / "results.csv"));
  std::string line;
  std::getline(csv, line);
  EXPECT_EQ(line, "method,256,512");
  int rows = 0;
  while (std::getline(csv, line)) {
    std::istringstream fields(line);
    std::string f;
    std::getline(fields, f, ',');
    int numbers = 0;
    while (std::getline(fields, f, ',')) {
      EXPECT_GT(std::stod(f), 1.0);
      ++numbers;
    }
    EXPECT_EQ(numbers, 2) << line;
    ++rows;
  }
  EXPECT_EQ(rows, 3);

  // results.json holds every cell.
  const auto j = nlohmann::json::parse(slurp(dir / "results.json"));
  EXPECT_EQ(j["kind"], "perplexity");
  EXPECT_EQ(j["cells"].size(), 6u);

  // Plots.
  EXPECT_EQ(check_svg(slurp(dir / "ppl.svg")), 3);
  ASSERT_TRUE(longrope::plot_png_supported()) << "built without PLplot (CMake requires it)";
  expect_png(dir / "ppl.png");

  // Resume: nothing recomputed; a new length computes only its cells.
  cfg.resume = true;
  const longrope::EvalRun again = longrope::run_eval(*model, cfg);
  EXPECT_EQ(again.computed, 0);
  EXPECT_EQ(again.cells, run.cells);
  cfg.lengths = {256, 512, 384};
  const longrope::EvalRun more = longrope::run_eval(*model, cfg);
  EXPECT_EQ(more.computed, 3);
  // Other docs: a different key, so everything is computed again.
  cfg.lengths = {256};
  cfg.docs = 2;
  const longrope::EvalRun docs2 = longrope::run_eval(*model, cfg);
  EXPECT_EQ(docs2.computed, 3);
  fs::remove_all(dir);
}

TEST(EvalSweep, ResumeRecomputesWhenTheFactorsFileChanges) {
  LONGROPE_REQUIRE_FILE(stories());
  LONGROPE_REQUIRE_FILE(pride());
  auto model = longrope::Model::load(stories());
  const fs::path dir = longrope::test::fresh_temp_dir("eval_factors");
  const std::string file = (dir / "f.json").string();
  auto write = [&](double lambda) {
    longrope::RopeScaling s;
    s.method = longrope::RopeMethod::kLongrope;
    s.orig_ctx = 512;
    s.target_ctx = 2048;
    s.sets.push_back(longrope::FactorSet{{1.0, lambda, lambda, lambda}, 0});
    longrope::write_factors_file(file, s);
  };
  write(1.0);
  longrope::EvalConfig cfg;
  cfg.model_path = stories();
  cfg.text_paths = {pride()};
  cfg.lengths = {256};
  cfg.methods = {"f=" + file};
  cfg.n_threads = 1;
  cfg.out_dir = dir.string();
  cfg.resume = true;
  const auto first = longrope::run_eval(*model, cfg);
  EXPECT_EQ(first.computed, 1);
  EXPECT_EQ(longrope::run_eval(*model, cfg).computed, 0);
  write(2.0);  // same file name, other factors: the old cell must not be reused
  const auto second = longrope::run_eval(*model, cfg);
  ASSERT_EQ(second.computed, 1);
  EXPECT_NE(second.cells[0]["ppl"].get<double>(), first.cells[0]["ppl"].get<double>());
  // Same text file name, other text: recomputed too (cells are keyed by content).
  const fs::path other = dir / "sub" / fs::path(pride()).filename();
  fs::create_directories(other.parent_path());
  std::ofstream(other) << longrope::read_text_file(pride()).substr(20000);
  cfg.text_paths = {other.string()};
  EXPECT_EQ(longrope::run_eval(*model, cfg).computed, 1);
  EXPECT_EQ(longrope::run_eval(*model, cfg).computed, 0);
  fs::remove_all(dir);
}

TEST(EvalSweep, CliWritesEverythingAndResumes) {
  LONGROPE_REQUIRE_FILE(stories());
  LONGROPE_REQUIRE_FILE(pride());
  const fs::path dir = fresh_dir("eval_cli");
  const std::string cmd = cli_path().string() + " eval -m " + stories() + " -f " + pride() +
                          " --lengths 256,512 --methods none,ntk,dynamic --docs 1 -t 1 -O " +
                          dir.string();
  std::string out;
  ASSERT_EQ(run_command(cmd, &out), 0) << out;
  EXPECT_NE(out.find("| dynamic |"), std::string::npos) << out;
  EXPECT_NE(out.find("6 cell(s) computed, 0 reused"), std::string::npos) << out;
  for (const char* f : {"results.md", "results.csv", "results.json", "ppl.svg"})
    EXPECT_TRUE(fs::exists(dir / f)) << f;
  EXPECT_EQ(check_svg(slurp(dir / "ppl.svg")), 3);
  ASSERT_TRUE(longrope::plot_png_supported()) << "built without PLplot (CMake requires it)";
  expect_png(dir / "ppl.png");
  ASSERT_EQ(run_command(cmd + " --resume --json", &out), 0) << out;
  EXPECT_NE(out.find("0 cell(s) computed, 6 reused"), std::string::npos) << out;
  EXPECT_NE(out.find("\"cells\""), std::string::npos) << out;
  fs::remove_all(dir);
}

TEST(EvalSweep, MethodSpecs) {
  LONGROPE_REQUIRE_FILE(stories());
  auto model = longrope::Model::load(stories());
  const auto ms = longrope::parse_eval_methods({"none, pi", "y2=yarn"}, *model);
  ASSERT_EQ(ms.size(), 3u);
  EXPECT_EQ(ms[1].label, "linear");
  EXPECT_EQ(ms[2].label, "y2");
  EXPECT_EQ(ms[2].method, longrope::RopeMethod::kYarn);
  // s = length / orig, at least 1; --rope-factor fixes it.
  EXPECT_DOUBLE_EQ(longrope::eval_scaling(ms[1], *model, 2048, {}).factor, 4.0);
  EXPECT_DOUBLE_EQ(longrope::eval_scaling(ms[1], *model, 256, {}).factor, 1.0);
  longrope::ScaleOptions so;
  so.rope_factor = 3.0;
  EXPECT_DOUBLE_EQ(longrope::eval_scaling(ms[1], *model, 2048, so).factor, 3.0);
  so = {};
  so.orig_ctx = 256;
  EXPECT_DOUBLE_EQ(longrope::eval_scaling(ms[1], *model, 2048, so).factor, 8.0);
  EXPECT_EQ(longrope::parse_lengths("512, 1k,2K"), (std::vector<int64_t>{512, 1024, 2048}));

  // Factors files: longrope=FILE, LABEL=FILE, LABEL=longrope=FILE use the file's scaling as is.
  const fs::path f = fresh_dir("factors").string() + ".json";
  std::ofstream(f) << R"({"rope_type": "longrope", "original_max_position_embeddings": 512,
    "max_position_embeddings": 4096, "n_hat": 4,
    "sets": [{"max_len": 512, "factors": [1.0, 1.0, 1.05, 1.2]},
             {"max_len": 0, "factors": [1.0, 1.5, 4.0, 8.5]}]})";
  const auto lr = longrope::parse_eval_methods(
      {"longrope=" + f.string(), "searched=" + f.string(), "s2=longrope=" + f.string()}, *model);
  ASSERT_EQ(lr.size(), 3u);
  EXPECT_EQ(lr[0].label, "longrope");
  EXPECT_EQ(lr[1].label, "searched");
  EXPECT_EQ(lr[2].label, "s2");
  const auto file_scaling = longrope::read_factors_file(f.string());
  for (const auto& m : lr) {
    EXPECT_EQ(m.method, longrope::RopeMethod::kLongrope);
    EXPECT_EQ(longrope::eval_scaling(m, *model, 1024, {}), file_scaling);
  }
  fs::remove(f);
}

size_t count_of(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

TEST(EvalPlot, SvgHasOnePolylinePerSeries) {
  longrope::PlotSpec s;
  s.ylabel = "ppl";
  s.log_y = true;
  s.vline_x = 512;
  s.series = {{"a", {256, 512, 1024}, {10, 20, 1e4}, {}, {}},
              {"b<&>", {256, 1024}, {12, std::nan("")}, {}, {}}};
  // Error bars on series a: two points with an interval, one without.
  s.series[0].y_lo = {8, std::nan(""), 9e3};
  s.series[0].y_hi = {12, std::nan(""), 1.1e4};
  const fs::path p = fs::temp_directory_path() / ("longrope_plot_" + std::to_string(::getpid()));
  longrope::write_plot_svg(s, p.string() + ".svg");
  const std::string svg = slurp(p.string() + ".svg");
  EXPECT_EQ(check_svg(svg), 2);
  EXPECT_EQ(count_of(svg, "class=\"errorbar\""), 2u);
  ASSERT_TRUE(longrope::plot_png_supported()) << "built without PLplot (CMake requires it)";
  {
    longrope::write_plot_png(s, p.string() + ".png");
    expect_png(p.string() + ".png");
  }
  // A method keeps its colour whatever the other series are, and two series never share a style.
  auto series_style = [](const std::string& svg, const std::string& label) {
    const size_t at = svg.find("data-label=\"" + label + "\"");
    if (at == std::string::npos) return std::string();
    const size_t a = svg.find("stroke=\"", at), b = svg.find("\"/>", a);
    return svg.substr(a, b - a);  // stroke colour, width and dash pattern
  };
  s.series = {{"yarn", {256, 512}, {10, 20}, {}, {}},
              {"searched-a", {256, 512}, {11, 21}, {}, {}},
              {"searched-b", {256, 512}, {12, 22}, {}, {}}};
  longrope::write_plot_svg(s, p.string() + ".svg");
  const std::string three = slurp(p.string() + ".svg");
  s.series = {{"ntk", {256, 512}, {9, 19}, {}, {}}, {"yarn", {256, 512}, {10, 20}, {}, {}}};
  longrope::write_plot_svg(s, p.string() + ".svg");
  const std::string two = slurp(p.string() + ".svg");
  EXPECT_EQ(series_style(three, "yarn"), series_style(two, "yarn"));
  EXPECT_NE(series_style(three, "yarn"), "");
  EXPECT_NE(series_style(three, "searched-a"), series_style(three, "searched-b"));
  EXPECT_NE(series_style(three, "searched-a"), series_style(three, "yarn"));
  EXPECT_NE(series_style(two, "ntk"), series_style(two, "yarn"));
  // One length only: bars side by side instead of lone points.
  s.series = {{"yarn", {4096}, {10}, {9}, {12}}, {"ntk", {4096}, {11}, {}, {}}};
  longrope::write_plot_svg(s, p.string() + ".svg");
  const std::string bars = slurp(p.string() + ".svg");
  EXPECT_EQ(check_svg(bars), 0);
  EXPECT_EQ(count_of(bars, "class=\"bar\""), 2u);
  EXPECT_EQ(count_of(bars, "class=\"errorbar\""), 1u);
  longrope::write_plot_png(s, p.string() + ".png");
  expect_png(p.string() + ".png");
  s.series = {{"empty", {256}, {std::nan("")}, {}, {}}};
  EXPECT_THROW(longrope::write_plot_svg(s, p.string() + ".svg"), longrope::Error);
  fs::remove(p.string() + ".svg");
  fs::remove(p.string() + ".png");
}

// Every rule-based method has its own marker (and colour) in every plot; one length is drawn as
// bars on a linear axis from zero even when the spec asks for a log axis; the original context's
// line is left out when it lies more than an octave from every length.
TEST(EvalPlot, RuleMethodsHaveDistinctMarkersAndBarsStartAtZero) {
  const fs::path p = fs::temp_directory_path() / ("longrope_mark_" + std::to_string(::getpid()));
  longrope::PlotSpec s;
  s.ylabel = "ppl";
  s.log_y = true;
  s.vline_x = 512;
  for (const char* m : {"none", "linear", "ntk", "dynamic", "yarn", "llama3"})
    s.series.push_back({m, {1024, 2048}, {30, 40}, {}, {}});
  longrope::write_plot_svg(s, p.string() + ".svg");
  const std::string svg = slurp(p.string() + ".svg");
  // The legend's marker of each series, without its position and colour.
  std::set<std::string> shapes;
  for (size_t at = svg.find("<g class=\"legend\">"); at != std::string::npos;
       at = svg.find("<g class=\"legend\">", at + 1)) {
    const size_t a = svg.find("/>", at) + 2, b = svg.find("<text", a);
    std::string shape = svg.substr(a, b - a);
    std::string kept;
    bool in_quotes = false;  // drop attribute values: coordinates and colours
    for (char c : shape) {
      if (c == '"') in_quotes = !in_quotes;
      if (!in_quotes || c == '"') kept += c;
    }
    // ... but keep the path's commands, which give the shape.
    const size_t d = shape.find("d=\"");
    if (d != std::string::npos)
      for (char c : shape.substr(d + 3, shape.find('"', d + 3) - d - 3))
        if (std::isalpha(static_cast<unsigned char>(c))) kept += c;
    shapes.insert(kept);
  }
  EXPECT_EQ(shapes.size(), 6u) << svg;
  EXPECT_NE(svg.find("class=\"vline\""), std::string::npos);  // 512: an octave below 1024

  s.series = {{"yarn", {1024}, {30}, {}, {}}, {"ntk", {1024}, {40}, {}, {}}};
  s.vline_x = 8192;  // three octaves above the only length
  longrope::write_plot_svg(s, p.string() + ".svg");
  const std::string bars = slurp(p.string() + ".svg");
  EXPECT_EQ(count_of(bars, "class=\"bar\""), 2u);
  EXPECT_EQ(bars.find("class=\"vline\""), std::string::npos);
  EXPECT_EQ(bars.find("(log scale)"), std::string::npos);  // a linear axis ...
  EXPECT_NE(bars.find(">0</text>"), std::string::npos);    // ... from zero
  longrope::write_plot_png(s, p.string() + ".png");
  expect_png(p.string() + ".png");
  fs::remove(p.string() + ".svg");
  fs::remove(p.string() + ".png");
}

// Tick labels cover the data: an automatic axis ends on a tick at both ends (log and linear), and
// the legend leaves room for a long label inside the image.
TEST(EvalPlot, AxisEndsOnTicksAndTheLegendAndTitleFit) {
  const std::string label(60, 'x');
  const fs::path p = fs::temp_directory_path() / ("longrope_axis_" + std::to_string(::getpid()));
  for (bool log_y : {true, false}) {
    longrope::PlotSpec s;
    s.log_y = log_y;
    s.title = std::string(130, 't');  // wider than the image at 16 px
    s.series = {{"yarn", {256, 512, 1024}, {49, 60, 170}, {}, {}},
                {label, {256, 512, 1024}, {55, 58, 130}, {}, {}}};
    longrope::write_plot_svg(s, p.string() + ".svg");
    const std::string svg = slurp(p.string() + ".svg");
    // The title: centred on the 900 px image, its font shrunk so that it fits (9.2 px per
    // character at 16 px).
    const size_t ti = svg.find(">" + s.title + "</text>");
    ASSERT_NE(ti, std::string::npos);
    double title_x = 0, title_size = 0;
    ASSERT_EQ(std::sscanf(svg.c_str() + svg.rfind("<text x=\"", ti),
                          "<text x=\"%lf\" y=\"25\" text-anchor=\"middle\" font-size=\"%lf\"",
                          &title_x, &title_size),
              2);
    EXPECT_EQ(title_x, 450.0);
    EXPECT_LT(title_size, 16.0);
    EXPECT_LE(130 * 9.2 * title_size / 16, 900.0 - 20 + 0.5);  // the size is printed to 0.01
    // The frame: <rect x="80" y="TOP" width="PW" height="PH" fill="none" ...>.
    const size_t fr = svg.find("fill=\"none\" stroke=\"black\"");
    ASSERT_NE(fr, std::string::npos);
    const size_t rect = svg.rfind("<rect", fr);
    double fx = 0, top = 0, pw = 0, ph = 0;
    ASSERT_EQ(
        std::sscanf(svg.c_str() + rect, "<rect x=\"%lf\" y=\"%lf\" width=\"%lf\" height=\"%lf\"",
                    &fx, &top, &pw, &ph),
        4);
    // Horizontal grid lines (one per y tick).
    std::vector<double> ys;
    const size_t g0 = svg.find("<g class=\"grid\""), g1 = svg.find("</g>", g0);
    for (size_t at = svg.find("<line", g0); at < g1; at = svg.find("<line", at + 1)) {
      double x1, y1, x2, y2;
      if (std::sscanf(svg.c_str() + at, "<line x1=\"%lf\" y1=\"%lf\" x2=\"%lf\" y2=\"%lf\"", &x1,
                      &y1, &x2, &y2) == 4 &&
          y1 == y2)
        ys.push_back(y1);
    }
    ASSERT_GE(ys.size(), 3u) << log_y;
    EXPECT_NEAR(*std::min_element(ys.begin(), ys.end()), top, 0.11) << log_y;
    EXPECT_NEAR(*std::max_element(ys.begin(), ys.end()), top + ph, 0.11) << log_y;
    // The long label's text starts where 60 characters of 13 px text still fit.
    const size_t lab = svg.find(">" + label + "</text>");
    ASSERT_NE(lab, std::string::npos);
    const size_t tx = svg.rfind("<text x=\"", lab);
    const double x = std::stod(svg.substr(tx + 9));
    EXPECT_LE(x + 7.5 * 60, 900.0) << log_y;
    EXPECT_GT(pw, 300.0);
    longrope::write_plot_png(s, p.string() + ".png");
    expect_png(p.string() + ".png");
  }
  fs::remove(p.string() + ".svg");
  fs::remove(p.string() + ".png");
}

// Points (pixel x, y) of the polyline of the series with this label; empty when there is none.
std::vector<std::pair<double, double>> polyline_points(const std::string& svg,
                                                       const std::string& label) {
  std::vector<std::pair<double, double>> out;
  const size_t at = svg.find("<polyline class=\"series\" data-label=\"" + label + "\"");
  if (at == std::string::npos) return out;
  const size_t a = svg.find("points=\"", at) + 8, b = svg.find('"', a);
  std::istringstream in(svg.substr(a, b - a));
  std::string xy;
  while (in >> xy) {
    const size_t comma = xy.find(',');
    out.emplace_back(std::stod(xy.substr(0, comma)), std::stod(xy.substr(comma + 1)));
  }
  return out;
}

// The x axis' tick labels (text-anchor middle in the ticks group) and their pixel x, left to right.
std::vector<std::pair<double, std::string>> x_ticks(const std::string& svg) {
  std::vector<std::pair<double, std::string>> out;
  const size_t g0 = svg.find("<g class=\"ticks\">"), g1 = svg.find("</g>", g0);
  const std::string open = "<text x=\"";
  for (size_t at = svg.find(open, g0); at < g1; at = svg.find(open, at + 1)) {
    const size_t gt = svg.find('>', at), end = svg.find("</text>", gt);
    if (svg.substr(at, gt - at).find("text-anchor=\"middle\"") == std::string::npos) continue;
    out.emplace_back(std::stod(svg.substr(at + open.size())), svg.substr(gt + 1, end - gt - 1));
  }
  return out;
}

std::vector<std::string> tick_labels(const std::string& svg) {
  std::vector<std::string> out;
  for (const auto& t : x_ticks(svg)) out.push_back(t.second);
  return out;
}

// A linear x axis (a training loss over optimizer steps): x used as it is, 0 and negatives
// included, evenly spaced steps evenly spaced in pixels, nice ticks, no "(log2 scale)".
TEST(EvalPlot, LinearXAxis) {
  const fs::path p = fs::temp_directory_path() / ("longrope_linx_" + std::to_string(::getpid()));
  const double nan = std::nan(""), inf = std::numeric_limits<double>::infinity();
  longrope::PlotSpec s;
  s.log_x = false;
  s.xlabel = "optimizer step";
  s.ylabel = "loss";
  s.vline_x = 50;
  s.vline_label = "warmup end";
  longrope::PlotSeries train{"train", {}, {}, {}, {}};
  for (int i = 0; i <= 10; ++i) {
    train.x.push_back(10.0 * i);
    train.y.push_back(4.0 / (1 + 0.3 * i));
    train.y_lo.push_back(i % 2 ? nan : train.y.back() - 0.1);  // 6 error bars
    train.y_hi.push_back(i % 2 ? nan : train.y.back() + 0.1);
  }
  s.series = {train, {"val", {0, nan, 50, inf, 100, -inf}, {3.9, 3.0, 2.5, 2.0, 1.9, 1.0}, {}, {}}};
  longrope::write_plot_svg(s, p.string() + ".svg");
  std::string svg = slurp(p.string() + ".svg");
  EXPECT_EQ(check_svg(svg), 2);
  const auto pts = polyline_points(svg, "train");
  ASSERT_EQ(pts.size(), 11u);
  const double dx = (pts.back().first - pts.front().first) / 10;
  EXPECT_GT(dx, 40.0);
  for (size_t i = 1; i < pts.size(); ++i)
    EXPECT_NEAR(pts[i].first - pts[i - 1].first, dx, 0.01) << i;
  EXPECT_EQ(polyline_points(svg, "val").size(), 3u);  // NaN and infinite x are gaps
  EXPECT_EQ(tick_labels(svg), (std::vector<std::string>{"0", "20", "40", "60", "80", "100"}));
  const auto ticks = x_ticks(svg);
  EXPECT_NEAR(ticks.front().first, pts.front().first, 0.06);  // tick "0" under the point x = 0
  EXPECT_NEAR(ticks.back().first, pts.back().first, 0.06);    // tick "100" under x = 100
  EXPECT_EQ(svg.find("log2 scale"), std::string::npos);
  EXPECT_NE(svg.find(">optimizer step</text>"), std::string::npos);
  EXPECT_EQ(count_of(svg, "class=\"errorbar\""), 6u);
  EXPECT_EQ(count_of(svg, "class=\"legend\""), 2u);
  EXPECT_EQ(count_of(svg, "class=\"bar\""), 0u);
  // The vertical line at step 50: half way between steps 0 and 100.
  const size_t vl = svg.find("<line class=\"vline\" x1=\"");
  ASSERT_NE(vl, std::string::npos);
  EXPECT_NEAR(std::stod(svg.substr(vl + 24)), (pts.front().first + pts.back().first) / 2, 0.06);
  EXPECT_NE(svg.find(">warmup end</text>"), std::string::npos);
  ASSERT_TRUE(longrope::plot_png_supported());
  longrope::write_plot_png(s, p.string() + ".png");
  expect_png(p.string() + ".png");

  // The same data on the default log2 axis: x = 0 stays a gap there.
  s.log_x = true;
  s.vline_x.reset();
  s.series = {{"train", {0, 256, 512, 1024}, {4, 3, 2, 1}, {}, {}}};
  longrope::write_plot_svg(s, p.string() + ".svg");
  svg = slurp(p.string() + ".svg");
  EXPECT_EQ(polyline_points(svg, "train").size(), 3u);
  EXPECT_NE(svg.find(">optimizer step (log2 scale)</text>"), std::string::npos);
  EXPECT_EQ(tick_labels(svg), (std::vector<std::string>{"256", "512", "1k"}));
  s.log_x = false;  // ... and a point on a linear one
  longrope::write_plot_svg(s, p.string() + ".svg");
  EXPECT_EQ(polyline_points(slurp(p.string() + ".svg"), "train").size(), 4u);

  // Tick rules: negative x and a step of 5; fractions with integers written without decimals;
  // thousands; one x only (lines, not bars, around a padded range).
  const std::vector<std::pair<std::vector<double>, std::vector<std::string>>> cases = {
      {{-20, -10, 0, 10}, {"-20", "-15", "-10", "-5", "0", "5", "10"}},
      {{0, 0.5, 1}, {"0", "0.2", "0.4", "0.6", "0.8", "1"}},
      {{0, 2500, 5000}, {"0", "1000", "2000", "3000", "4000", "5000"}},
      {{100}, {"90", "95", "100", "105", "110"}},
  };
  for (const auto& [xs, labels] : cases) {
    s.series = {{"a", xs, std::vector<double>(xs.size(), 1.0), {}, {}},
                {"b", xs, std::vector<double>(xs.size(), 2.0), {}, {}}};
    longrope::write_plot_svg(s, p.string() + ".svg");
    svg = slurp(p.string() + ".svg");
    EXPECT_EQ(check_svg(svg), 2) << xs.front();
    EXPECT_EQ(count_of(svg, "class=\"bar\""), 0u) << xs.front();
    EXPECT_EQ(tick_labels(svg), labels) << xs.front();
    EXPECT_EQ(polyline_points(svg, "a").size(), xs.size()) << xs.front();
    longrope::write_plot_png(s, p.string() + ".png");
    expect_png(p.string() + ".png");
  }
  fs::remove(p.string() + ".svg");
  fs::remove(p.string() + ".png");
}

}  // namespace
