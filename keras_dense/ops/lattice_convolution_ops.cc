// Learned filters on the permutohedral lattice (Jampani, Kiefel & Gehler, "Learning Sparse
// High Dimensional Filters", CVPR 2016) as TensorFlow CPU ops: the compiled twin of
// keras_dense/ops/lattice_convolution.py. A lattice convolution is splat -> stencil -> slice;
// each stage is one op here, and each op's gradient is another of them (registered in
// keras_dense/ops/lattice_convolution_op.py), so gradients never leave compiled code.
//
// Lattice rows are flat over the batch: image b's lattice point m is row b*M + m (L = B*M),
// as the pure-TF twin lays them out.
//
// KerasDenseLatticeSplat(values (B, N, C) T, splat_indices (B, N, d+1) int32,
//                        barycentric_weights (B, N, d+1) float32, num_rows () int32 M)
//   -> (B*M, C) T: row b*M + m = sum of weights[b, n, k] * values[b, n] over the vertices
//      (n, k) of image b with splat_indices[b, n, k] = m.
// KerasDenseLatticeSlice(lattice (B*M, C) T, splat_indices, barycentric_weights)
//   -> (B, N, C) T: out[b, n] = sum_k weights[b, n, k] * lattice[b*M + splat_indices[b, n, k]],
//      the transpose of the splat.
// KerasDenseLatticeStencil(lattice (L, C_in) T, rows (K, L) int32, taps T, opposite (K,) int32)
//   -> (L, C_out) T: out[l] = sum_t lattice[rows[t, l]] @ taps[t]; rows[t, l] = L marks a
//      missing neighbour (it adds nothing). taps are (K, C_in, C_out) matrices or (K,) scalars
//      shared by the channels (C_out = C_in). `opposite[t]` is the tap of the negated offset;
//      the gradient uses it: the transpose of the stencil is the stencil with taps
//      taps[opposite[t]]^T (the neighbour relation of a lattice is symmetric).
// KerasDenseLatticeStencilTapGradient(lattice (L, C_in) T, upstream (L, C_out) T, rows,
//                                     taps) -> the shape of taps:
//   d taps[t] = sum_l lattice[rows[t, l]]^T upstream[l] (shared taps: the trace of that),
//   summed in double precision.
//
// Work is spread over TensorFlow's intra-op CPU worker threads. Sums are split into a fixed
// number of pieces added in a fixed order, so results do not depend on thread timing. Inside
// an op, lattice rows are padded to whole 32-byte vectors (lattice_rows.h) and a row's sums
// stay in registers; the outputs are unpadded.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

#include "lattice_rows.h"
#include "parallel_for.h"

namespace keras_dense {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

constexpr int64_t kMinParallelCost = int64_t{1} << 20;

template <typename Fn>
void ParallelFor(OpKernelContext* context, int64_t total, int64_t cost, Fn fn) {
  ::keras_dense::ParallelFor(context, total, cost, kMinParallelCost, fn);
}

// How many pieces a sum over `total` items is split into: one per worker thread, at most one
// per `min_piece` items. The same inputs on the same machine always give the same split.
int64_t SumPieces(OpKernelContext* context, int64_t total, int64_t min_piece) {
  const int64_t threads = context->device()->tensorflow_cpu_worker_threads()->num_threads;
  return std::max<int64_t>(1, std::min<int64_t>(threads, total / min_piece));
}

int64_t PieceStart(int64_t total, int64_t pieces, int64_t piece) {
  return total * piece / pieces;
}

::absl::Status CheckSimplices(const Tensor& values, const Tensor& indices, const Tensor& weights,
                              const char* values_name) {
  if (values.dims() != 3) {
    return absl::InvalidArgumentError(std::string(values_name) +
                                      " must be (batch, points, channels), got " +
                                      values.shape().DebugString());
  }
  if (indices.dims() != 3 || indices.shape() != weights.shape() ||
      indices.dim_size(0) != values.dim_size(0) || indices.dim_size(1) != values.dim_size(1)) {
    return absl::InvalidArgumentError(
        "splat_indices and barycentric_weights must both be (batch, points, d+1) for " +
        std::string(values_name) + " of shape " + values.shape().DebugString() + ", got " +
        indices.shape().DebugString() + " and " + weights.shape().DebugString());
  }
  return absl::OkStatus();
}

constexpr char kBadIndexMessage[] =
    "splat_indices hold a lattice point outside [0, rows per image): build the lattice with "
    "keras_dense.ops.build_lattice";

// The running sum of one row of `packets` vectors: in registers when kP > 0 (see
// DispatchPackets), in memory in the general case (kP == 0; heap memory is not 32-byte
// aligned, so it is only read and written through Packet's unaligned loads and stores).
template <typename T, int kP>
class RowSum {
 public:
  using P = Packet<T>;
  using V = typename P::Type;
  static constexpr int64_t kLanes = P::kLanes;

