// Running one step's equal element ranges on several threads.
//
// [Note: why OpenMP, and the same OpenMP as torch]
// An optimizer step usually follows torch CPU ops (backward, gradient clipping). torch runs
// those on libgomp's thread team, whose threads keep spinning for a while after each op. A
// private thread pool would have to fight those spinning threads for the cores (measured: the
// median step got ~30% slower right after a torch op on a 2-core machine). Running the step
// as an OpenMP parallel region instead hands the work to those very threads. The extension
// links libgomp.so.1; zero_optim imports torch first, so in a torch process the dynamic
// linker resolves it to the libgomp torch already loaded: one thread team for both.
//
// libgomp cannot start a parallel region in a child forked after the parent used one (it
// hangs, as torch's own ops would). After such a fork the step runs on one thread.
#pragma once

#include <functional>

namespace zero_optim {

// Calls task(i) for every i in [0, n), in parallel; returns the number of threads used.
int parallel_run(int n, const std::function<void(int)>& task);

}  // namespace zero_optim
