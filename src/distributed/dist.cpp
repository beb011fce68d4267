// MPI task farm (include/longrope/dist.h). Only this file includes mpi.h.
#include "longrope/dist.h"

#include <fmt/core.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <new>
#include <thread>

#include "longrope/error.h"

#ifdef LONGROPE_HAVE_MPI
#include <mpi.h>
#endif

namespace longrope::dist {

namespace {

World g_world;
bool g_checked = false;

std::string this_host() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

// What a failed task reports: the exception's text, out-of-memory said plainly.
std::string describe_current_exception() {
  try {
    throw;
  } catch (const std::bad_alloc&) {
    return "out of memory";
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "unknown failure";
  }
}

// LONGROPE_FAIL_TASK=R:K makes the K-th task computed on rank R throw (to test how a failing
// rank stops a job; docs/distributed.md).
void maybe_inject_failure() {
  static std::atomic<int> count{0};
  const char* spec = std::getenv("LONGROPE_FAIL_TASK");
  if (!spec) return;
  int rank = -1, k = -1;
  if (std::sscanf(spec, "%d:%d", &rank, &k) != 2) return;
  if (rank == g_world.rank && ++count == k)
    throw Error(fmt::format("injected failure (LONGROPE_FAIL_TASK={})", spec));
}

// Runs one task in this process: {ok, result or error text}.
std::pair<bool, std::string> run_task(const TaskFn& fn, const std::string& payload) {
  try {
    maybe_inject_failure();
    return {true, fn(payload)};
  } catch (...) {
    return {false, describe_current_exception()};
  }
}

// Waits with a growing sleep (50 us to 5 ms) so that idle ranks leave the cores to busy ones
// (ranks may share a host with other ranks' compute threads).
class Backoff {
 public:
  void reset() { us_ = 50; }
  void wait() {
    std::this_thread::sleep_for(std::chrono::microseconds(us_));
    us_ = std::min(us_ * 2, 5000);
  }

 private:
  int us_ = 50;
};

}  // namespace

int usable_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

int default_threads() {
  return std::max(1, usable_cores() / std::max(1, g_world.local_size));
}

const World& world() {
  return g_world;
}
bool inputs_checked() {
  return g_checked;
}

std::string rank_name(int rank) {
  if (rank == g_world.rank) return fmt::format("rank {} (host {})", rank, g_world.host);
  return fmt::format("rank {}", rank);
}

#ifdef LONGROPE_HAVE_MPI

namespace {

constexpr int kTagTask = 1;
constexpr int kTagResult = 2;
constexpr int kTagStop = 3;

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) throw Error(fmt::format("MPI: {} failed (error {})", what, rc));
}

// A message: an 8-byte id, a 1-byte flag, then the bytes.
std::string pack(uint64_t id, bool ok, const std::string& body) {
  std::string m(9 + body.size(), '\0');
  std::memcpy(m.data(), &id, 8);
  m[8] = ok ? 1 : 0;
  std::memcpy(m.data() + 9, body.data(), body.size());
  return m;
}
void unpack(const std::string& m, uint64_t* id, bool* ok, std::string* body) {
  if (m.size() < 9) throw Error("MPI: truncated message between ranks");
  std::memcpy(id, m.data(), 8);
  *ok = m[8] != 0;
  body->assign(m, 9);
}

void send(const std::string& m, int dest, int tag) {
  check(MPI_Send(m.data(), static_cast<int>(m.size()), MPI_BYTE, dest, tag, MPI_COMM_WORLD),
        "MPI_Send");
}
std::string recv(const MPI_Status& st) {
  int n = 0;
  check(MPI_Get_count(&st, MPI_BYTE, &n), "MPI_Get_count");
  std::string m(static_cast<size_t>(n), '\0');
  check(
      MPI_Recv(m.data(), n, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, MPI_COMM_WORLD, MPI_STATUS_IGNORE),
      "MPI_Recv");
  return m;
}
bool probe(int source, int tag, MPI_Status* st) {
  int flag = 0;
  check(MPI_Iprobe(source, tag, MPI_COMM_WORLD, &flag, st), "MPI_Iprobe");
  return flag != 0;
}

int g_thread_level = 0;
bool g_stopped = false;

// The start-up verdict on rank 0: "" when every rank prepared the same inputs.
std::string compare_inputs(const std::vector<nlohmann::json>& all) {
  const nlohmann::json& root = all[0];
  if (!root.at("error").get<std::string>().empty()) return root.at("error").get<std::string>();
  const nlohmann::json& fp0 = root.at("fp");
  for (size_t r = 1; r < all.size(); ++r) {
    const std::string who =
        fmt::format("rank {} (host {})", r, all[r].at("host").get<std::string>());
    const std::string err = all[r].at("error").get<std::string>();
    if (!err.empty()) return fmt::format("{}: {}", who, err);
    const nlohmann::json& fp = all[r].at("fp");
    for (const auto& [k, v] : fp0.items()) {
      const nlohmann::json other = fp.contains(k) ? fp.at(k) : nlohmann::json();
      if (other != v)
        return fmt::format(
            "{} differs from rank 0 (host {}) in its {}: {} there, {} on rank 0; every rank needs "
            "the same model, texts and flags (docs/distributed.md)",
            who, root.at("host").get<std::string>(), k, other.dump(), v.dump());
    }
  }
  return "";
}

}  // namespace