  explicit RowSum(int64_t packets)
      : packets_(kP > 0 ? kP : packets), general_(kP > 0 ? 0 : packets * kLanes) {}

  __attribute__((always_inline)) inline void Clear() {
    if (kP > 0) {
      for (int c = 0; c < kSlots; ++c) fixed_[c] = V{};
    } else {
      std::fill(general_.begin(), general_.end(), T(0));
    }
  }

  // sum += weight * row (a padded row).
  __attribute__((always_inline)) inline void Add(T weight, const T* row) {
    if (kP > 0) {
      for (int c = 0; c < kSlots; ++c) fixed_[c] += weight * P::Load(row + c * kLanes);
    } else {
      T* sum = general_.data();
      for (int64_t c = 0; c < packets_; ++c) {
        const int64_t o = c * kLanes;
        P::Store(sum + o, P::Load(sum + o) + weight * P::Load(row + o));
      }
    }
  }

  // Writes the first `channels` values to `out`. With `whole`, as whole vectors: the lanes
  // past `channels` overwrite what follows, which the caller writes afterwards.
  __attribute__((always_inline)) inline void Write(T* out, int64_t channels, bool whole,
                                                   T* staging) {
    T* target = whole ? out : staging;
    if (kP > 0) {
      for (int c = 0; c < kSlots; ++c) P::Store(target + c * kLanes, fixed_[c]);
    } else {
      std::copy(general_.begin(), general_.end(), target);
    }
    if (!whole) std::copy(staging, staging + channels, out);
  }

 private:
  static constexpr int kSlots = kP > 0 ? kP : 1;
  int64_t packets_;
  V fixed_[kSlots];
  std::vector<T> general_;
};

// Copies (rows, channels) values into rows of `padded` lanes (zeros past the channels) and
// appends `extra` zero rows.
template <typename T>
void PadRows(OpKernelContext* context, const T* source, int64_t rows, int64_t channels,
             int64_t padded, int64_t extra, T* target) {
  ParallelFor(context, rows, padded + 10, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      std::copy(source + r * channels, source + (r + 1) * channels, target + r * padded);
      std::fill(target + r * padded + channels, target + (r + 1) * padded, T(0));
    }
  });
  std::fill(target + rows * padded, target + (rows + extra) * padded, T(0));
}

// Adds weight * values[n] to padded lattice row indices[n, k] for the points [begin, end)
// (flat over the batch; `total` values in all). A point's values are read as whole vectors
// (the lanes past C read the next point's: they reach only the rows' padding lanes, which
// nothing outputs); the last points, whose vectors would pass the end, go through a zeroed
// copy.
template <typename T, int kP>
KERAS_DENSE_MULTIVERSION bool SplatPoints(const T* __restrict values, int64_t total,
                                          const int32_t* __restrict indices,
                                          const float* __restrict weights, int64_t begin,
                                          int64_t end, int64_t d1, int64_t channels,
                                          int64_t packets, int64_t rows, T* __restrict lattice) {
  using P = Packet<T>;
  const int64_t np = kP > 0 ? kP : packets;
  const int64_t padded = np * P::kLanes;
  RowScratch<T, kP> staging(padded);
  bool valid = true;
  for (int64_t n = begin; n < end; ++n) {
    const T* source = values + n * channels;
    if (kP == 0 || n * channels + padded > total) {
      std::copy(source, source + channels, staging.data());
      std::fill(staging.data() + channels, staging.data() + padded, T(0));
      source = staging.data();
    }
    for (int64_t k = 0; k < d1; ++k) {
      const int64_t r = indices[n * d1 + k];
      if (r < 0 || r >= rows) {
        valid = false;
        continue;
      }
      const T w = static_cast<T>(weights[n * d1 + k]);
      T* row = lattice + r * padded;
      for (int64_t c = 0; c < np; ++c) {
        const int64_t o = c * P::kLanes;
        P::Store(row + o, P::Load(row + o) + w * P::Load(source + o));
      }
    }
  }
  return valid;
}

