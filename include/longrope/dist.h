// Spreading independent work over MPI ranks (docs/distributed.md). Rank 0 leads: it decides what
// to compute and hands out tasks, one at a time, to the first free rank (dynamic assignment);
// every other rank serves tasks until told to stop. A task and its result are opaque strings, so
// this layer knows nothing of search candidates or evaluation cells.
//
// Built without MPI (or run without an MPI launcher) the world is one rank and every function
// here runs the work in this process, so callers need no #ifdef.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace longrope::dist {

struct World {
  int rank = 0;
  int size = 1;
  int local_size = 1;  // ranks on this host
  std::string host;
  bool mpi = false;  // MPI was initialised
};

// Initialises MPI when the process was started by an MPI launcher (mpirun, srun; detected from the
// launcher's environment), else leaves the world at one rank. Call once, first thing in main.
void init(int* argc, char*** argv);
// Finalises MPI (when initialised). Call once, last thing in main.
void finalize();
// Ends every rank of the job at once (MPI_Abort); for failures that leave the protocol broken.
// Exits the process in a one-rank world.
[[noreturn]] void abort(int code);
const World& world();
inline bool is_root() {
  return world().rank == 0;
}
// "rank R (host H)" for this rank, "rank R" for another.
std::string rank_name(int rank);

// Thrown on ranks other than 0 when the job stops for a reason rank 0 reports: main exits
// non-zero without printing anything more.
struct Stopped : std::runtime_error {
  Stopped() : std::runtime_error("stopped by rank 0") {}
};

// The start-up check, collective over all ranks. Each rank passes what it prepared (a JSON object
// of fingerprints) or, when its preparation failed, the error. Rank 0 compares every rank's
// object with its own, key by key; when a rank failed or differs, every rank throws: rank 0 an
// Error naming the rank, its host and what differs, the others Stopped.
void check_same_inputs(const nlohmann::json& fingerprint, const std::string& error);
// True once check_same_inputs passed: from then on a rank's own failure must end the job, as
// rank 0 may be waiting on it; before, every rank fails alike on the same flags.
bool inputs_checked();

// A task function: payload in, result out. It may throw; the error travels to rank 0.
using TaskFn = std::function<std::string(const std::string&)>;

struct FarmOptions {
  // Rank 0 also computes tasks (on a second thread, while the main thread hands out tasks).
  bool root_computes = true;
  // Names a task in an error message ("candidate 3 of iteration 2").
  std::function<std::string(size_t)> label;
  // Called on rank 0, in completion order, as each result arrives.
  std::function<void(size_t, const std::string&)> on_result;
};

// Rank 0's view of the ranks as a pool of evaluators: tasks are queued with submit() and go to
// the first free rank (rank 0 itself too when root_computes); next() waits for any result. In a
// one-rank world a task runs inside next(), in submission order, on the calling thread.
class Pool {
 public:
  Pool(TaskFn compute, FarmOptions opt = {});
  ~Pool();  // waits for tasks still running (their results are dropped)
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;
  // How many tasks run at once.
  int slots() const;
  void submit(size_t id, std::string payload);
  // The next finished task: {id, result}. When a task failed, no more tasks are handed out, those
  // running are waited for, and Error "rank R (host H) failed on <label>: <what>" is thrown.
  std::pair<size_t, std::string> next();

 private:
  struct Impl;
  std::unique_ptr<Impl> p_;
};

// Rank 0: computes every payload through a Pool and returns the results in payload order,
// whatever the completion order (on_result is called as each arrives).
std::vector<std::string> farm(const std::vector<std::string>& payloads, const TaskFn& compute,
                              const FarmOptions& opt = {});

// Ranks other than 0: computes the tasks rank 0 sends until rank 0 calls stop_workers().
void serve(const TaskFn& compute);
// Rank 0: tells every other rank to leave serve(): normally when ok, else by throwing Stopped
// (the job failed on rank 0). Idempotent; a no-op in a one-rank world.
void stop_workers(bool ok = true);

// The threads a rank uses when the user gave none: the cores this process may run on, shared
// among the ranks on this host.
int default_threads();
// Cores this process may run on (its CPU affinity).
int usable_cores();

}  // namespace longrope::dist