void init(int* argc, char*** argv) {
  g_world.host = this_host();
  if (!launched_by_mpi()) return;
  int provided = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) return;
  g_thread_level = provided;
  g_world.mpi = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_world.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_world.size);
  MPI_Comm local;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &local) ==
      MPI_SUCCESS) {
    MPI_Comm_size(local, &g_world.local_size);
    MPI_Comm_free(&local);
  }
}

void finalize() {
  if (g_world.mpi) MPI_Finalize();
  g_world.mpi = false;
}

void abort(int code) {
  if (g_world.mpi) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

void check_same_inputs(const nlohmann::json& fingerprint, const std::string& error) {
  if (g_world.size == 1) {
    if (!error.empty()) throw Error(error);
    g_checked = true;
    return;
  }
  const std::string mine =
      nlohmann::json{{"host", g_world.host}, {"fp", fingerprint}, {"error", error}}.dump();
  int len = static_cast<int>(mine.size());
  std::vector<int> lens(static_cast<size_t>(g_world.size)), offs(lens.size());
  check(MPI_Gather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Gather");
  std::string all;
  if (is_root()) {
    int total = 0;
    for (size_t r = 0; r < lens.size(); ++r) {
      offs[r] = total;
      total += lens[r];
    }
    all.resize(static_cast<size_t>(total));
  }
  check(MPI_Gatherv(mine.data(), len, MPI_BYTE, all.data(), lens.data(), offs.data(), MPI_BYTE, 0,
                    MPI_COMM_WORLD),
        "MPI_Gatherv");
  std::string verdict;
  if (is_root()) {
    std::vector<nlohmann::json> each;
    for (size_t r = 0; r < lens.size(); ++r)
      each.push_back(nlohmann::json::parse(
          all.substr(static_cast<size_t>(offs[r]), static_cast<size_t>(lens[r]))));
    verdict = compare_inputs(each);
  }
  int vlen = static_cast<int>(verdict.size());
  check(MPI_Bcast(&vlen, 1, MPI_INT, 0, MPI_COMM_WORLD), "MPI_Bcast");
  verdict.resize(static_cast<size_t>(vlen));
  check(MPI_Bcast(verdict.data(), vlen, MPI_BYTE, 0, MPI_COMM_WORLD), "MPI_Bcast");
  if (verdict.empty()) {
    g_checked = true;
    return;
  }
  if (is_root()) throw Error(verdict);
  throw Stopped();
}

void serve(const TaskFn& compute) {
  Backoff backoff;
  for (;;) {
    MPI_Status st;
    if (!probe(0, MPI_ANY_TAG, &st)) {
      backoff.wait();
      continue;
    }
    backoff.reset();
    const std::string m = recv(st);
    uint64_t id = 0;
    bool ok = false;
    std::string body;
    unpack(m, &id, &ok, &body);
    if (st.MPI_TAG == kTagStop) {
      if (!ok) throw Stopped();
      return;
    }
    auto [good, out] = run_task(compute, body);
    if (!good) out.insert(0, g_world.host + '\n');
    send(pack(id, good, out), 0, kTagResult);
  }
}

void stop_workers(bool ok) {
  if (!g_world.mpi || g_world.size == 1 || !is_root() || g_stopped) return;
  g_stopped = true;
  for (int r = 1; r < g_world.size; ++r) send(pack(0, ok, ""), r, kTagStop);
}

#else  // no MPI: a one-rank world

void init(int*, char***) {
  g_world.host = this_host();
}
void finalize() {}
void abort(int code) {
  std::_Exit(code);
}

void check_same_inputs(const nlohmann::json&, const std::string& error) {
  if (!error.empty()) throw Error(error);
  g_checked = true;
}

void serve(const TaskFn&) {}
void stop_workers(bool) {}

#endif

// ---- the pool --------------------------------------------------------------------------------

struct Pool::Impl {
  TaskFn compute;
  FarmOptions opt;
  std::deque<std::pair<size_t, std::string>> queue;  // not yet handed out
  std::deque<std::pair<size_t, std::string>> ready;  // finished, not yet returned by next()
  std::string error;                                 // the first failure
  bool local = false;                                // rank 0 computes too
  int64_t in_flight = 0;
  std::vector<int64_t> busy;  // the task each rank runs, -1 when idle (index 0: rank 0 itself)
  std::future<std::pair<bool, std::string>> local_job;

  std::string label(size_t id) const {
    return opt.label ? opt.label(id) : fmt::format("task {}", id);
  }
  // The one line of a failed task: who failed on what (the rank only under MPI).
  std::string failure(int rank, const std::string& host, size_t id, const std::string& what) const {
    return g_world.mpi
               ? fmt::format("rank {} (host {}) failed on {}: {}", rank, host, label(id), what)
               : fmt::format("{}: {}", label(id), what);
  }
  void finish(int rank, const std::string& host, size_t id, bool ok, std::string body) {
    busy[static_cast<size_t>(rank)] = -1;
    --in_flight;
    if (!ok) {
      if (error.empty()) error = failure(rank, host, id, body);
      return;
    }
    ready.emplace_back(id, std::move(body));
  }
  // Hands out queued tasks to free ranks and collects finished ones; true if anything happened.
  bool pump();
};

#ifdef LONGROPE_HAVE_MPI
bool Pool::Impl::pump() {
  bool progressed = false;
  if (error.empty()) {
    for (int r = 1; r < g_world.size && !queue.empty(); ++r) {
      if (busy[static_cast<size_t>(r)] >= 0) continue;
      auto [id, payload] = std::move(queue.front());
      queue.pop_front();
      send(pack(id, true, payload), r, kTagTask);
      busy[static_cast<size_t>(r)] = static_cast<int64_t>(id);
      ++in_flight;
      progressed = true;
    }
    if (local && busy[0] < 0 && !queue.empty()) {
      auto task = std::move(queue.front());
      queue.pop_front();
      busy[0] = static_cast<int64_t>(task.first);
      ++in_flight;
      local_job = std::async(std::launch::async, [this, payload = std::move(task.second)] {
        return run_task(compute, payload);
      });
      progressed = true;
    }
  }
  MPI_Status st;
  while (probe(MPI_ANY_SOURCE, kTagResult, &st)) {
    uint64_t id = 0;
    bool ok = false;
    std::string body;
    unpack(recv(st), &id, &ok, &body);
    if (busy[static_cast<size_t>(st.MPI_SOURCE)] != static_cast<int64_t>(id))
      throw Error(fmt::format("MPI: rank {} answered a task it was not given", st.MPI_SOURCE));
    // A worker's error is "host\nwhat".
    std::string host;
    if (!ok) {
      const size_t nl = body.find('\n');
      host = body.substr(0, nl);
      body = nl == std::string::npos ? "" : body.substr(nl + 1);
    }
    finish(st.MPI_SOURCE, host, id, ok, std::move(body));
    progressed = true;
  }
  if (busy[0] >= 0 && local_job.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
    auto [ok, body] = local_job.get();
    finish(0, g_world.host, static_cast<size_t>(busy[0]), ok, std::move(body));
    progressed = true;
  }
  return progressed;
}
#else
bool Pool::Impl::pump() {
  return false;
}
#endif

Pool::Pool(TaskFn compute, FarmOptions opt) : p_(std::make_unique<Impl>()) {
  if (g_world.size > 1 && !is_root()) throw Error("a task pool on a rank other than 0");
  p_->compute = std::move(compute);
  p_->opt = std::move(opt);
  p_->busy.assign(static_cast<size_t>(g_world.size), -1);
#ifdef LONGROPE_HAVE_MPI
  p_->local = g_world.size > 1 && p_->opt.root_computes && g_thread_level >= MPI_THREAD_FUNNELED;
#endif
}

Pool::~Pool() {
  if (p_->busy[0] >= 0 && p_->local_job.valid()) p_->local_job.wait();
}

int Pool::slots() const {
  if (g_world.size == 1) return 1;
  return g_world.size - 1 + (p_->local ? 1 : 0);
}

void Pool::submit(size_t id, std::string payload) {
  p_->queue.emplace_back(id, std::move(payload));
}

std::pair<size_t, std::string> Pool::next() {
  Impl& p = *p_;
  if (g_world.size == 1) {  // in this process, in submission order
    if (p.queue.empty()) throw Error("dist::Pool::next with nothing submitted");
    auto [id, payload] = std::move(p.queue.front());
    p.queue.pop_front();
    auto [ok, out] = run_task(p.compute, payload);
    if (!ok) throw Error(p.failure(0, g_world.host, id, out));
    return {id, std::move(out)};
  }
  Backoff backoff;
  for (;;) {
    const bool progressed = p.pump();
    if (!p.error.empty()) {
      if (p.in_flight == 0) throw Error(p.error);
    } else if (!p.ready.empty()) {
      auto r = std::move(p.ready.front());
      p.ready.pop_front();
      return r;
    } else if (p.queue.empty() && p.in_flight == 0) {
      throw Error("dist::Pool::next with nothing submitted");
    }
    if (progressed) {
      backoff.reset();
    } else {
      backoff.wait();
    }
  }
}

std::vector<std::string> farm(const std::vector<std::string>& payloads, const TaskFn& compute,
                              const FarmOptions& opt) {
  Pool pool(compute, opt);
  for (size_t i = 0; i < payloads.size(); ++i) pool.submit(i, payloads[i]);
  std::vector<std::string> results(payloads.size());
  for (size_t k = 0; k < payloads.size(); ++k) {
    auto [id, out] = pool.next();
    results[id] = std::move(out);
    if (opt.on_result) opt.on_result(id, results[id]);
  }
  return results;
}

}  // namespace longrope::dist