template <typename T>
class LatticeSplatOp : public OpKernel {
 public:
  explicit LatticeSplatOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& values = context->input(0);
    const Tensor& indices = context->input(1);
    const Tensor& weights = context->input(2);
    const Tensor& num_rows = context->input(3);
    OP_REQUIRES_OK(context, CheckSimplices(values, indices, weights, "values"));
    OP_REQUIRES(context, num_rows.dims() == 0 && num_rows.scalar<int32_t>()() >= 0,
                absl::InvalidArgumentError("num_rows must be a scalar >= 0"));
    const int64_t batch = values.dim_size(0), points = values.dim_size(1);
    const int64_t channels = values.dim_size(2), d1 = indices.dim_size(2);
    const int64_t rows = num_rows.scalar<int32_t>()();
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, TensorShape({batch * rows, channels}), &output));
    T* out = output->flat<T>().data();
    const T* in = values.flat<T>().data();
    const int64_t total = values.NumElements();
    const int32_t* index = indices.flat<int32_t>().data();
    const float* weight = weights.flat<float>().data();
    const int64_t padded = PaddedChannels(channels, Packet<T>::kLanes);
    const int64_t packets = padded / Packet<T>::kLanes;
    // Each piece of an image's points scatters into its own padded buffer; the buffers are
    // then added row-parallel, in piece order, into the unpadded output.
    const int64_t image_size = rows * padded;
    // At most about 256 MiB of piece buffers (a many-core machine would otherwise take one
    // image-sized buffer per thread).
    const int64_t budget = std::max<int64_t>(1, (int64_t{256} << 20) / std::max<int64_t>(
                                                    1, image_size * int64_t{sizeof(T)}));
    const int64_t pieces = std::min(SumPieces(context, points, 4096), budget);
    std::vector<T> buffers(pieces * image_size);
    std::atomic<bool> valid(true);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t cost = points / pieces * d1 * (padded + 4);
      ParallelFor(context, pieces, cost, [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s) {
          T* target = buffers.data() + s * image_size;
          std::fill(target, target + image_size, T(0));
          const int64_t first = b * points + PieceStart(points, pieces, s);
          const int64_t last = b * points + PieceStart(points, pieces, s + 1);
          DispatchPackets(packets, [&](auto kp) {
            if (!SplatPoints<T, decltype(kp)::value>(in, total, index, weight, first, last, d1,
                                                     channels, packets, rows, target)) {
              valid = false;
            }
          });
        }
      });
      T* image_out = out + b * rows * channels;
      ParallelFor(context, rows, pieces * channels + 10, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          T* target = image_out + r * channels;
          std::copy(buffers.data() + r * padded, buffers.data() + r * padded + channels, target);
          for (int64_t s = 1; s < pieces; ++s) {
            const T* source = buffers.data() + s * image_size + r * padded;
            for (int64_t c = 0; c < channels; ++c) target[c] += source[c];
          }
        }
      });
    }
    OP_REQUIRES(context, valid.load(), absl::InvalidArgumentError(kBadIndexMessage));
  }
};

// Interpolates the padded lattice rows at the points [begin, end) (flat over the batch).
template <typename T, int kP>
KERAS_DENSE_MULTIVERSION bool SlicePoints(const T* __restrict lattice,
                                          const int32_t* __restrict indices,
                                          const float* __restrict weights, int64_t begin,
                                          int64_t end, int64_t d1, int64_t channels,
                                          int64_t packets, int64_t rows, int64_t points,
                                          T* __restrict out) {
  const int64_t padded = (kP > 0 ? kP : packets) * Packet<T>::kLanes;
  RowSum<T, kP> sum(packets);
  RowScratch<T, kP> staging(padded);
  bool valid = true;
  for (int64_t p = begin; p < end; ++p) {
    const T* image = lattice + (p / points) * rows * padded;
    sum.Clear();
    for (int64_t k = 0; k < d1; ++k) {
      const int64_t r = indices[p * d1 + k];
      if (r < 0 || r >= rows) {
        valid = false;
        continue;
      }
      sum.Add(static_cast<T>(weights[p * d1 + k]), image + r * padded);
    }
    sum.Write(out + p * channels, channels, p * channels + padded <= end * channels,
              staging.data());
  }
  return valid;
}

