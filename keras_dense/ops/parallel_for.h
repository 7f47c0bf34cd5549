// Shared by the custom ops: splitting a kernel's work over TensorFlow's CPU worker threads, and
// compiling hot loops for more than one instruction set.
#ifndef KERAS_DENSE_OPS_PARALLEL_FOR_H_
#define KERAS_DENSE_OPS_PARALLEL_FOR_H_

#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/util/work_sharder.h"

// The hot loops are compiled for AVX2 and for baseline x86-64 and chosen when the library is
// loaded. The arithmetic per element is the same in both (no FMA contraction), so lattices and
// filtered values do not depend on the CPU.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define KERAS_DENSE_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define KERAS_DENSE_MULTIVERSION
#endif

namespace keras_dense {

// Splits `total` units of work, each costing about `cost` cycles, over the worker threads.
// Work below `min_parallel_cost` (estimated) cycles runs on the calling thread: a parallel
// region costs a synchronisation, which is slow when other processes keep the cores busy.
template <typename Fn>
void ParallelFor(::tensorflow::OpKernelContext* context, int64_t total, int64_t cost,
                 int64_t min_parallel_cost, Fn fn) {
  if (total * cost < min_parallel_cost) {
    if (total > 0) fn(0, total);
    return;
  }
  const auto* threads = context->device()->tensorflow_cpu_worker_threads();
  ::tensorflow::Shard(threads->num_threads, threads->workers, total, cost,
                      [&fn](int64_t begin, int64_t end) { fn(begin, end); });
}

}  // namespace keras_dense

#endif  // KERAS_DENSE_OPS_PARALLEL_FOR_H_