template <typename T>
class LatticeSliceOp : public OpKernel {
 public:
  explicit LatticeSliceOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& lattice = context->input(0);
    const Tensor& indices = context->input(1);
    const Tensor& weights = context->input(2);
    OP_REQUIRES(context, lattice.dims() == 2,
                absl::InvalidArgumentError("lattice must be (rows, channels), got " +
                                           lattice.shape().DebugString()));
    OP_REQUIRES(context, indices.dims() == 3 && indices.shape() == weights.shape(),
                absl::InvalidArgumentError(
                    "splat_indices and barycentric_weights must both be (batch, points, d+1), "
                    "got " + indices.shape().DebugString() + " and " +
                    weights.shape().DebugString()));
    const int64_t batch = indices.dim_size(0), points = indices.dim_size(1);
    const int64_t d1 = indices.dim_size(2), channels = lattice.dim_size(1);
    const int64_t length = lattice.dim_size(0);
    OP_REQUIRES(context, batch == 0 ? length == 0 : length % batch == 0,
                absl::InvalidArgumentError(
                    "lattice rows (" + std::to_string(length) +
                    ") must be a whole number of rows per image for a batch of " +
                    std::to_string(batch)));
    const int64_t rows = batch == 0 ? 0 : length / batch;
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, TensorShape({batch, points, channels}), &output));
    const int64_t padded = PaddedChannels(channels, Packet<T>::kLanes);
    const int64_t packets = padded / Packet<T>::kLanes;
    std::vector<T> rows_padded(length * padded);
    PadRows(context, lattice.flat<T>().data(), length, channels, padded, 0, rows_padded.data());
    std::atomic<bool> valid(true);
    ParallelFor(context, batch * points, d1 * (padded + 4), [&](int64_t begin, int64_t end) {
      DispatchPackets(packets, [&](auto kp) {
        if (!SlicePoints<T, decltype(kp)::value>(
                rows_padded.data(), indices.flat<int32_t>().data(),
                weights.flat<float>().data(), begin, end, d1, channels, packets, rows, points,
                output->flat<T>().data())) {
          valid = false;
        }
      });
    });
    OP_REQUIRES(context, valid.load(), absl::InvalidArgumentError(kBadIndexMessage));
  }
};

// Validates a stencil's lattice, neighbour rows, taps (and their output channels).
::absl::Status CheckStencil(const Tensor& lattice, const Tensor& rows, const Tensor& taps,
                            int64_t* out_channels) {
  if (lattice.dims() != 2) {
    return absl::InvalidArgumentError("lattice must be (rows, channels), got " +
                                      lattice.shape().DebugString());
  }
  if (rows.dims() != 2 || rows.dim_size(1) != lattice.dim_size(0)) {
    return absl::InvalidArgumentError("rows must be (taps, " +
                                      std::to_string(lattice.dim_size(0)) + "), got " +
                                      rows.shape().DebugString());
  }
  const int64_t count = rows.dim_size(0), channels = lattice.dim_size(1);
  if (taps.dims() == 1 && taps.dim_size(0) == count) {
    *out_channels = channels;
    return absl::OkStatus();
  }
  if (taps.dims() == 3 && taps.dim_size(0) == count && taps.dim_size(1) == channels) {
    *out_channels = taps.dim_size(2);
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      "taps must be (" + std::to_string(count) + ",) or (" + std::to_string(count) + ", " +
      std::to_string(channels) + ", C_out), got " + taps.shape().DebugString());
}

constexpr char kBadRowMessage[] =
    "rows hold a neighbour outside [0, L]: build them with keras_dense.ops.lattice_neighbors";

// out[l] = sum_t lattice[rows[t, l]] @ taps[t] for the rows [begin, end). `lattice` has
// length + 1 padded rows, the last one zero (a missing neighbour, row `length`, reads it).
// Shared taps: `taps` (count,). Matrices: `taps` (count, channels, padded_out), zero-padded.
template <typename T, int kP, bool kShared>
KERAS_DENSE_MULTIVERSION bool StencilRows(const T* __restrict lattice,
                                          const int32_t* __restrict rows,
                                          const T* __restrict taps, int64_t begin, int64_t end,
                                          int64_t length, int64_t count, int64_t channels,
                                          int64_t padded_in, int64_t out_channels,
                                          int64_t out_packets, T* __restrict out) {
  const int64_t padded_out = (kP > 0 ? kP : out_packets) * Packet<T>::kLanes;
  RowSum<T, kP> sum(out_packets);
  RowScratch<T, kP> staging(padded_out);
  bool valid = true;
  for (int64_t l = begin; l < end; ++l) {
    sum.Clear();
    for (int64_t t = 0; t < count; ++t) {
      const int64_t r = rows[t * length + l];
      if (r < 0 || r > length) {
        valid = false;
        continue;
      }
      const T* source = lattice + r * padded_in;
      if (kShared) {
        sum.Add(taps[t], source);
      } else {
        if (r == length) continue;
        const T* matrix = taps + t * channels * padded_out;
        for (int64_t i = 0; i < channels; ++i) sum.Add(source[i], matrix + i * padded_out);
      }
    }
    sum.Write(out + l * out_channels, out_channels, l * out_channels + padded_out <=
                                                        end * out_channels,
              staging.data());
  }
  return valid;
}

template <typename T>
class LatticeStencilOp : public OpKernel {
 public:
  explicit LatticeStencilOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& lattice = context->input(0);
    const Tensor& rows = context->input(1);
    const Tensor& taps = context->input(2);
    const Tensor& opposite = context->input(3);
    int64_t out_channels = 0;
    OP_REQUIRES_OK(context, CheckStencil(lattice, rows, taps, &out_channels));
    OP_REQUIRES(context, opposite.dims() == 1 && opposite.dim_size(0) == rows.dim_size(0),
                absl::InvalidArgumentError("opposite must be (" +
                                           std::to_string(rows.dim_size(0)) + ",), got " +
                                           opposite.shape().DebugString()));
    const int64_t length = lattice.dim_size(0), channels = lattice.dim_size(1);
    const int64_t count = rows.dim_size(0);
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, TensorShape({length, out_channels}), &output));
    constexpr int64_t kLanes = Packet<T>::kLanes;
    const int64_t padded_in = PaddedChannels(channels, kLanes);
    const int64_t padded_out = PaddedChannels(out_channels, kLanes);
    const bool shared = taps.dims() == 1;
    std::vector<T> padded(( length + 1) * padded_in);
    PadRows(context, lattice.flat<T>().data(), length, channels, padded_in, 1, padded.data());
    const T* tap_data = taps.flat<T>().data();
    std::vector<T> matrices;
    if (!shared) {
      matrices.resize(count * channels * padded_out);
      PadRows(context, tap_data, count * channels, out_channels, padded_out, 0,
              matrices.data());
      tap_data = matrices.data();
    }
    std::atomic<bool> valid(true);
    const int64_t cost = count * (shared ? padded_in : channels * padded_out) + padded_out;
    ParallelFor(context, length, cost, [&](int64_t begin, int64_t end) {
      DispatchPackets(padded_out / kLanes, [&](auto kp) {
        constexpr int kP = decltype(kp)::value;
        auto run = shared ? &StencilRows<T, kP, true> : &StencilRows<T, kP, false>;
        if (!run(padded.data(), rows.flat<int32_t>().data(), tap_data, begin, end, length,
                 count, channels, padded_in, out_channels, padded_out / kLanes,
                 output->flat<T>().data())) {
          valid = false;
        }
      });
    });
    OP_REQUIRES(context, valid.load(), absl::InvalidArgumentError(kBadRowMessage));
  }
};

// Adds lattice[rows[t, l]] . upstream[l] over the rows [begin, end) to sums[t] (double), for
// shared taps. Both inputs are padded rows; `lattice` has a zero row `length`.
template <typename T>
KERAS_DENSE_MULTIVERSION bool SharedTapGradientRows(const T* __restrict lattice,
                                                    const T* __restrict upstream,
                                                    const int32_t* __restrict rows,
                                                    int64_t begin, int64_t end, int64_t length,
                                                    int64_t count, int64_t packets,
                                                    double* __restrict sums) {
  using P = Packet<T>;
  using V = typename P::Type;
  constexpr int64_t kLanes = P::kLanes;
  constexpr int64_t kBlock = 64;  // float sums of at most 64 rows, then double
  const int64_t padded = packets * kLanes;
  bool valid = true;
  for (int64_t t = 0; t < count; ++t) {
    for (int64_t first = begin; first < end; first += kBlock) {
      V acc{};
      for (int64_t l = first; l < std::min(end, first + kBlock); ++l) {
        const int64_t r = rows[t * length + l];
        if (r < 0 || r > length) {
          valid = false;
          continue;
        }
        const T* source = lattice + r * padded;
        const T* grad = upstream + l * padded;
        for (int64_t c = 0; c < packets; ++c) {
          acc += P::Load(source + c * kLanes) * P::Load(grad + c * kLanes);
        }
      }
      double total = 0.0;
      for (int64_t i = 0; i < kLanes; ++i) total += static_cast<double>(acc[i]);
      sums[t] += total;
    }
  }
  return valid;
}

// Adds lattice[rows[t, l]]^T upstream[l] over the rows [begin, end) to sums[t] (double), for
// channel-matrix taps (unpadded inputs).
template <typename T>
KERAS_DENSE_MULTIVERSION bool MatrixTapGradientRows(const T* __restrict lattice,
                                                    const T* __restrict upstream,
                                                    const int32_t* __restrict rows,
                                                    int64_t begin, int64_t end, int64_t length,
                                                    int64_t count, int64_t channels,
                                                    int64_t out_channels,
                                                    double* __restrict sums) {
  bool valid = true;
  for (int64_t t = 0; t < count; ++t) {
    double* tap = sums + t * channels * out_channels;
    for (int64_t l = begin; l < end; ++l) {
      const int64_t r = rows[t * length + l];
      if (r == length) continue;
      if (r < 0 || r > length) {
        valid = false;
        continue;
      }
      const T* source = lattice + r * channels;
      const T* grad = upstream + l * out_channels;
      for (int64_t i = 0; i < channels; ++i) {
        const double x = source[i];
        double* row = tap + i * out_channels;
        for (int64_t o = 0; o < out_channels; ++o) row[o] += x * double(grad[o]);
      }
    }
  }
  return valid;
}

template <typename T>
class LatticeStencilTapGradientOp : public OpKernel {
 public:
  explicit LatticeStencilTapGradientOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& lattice = context->input(0);
    const Tensor& upstream = context->input(1);
    const Tensor& rows = context->input(2);
    const Tensor& taps = context->input(3);
    int64_t out_channels = 0;
    OP_REQUIRES_OK(context, CheckStencil(lattice, rows, taps, &out_channels));
    const int64_t length = lattice.dim_size(0), channels = lattice.dim_size(1);
    OP_REQUIRES(context,
                upstream.dims() == 2 && upstream.dim_size(0) == length &&
                    upstream.dim_size(1) == out_channels,
                absl::InvalidArgumentError("upstream must be (" + std::to_string(length) +
                                           ", " + std::to_string(out_channels) + "), got " +
                                           upstream.shape().DebugString()));
    const int64_t count = rows.dim_size(0);
    const bool shared = taps.dims() == 1;
    const int64_t size = taps.NumElements();
    const int32_t* row_data = rows.flat<int32_t>().data();
    const T* lattice_data = lattice.flat<T>().data();
    const T* upstream_data = upstream.flat<T>().data();
    std::vector<T> lattice_padded, upstream_padded;
    const int64_t padded = PaddedChannels(channels, Packet<T>::kLanes);
    if (shared) {
      lattice_padded.resize((length + 1) * padded);
      upstream_padded.resize(length * padded);
      PadRows(context, lattice_data, length, channels, padded, 1, lattice_padded.data());
      PadRows(context, upstream_data, length, channels, padded, 0, upstream_padded.data());
    }
    // Pieces of the rows, each summing every tap into its own buffer; added in piece order.
    const int64_t pieces = SumPieces(context, length, 1024);
    std::vector<double> sums(pieces * size, 0.0);
    std::atomic<bool> valid(true);
    const int64_t cost = length / pieces * count * (shared ? padded : channels * out_channels);
    ParallelFor(context, pieces, cost, [&](int64_t s0, int64_t s1) {
      for (int64_t s = s0; s < s1; ++s) {
        const int64_t begin = PieceStart(length, pieces, s);
        const int64_t end = PieceStart(length, pieces, s + 1);
        const bool ok =
            shared ? SharedTapGradientRows(lattice_padded.data(), upstream_padded.data(),
                                           row_data, begin, end, length, count,
                                           padded / Packet<T>::kLanes, sums.data() + s * size)
                   : MatrixTapGradientRows(lattice_data, upstream_data, row_data, begin, end,
                                           length, count, channels, out_channels,
                                           sums.data() + s * size);
        if (!ok) valid = false;
      }
    });
    OP_REQUIRES(context, valid.load(), absl::InvalidArgumentError(kBadRowMessage));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, taps.shape(), &output));
    T* out = output->flat<T>().data();
    for (int64_t i = 0; i < size; ++i) {
      double total = 0.0;
      for (int64_t s = 0; s < pieces; ++s) total += sums[s * size + i];
      out[i] = static_cast<T>(total);
    }
  }
};

}  // namespace

REGISTER_OP("KerasDenseLatticeSplat")
    .Input("values: T")
    .Input("splat_indices: int32")
    .Input("barycentric_weights: float32")
    .Input("num_rows: int32")
    .Output("lattice: T")
    .Attr("T: {float32, float64}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle values, unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &values));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 3, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 0, &unused));
      c->set_output(0, c->Matrix(c->UnknownDim(), c->Dim(values, 2)));
      return absl::OkStatus();
    })
    .Doc("Barycentric splat of per-point values onto lattice rows (see the source header).");

REGISTER_OP("KerasDenseLatticeSlice")
    .Input("lattice: T")
    .Input("splat_indices: int32")
    .Input("barycentric_weights: float32")
    .Output("values: T")
    .Attr("T: {float32, float64}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle lattice, indices, unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &lattice));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &indices));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 3, &unused));
      c->set_output(0, c->MakeShape({c->Dim(indices, 0), c->Dim(indices, 1), c->Dim(lattice, 1)}));
      return absl::OkStatus();
    })
    .Doc("Barycentric interpolation of lattice rows at the points: the splat's transpose.");

REGISTER_OP("KerasDenseLatticeStencil")
    .Input("lattice: T")
    .Input("rows: int32")
    .Input("taps: T")
    .Input("opposite: int32")
    .Output("output: T")
    .Attr("T: {float32, float64}")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle lattice, taps, unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &lattice));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 1, &unused));
      taps = c->input(2);
      DimensionHandle channels = c->Dim(lattice, 1);
      if (c->RankKnown(taps) && c->Rank(taps) == 3) channels = c->Dim(taps, 2);
      if (!c->RankKnown(taps)) channels = c->UnknownDim();
      c->set_output(0, c->Matrix(c->Dim(lattice, 0), channels));
      return absl::OkStatus();
    })
    .Doc("Learned stencil over each lattice row's neighbours (see the source header).");

REGISTER_OP("KerasDenseLatticeStencilTapGradient")
    .Input("lattice: T")
    .Input("upstream: T")
    .Input("rows: int32")
    .Input("taps: T")
    .Output("taps_gradient: T")
    .Attr("T: {float32, float64}")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(3));
      return absl::OkStatus();
    })
    .Doc("Gradient of KerasDenseLatticeStencil with respect to its taps.");

#define KERAS_DENSE_REGISTER_LATTICE_KERNELS(T)                                         \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name("KerasDenseLatticeSplat").Device(DEVICE_CPU).TypeConstraint<T>("T"),         \
      LatticeSplatOp<T>);                                                               \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name("KerasDenseLatticeSlice").Device(DEVICE_CPU).TypeConstraint<T>("T"),         \
      LatticeSliceOp<T>);                                                               \
  REGISTER_KERNEL_BUILDER(                                                              \
      Name("KerasDenseLatticeStencil").Device(DEVICE_CPU).TypeConstraint<T>("T"),       \
      LatticeStencilOp<T>);                                                             \
  REGISTER_KERNEL_BUILDER(Name("KerasDenseLatticeStencilTapGradient")                   \
                              .Device(DEVICE_CPU)                                       \
                              .TypeConstraint<T>("T"),                                  \
                          LatticeStencilTapGradientOp<T>);

KERAS_DENSE_REGISTER_LATTICE_KERNELS(float)
KERAS_DENSE_REGISTER_LATTICE_KERNELS(double)

}  // namespace keras_dense
