// Permutohedral lattice filtering (Adams, Baek and Davis, "Fast High-Dimensional Filtering
// Using the Permutohedral Lattice", Eurographics 2010) as TensorFlow CPU ops.
//
// KerasDensePermutohedralBuild(features (B, N, d) float)
//   -> splat_indices       (B, N, d+1)      int32  lattice point of each simplex vertex
//      barycentric_weights (B, N, d+1)      float  barycentric weight of each vertex
//      blur_neighbors      (B, M, d+1, 2)   int32  the two neighbours of each lattice point
//                                                   along each of the d+1 lattice directions,
//                                                   -1 when the neighbour is not in the lattice
//      num_points          (B,)             int32  M_b, lattice points of image b
//   M = max_b M_b; images with fewer points are padded (padded points have no vertices and
//   no neighbours). Lattice points are numbered by first occurrence (point-major, then
//   vertex), as the pure-TF twin (permutohedral_tf.py) numbers them.
//
// KerasDensePermutohedralFilter(values (B, N, C), splat_indices, barycentric_weights,
//                               blur_neighbors, reverse: bool) -> (B, N, C)
//   splat (barycentric scatter onto the lattice), blur with the [1/2, 1, 1/2] kernel along
//   the d+1 directions in the order 0..d (d..0 when reverse), slice (barycentric gather),
//   times alpha = 1 / (1 + 2^-d). Each blur is symmetric and slice is alpha * splat^T, so the
//   filter with reversed blur order is exactly the transpose: it is the gradient with respect
//   to `values` (registered in Python). There is no gradient with respect to the features.
//
// KerasDensePottsMeanField(unary (B, N, C) float, K lattices, kernel_weights, num_iterations)
//   -> (B, N, C) marginals: the whole mean-field inference of a dense CRF with Potts
//   compatibility over K such lattices in one kernel (see PottsMeanFieldOp below).
//
// Work is spread over TensorFlow's intra-op CPU worker threads with `Shard`.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

#include "lattice_rows.h"
#include "parallel_for.h"

namespace keras_dense {
namespace {

// Bound on the magnitude of lattice coordinates (int32 keys, exact integers in float).
constexpr double kMaxCoordinate = 1 << 24;

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::DimensionHandle;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Work below this many (estimated) cycles runs on the calling thread: a parallel region costs
// a synchronisation, which is slow when other processes keep the cores busy.
constexpr int64_t kMinParallelCost = int64_t{1} << 21;

template <typename Fn>
void ParallelFor(OpKernelContext* context, int64_t total, int64_t cost, Fn fn) {
  ::keras_dense::ParallelFor(context, total, cost, kMinParallelCost, fn);
}

// Open-addressing hash table from lattice keys (the first d coordinates of a lattice point;
// the last one is minus their sum) to dense point indices in insertion order. It grows by
// doubling, so that it stays small (cache-resident) for the few thousand points of an image.
class LatticeHashTable {
 public:
  explicit LatticeHashTable(int dim) : dim_(dim) { Resize(1024); }

  int32_t FindOrInsert(const int32_t* key) {
    uint64_t slot = Hash(key) & mask_;
    while (true) {
      const int32_t index = slots_[slot];
      if (index < 0) {
        const int32_t created = size();
        slots_[slot] = created;
        keys_.insert(keys_.end(), key, key + dim_);
        if (2 * static_cast<size_t>(created + 1) > slots_.size()) Resize(2 * slots_.size());
        return created;
      }
      if (Equal(index, key)) return index;
      slot = (slot + 1) & mask_;
    }
  }

  int32_t Find(const int32_t* key) const {
    uint64_t slot = Hash(key) & mask_;
    while (true) {
      const int32_t index = slots_[slot];
      if (index < 0) return -1;
      if (Equal(index, key)) return index;
      slot = (slot + 1) & mask_;
    }
  }

  int32_t size() const { return static_cast<int32_t>(keys_.size() / dim_); }
  const int32_t* key(int32_t index) const { return keys_.data() + int64_t{index} * dim_; }

 private:
  void Resize(size_t capacity) {
    slots_.assign(capacity, -1);
    mask_ = static_cast<uint64_t>(capacity - 1);
    for (int32_t index = 0; index < size(); ++index) {
      uint64_t slot = Hash(key(index)) & mask_;
      while (slots_[slot] >= 0) slot = (slot + 1) & mask_;
      slots_[slot] = index;
    }
  }

  uint64_t Hash(const int32_t* key) const {
    uint64_t h = 0x84222325cbf29ce4ULL;
    for (int i = 0; i < dim_; ++i) {
      h ^= static_cast<uint32_t>(key[i]);
      h *= 0x100000001b3ULL;
      h ^= h >> 32;
    }
    h *= 0xd6e8feb86659fd93ULL;
    return h ^ (h >> 29);
  }

  bool Equal(int32_t index, const int32_t* key) const {
    const int32_t* stored = keys_.data() + int64_t{index} * dim_;
    for (int i = 0; i < dim_; ++i) {
      if (stored[i] != key[i]) return false;
    }
    return true;
  }

  int dim_;
  uint64_t mask_ = 0;
  std::vector<int32_t> slots_;
  std::vector<int32_t> keys_;
};

// Splits [0, total) into `parts` contiguous ranges; returns the start of range `part`.
int64_t RangeStart(int64_t total, int64_t parts, int64_t part) { return total * part / parts; }

// Number of pieces to split `total` points into, one per worker thread at most.
int64_t NumPieces(OpKernelContext* context, int64_t total, int64_t min_piece) {
  const int64_t threads = context->device()->tensorflow_cpu_worker_threads()->num_threads;
  return std::max<int64_t>(1, std::min<int64_t>(threads, total / min_piece));
}


// Embeds one feature vector in the lattice: writes the keys (first d coordinates) of the d+1
// vertices of its enclosing simplex and their barycentric weights. The arithmetic (float,
// operation order) is mirrored exactly by keras_dense/ops/permutohedral_tf.py.
// kD > 0 fixes d at compile time (the CRF's d = 2 and d = 5: loops unroll, the small arrays
// stay in registers); kD == 0 takes d at run time.
template <int kD>
__attribute__((always_inline)) inline void EmbedPoint(
    const float* __restrict feature, int d_runtime, const float* __restrict scale,
    float* __restrict elevated, int32_t* __restrict rem0, int32_t* __restrict rank,
    float* __restrict barycentric, int32_t* __restrict keys, float* __restrict weights) {
  const int d = kD > 0 ? kD : d_runtime;
  const int d1 = d + 1;
  const float down_factor = 1.0f / static_cast<float>(d1);
  const float up_factor = static_cast<float>(d1);
  // Elevate onto the hyperplane x_0 + ... + x_d = 0 (scaled so that the blur approximates a
  // unit-variance Gaussian in feature space).
  float sum = 0.0f;
  for (int j = d; j >= 1; --j) {
    const float cf = feature[j - 1] * scale[j - 1];
    elevated[j] = sum - static_cast<float>(j) * cf;
    sum += cf;
  }
  elevated[0] = sum;
  // Closest remainder-0 lattice point.
  int32_t rem_sum = 0;
  for (int i = 0; i < d1; ++i) {
    const float v = elevated[i] * down_factor;
    const float up = std::ceil(v) * up_factor;
    const float down = std::floor(v) * up_factor;
    const float chosen = (up - elevated[i] < elevated[i] - down) ? up : down;
    rem0[i] = static_cast<int32_t>(chosen);
    rem_sum += rem0[i];
    rank[i] = 0;
  }
  rem_sum /= d1;
  // Rank the differential coordinates.
  for (int i = 0; i < d; ++i) {
    const float di = elevated[i] - static_cast<float>(rem0[i]);
    for (int j = i + 1; j < d1; ++j) {
      const float dj = elevated[j] - static_cast<float>(rem0[j]);
      const int32_t smaller = di < dj ? 1 : 0;  // branch-free: the outcome is random
      rank[i] += smaller;
      rank[j] += 1 - smaller;
    }
  }
  // Bring the point back onto the plane when the coordinates do not sum to zero.
  if (rem_sum > 0) {
    for (int i = 0; i < d1; ++i) {
      if (rank[i] >= d1 - rem_sum) {
        rem0[i] -= d1;
        rank[i] += rem_sum - d1;
      } else {
        rank[i] += rem_sum;
      }
    }
  } else if (rem_sum < 0) {
    for (int i = 0; i < d1; ++i) {
      if (rank[i] < -rem_sum) {
        rem0[i] += d1;
        rank[i] += d1 + rem_sum;
      } else {
        rank[i] += rem_sum;
      }
    }
  }
  // Barycentric coordinates.
  for (int i = 0; i < d1 + 1; ++i) barycentric[i] = 0.0f;
  for (int i = 0; i < d1; ++i) {
    const float v = (elevated[i] - static_cast<float>(rem0[i])) * down_factor;
    barycentric[d - rank[i]] += v;
    barycentric[d1 - rank[i]] -= v;
  }
  barycentric[0] += 1.0f + barycentric[d1];
  // Vertex k of the simplex: rem0 plus the canonical simplex vertex k, permuted by rank.
  for (int k = 0; k < d1; ++k) {
    for (int i = 0; i < d; ++i) {
      keys[k * d + i] = rem0[i] + (rank[i] <= d - k ? k : k - d1);
    }
    weights[k] = barycentric[k];
  }
}

// Embeds points [begin, end) and hashes their simplex vertices into `table`: writes local
// point indices and barycentric weights. Returns false if a feature exceeds `limit`.
template <int kD>
KERAS_DENSE_MULTIVERSION bool EmbedRange(const float* features, int64_t begin, int64_t end,
                                         int d_runtime, const float* scale, float limit,
                                         LatticeHashTable* table, int32_t* indices,
                                         float* weights) {
  const int d = kD > 0 ? kD : d_runtime;
  const int d1 = d + 1;
  // Scratch of the largest d (64): on the stack, no allocation per range.
  constexpr int kMax = kD > 0 ? kD + 1 : 65;
  float elevated[kMax], barycentric[kMax + 1];
  int32_t rem0[kMax], rank[kMax], keys[kMax * (kMax - 1) > 0 ? kMax * (kMax - 1) : 1];
  // Neighbouring points often share simplex vertices: remember the previous point's.
  std::vector<int32_t> previous_keys(d1 * d), previous_index(d1, -1);
  const std::vector<float> zeros(d, 0.0f);
  bool finite = true;
  for (int64_t n = begin; n < end; ++n) {
    const float* f = features + n * d;
    for (int i = 0; i < d; ++i) {
      if (!(std::fabs(f[i]) <= limit)) {
        // Out-of-range coordinates would overflow the integer keys: embed the origin instead
        // (the op then fails with an error).
        finite = false;
        f = zeros.data();
        break;
      }
    }
    EmbedPoint<kD>(f, d, scale, elevated, rem0, rank, barycentric, keys, weights + n * d1);
    for (int k = 0; k < d1; ++k) {
      const int32_t* key = keys + k * d;
      int32_t* previous = previous_keys.data() + k * d;
      if (previous_index[k] < 0 || !std::equal(key, key + d, previous)) {
        previous_index[k] = table->FindOrInsert(key);
        std::copy(key, key + d, previous);
      }
      indices[n * d1 + k] = previous_index[k];
    }
  }
  return finite;
}

class PermutohedralBuildOp : public OpKernel {
 public:
  explicit PermutohedralBuildOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    OP_REQUIRES(context, features.dims() == 3,
                absl::InvalidArgumentError("features must have shape (batch, points, dims), "
                                           "got " + features.shape().DebugString()));
    const int64_t batch = features.dim_size(0);
    const int64_t points = features.dim_size(1);
    const int64_t dims = features.dim_size(2);
    OP_REQUIRES(context, dims >= 1 && dims <= 64,
                absl::InvalidArgumentError("features must have between 1 and 64 dimensions"));
    const int d = static_cast<int>(dims);
    const int d1 = d + 1;
    const int64_t vertices = points * d1;
    OP_REQUIRES(context, vertices < std::numeric_limits<int32_t>::max() / 2,
                absl::InvalidArgumentError("too many points for int32 lattice indices"));

    Tensor* splat_indices = nullptr;
    Tensor* weights = nullptr;
    OP_REQUIRES_OK(context,
                   context->allocate_output(0, TensorShape({batch, points, d1}), &splat_indices));
    OP_REQUIRES_OK(context,
                   context->allocate_output(1, TensorShape({batch, points, d1}), &weights));
    int32_t* splat_data = splat_indices->flat<int32_t>().data();
    float* weight_data = weights->flat<float>().data();
    const float* feature_data = features.flat<float>().data();

    std::vector<float> scale(d);
    const double inv_std_dev = std::sqrt(2.0 / 3.0) * d1;
    for (int i = 0; i < d; ++i) {
      const double norm = std::sqrt(static_cast<double>((i + 1) * (i + 2)));
      scale[i] = static_cast<float>(inv_std_dev / norm);
    }
    // Keeps every lattice coordinate (at most 2 d (d+1) |f| in magnitude) well inside int32.
    const float limit = static_cast<float>(kMaxCoordinate / (2.0 * d * d1));

    // Per image: (1) embed the points and hash their vertices in one table per piece of the
    // image (parallel); (2) merge the pieces' tables in order, which numbers the lattice points
    // by first occurrence (point-major, then vertex); (3) renumber the splat indices.
    std::vector<LatticeHashTable> tables;
    tables.reserve(batch);
    std::atomic<bool> finite(true);
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t pieces = NumPieces(context, points, 4096);
      std::vector<LatticeHashTable> local;
      local.reserve(pieces);
      for (int64_t s = 0; s < pieces; ++s) local.emplace_back(d);
      int32_t* image_indices = splat_data + b * vertices;
      float* image_weights = weight_data + b * vertices;
      const float* image_features = feature_data + b * points * d;
      ParallelFor(context, pieces, 1000000, [&](int64_t begin, int64_t end) {
        for (int64_t s = begin; s < end; ++s) {
          const int64_t first = RangeStart(points, pieces, s);
          const int64_t last = RangeStart(points, pieces, s + 1);
          // The CRF's kernels: spatial d = 2, bilateral d = 2 + 3 colours (or + 1 grey).
          auto embed = d == 2   ? &EmbedRange<2>
                       : d == 3 ? &EmbedRange<3>
                       : d == 5 ? &EmbedRange<5>
                                : &EmbedRange<0>;
          if (!embed(image_features, first, last, d, scale.data(), limit, &local[s],
                     image_indices, image_weights)) {
            finite = false;
          }
        }
      });
      tables.push_back(std::move(local[0]));  // piece 0's numbering is the global one
      std::vector<std::vector<int32_t>> renumber(pieces);
      for (int64_t s = 1; s < pieces; ++s) {
        renumber[s].resize(local[s].size());
        for (int32_t m = 0; m < local[s].size(); ++m) {
          renumber[s][m] = tables[b].FindOrInsert(local[s].key(m));
        }
      }
      for (int64_t s = 1; s < pieces; ++s) {
        for (int64_t v = RangeStart(points, pieces, s) * d1;
             v < RangeStart(points, pieces, s + 1) * d1; ++v) {
          image_indices[v] = renumber[s][image_indices[v]];
        }
      }
    }
    OP_REQUIRES(context, finite.load(),
                absl::InvalidArgumentError("features must be finite and at most " +
                                           std::to_string(limit) + " in magnitude"));

    int32_t max_points = 0;
    for (int64_t b = 0; b < batch; ++b) max_points = std::max(max_points, tables[b].size());
    Tensor* neighbors = nullptr;
    Tensor* num_points = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                2, TensorShape({batch, max_points, d1, 2}), &neighbors));
    OP_REQUIRES_OK(context, context->allocate_output(3, TensorShape({batch}), &num_points));
    int32_t* neighbor_data = neighbors->flat<int32_t>().data();
    for (int64_t b = 0; b < batch; ++b) num_points->flat<int32_t>()(b) = tables[b].size();

    // Blur neighbours of every lattice point (parallel over points; read-only tables).
    const int64_t row = int64_t{d1} * 2;
    ParallelFor(context, batch * max_points, 40 * d1 * d, [&](int64_t begin, int64_t end) {
      std::vector<int32_t> n1(d), n2(d);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t b = p / max_points;
        const int32_t m = static_cast<int32_t>(p % max_points);
        int32_t* out = neighbor_data + p * row;
        const LatticeHashTable& table = tables[b];
        if (m >= table.size()) {
          std::fill(out, out + row, -1);
          continue;
        }
        const int32_t* key = table.key(m);
        for (int j = 0; j < d1; ++j) {
          for (int i = 0; i < d; ++i) {
            n1[i] = key[i] - 1;
            n2[i] = key[i] + 1;
          }
          if (j < d) {
            n1[j] = key[j] + d;
            n2[j] = key[j] - d;
          }
          out[2 * j] = table.Find(n1.data());
          out[2 * j + 1] = table.Find(n2.data());
        }
      }
    });
  }
};

// Calls `visit(row, weight)` for each of the d+1 vertices of point n whose lattice row (its
// index + 1) lies in [1, max_points]; returns false when one does not (it is skipped).
template <typename Visit>
__attribute__((always_inline)) inline bool ForEachVertex(const int32_t* indices,
                                                         const float* weights, int64_t n,
                                                         int64_t d1, int64_t max_points,
                                                         Visit&& visit) {
  bool valid = true;
  for (int64_t k = 0; k < d1; ++k) {
    const int64_t r = int64_t{indices[n * d1 + k]} + 1;
    if (r < 1 || r > max_points) {
      valid = false;
      continue;
    }
    visit(r, weights[n * d1 + k]);
  }
  return valid;
}

// Adds the weighted values of points [begin, end) to their lattice rows (row m+1 for point
// m; rows are `packets` vectors wide). A point's values are loaded once, as whole vectors
// (the lanes past C read the next points' values: they only ever reach the padding lanes of
// the lattice rows, which nothing outputs); the points whose vectors would pass the end of
// the range are staged in a zero-padded copy, so that no read passes the end of the tensor.
// Returns false on an out-of-range index.
template <typename T, int kP>
KERAS_DENSE_MULTIVERSION bool SplatRange(const T* __restrict values,
                                         const int32_t* __restrict indices,
                                         const float* __restrict weights, int64_t begin,
                                         int64_t end, int64_t d1, int64_t channels,
                                         int64_t packets, int64_t max_points,
                                         T* __restrict lattice) {
  using P = Packet<T>;
  constexpr int64_t kLanes = P::kLanes;
  const int64_t np = kP > 0 ? kP : packets;
  const int64_t padded = np * kLanes;
  RowScratch<T, kP> staging(padded);
  bool valid = true;
  for (int64_t n = begin; n < end; ++n) {
    const T* source = values + n * channels;
    if (kP == 0 || n * channels + padded > end * channels) {
      std::copy(source, source + channels, staging.data());
      std::fill(staging.data() + channels, staging.data() + padded, T(0));
      source = staging.data();
    }
    valid &= ForEachVertex(indices, weights, n, d1, max_points, [&](int64_t r, float weight) {
      const T w = static_cast<T>(weight);
      T* row = lattice + r * padded;
      for (int64_t c = 0; c < np; ++c) {
        P::Store(row + c * kLanes, P::Load(row + c * kLanes) + w * P::Load(source + c * kLanes));
      }
    });
  }
  return valid;
}

template <typename T>
KERAS_DENSE_MULTIVERSION void AddTo(T* __restrict target, const T* __restrict source,
                                    int64_t count) {
  for (int64_t i = 0; i < count; ++i) target[i] += source[i];
}

// One blur step along direction j for lattice points [begin, end): one pass over the
// neighbour table, whole rows at a time.
template <typename T, int kP>
KERAS_DENSE_MULTIVERSION bool BlurRange(const T* __restrict lattice,
                                        const int32_t* __restrict neighbors, int j,
                                        int64_t begin, int64_t end, int64_t d1, int64_t packets,
                                        int64_t max_points, T* __restrict blurred) {
  using P = Packet<T>;
  constexpr int64_t kLanes = P::kLanes;
  const int64_t np = kP > 0 ? kP : packets;
  const int64_t padded = np * kLanes;
  const T half = static_cast<T>(0.5);
  bool valid = true;
  for (int64_t m = begin; m < end; ++m) {
    const int32_t* pair = neighbors + (m * d1 + j) * 2;
    const int64_t r1 = int64_t{pair[0]} + 1;
    const int64_t r2 = int64_t{pair[1]} + 1;
    T* target = blurred + (m + 1) * padded;
    const T* self = lattice + (m + 1) * padded;
    if (r1 < 0 || r1 > max_points || r2 < 0 || r2 > max_points) {
      valid = false;
      std::copy(self, self + padded, target);
      continue;
    }
    const T* first = lattice + r1 * padded;
    const T* second = lattice + r2 * padded;
    for (int64_t c = 0; c < np; ++c) {
      const int64_t o = c * kLanes;
      P::Store(target + o, P::Load(self + o) + half * (P::Load(first + o) + P::Load(second + o)));
    }
  }
  return valid;
}

// Barycentric interpolation of the lattice at points [begin, end), times alpha. The sums are
// kept in registers (kP > 0) and stored as whole vectors: the lanes past C spill into the
// next points' rows, which are written after it; the points whose vectors would pass the end
// of the range go through `staging`, so that nothing is written outside the range.
template <typename T, int kP>
KERAS_DENSE_MULTIVERSION bool SliceRange(const T* __restrict lattice,
                                         const int32_t* __restrict indices,
                                         const float* __restrict weights, int64_t begin,
                                         int64_t end, int64_t d1, int64_t channels,
                                         int64_t packets, int64_t max_points, T alpha,
                                         T* __restrict out) {
  using P = Packet<T>;
  using V = typename P::Type;
  constexpr int64_t kLanes = P::kLanes;
  constexpr int kSlots = kP > 0 ? kP : 1;
  const int64_t np = kP > 0 ? kP : packets;
  const int64_t padded = np * kLanes;
  RowScratch<T, kP> staging(padded);
  bool valid = true;
  for (int64_t n = begin; n < end; ++n) {
    T* target = out + n * channels;
    if (kP > 0) {
      V sum[kSlots];
      for (int c = 0; c < kSlots; ++c) sum[c] = V{};
      valid &= ForEachVertex(indices, weights, n, d1, max_points, [&](int64_t r, float weight) {
        const T w = alpha * static_cast<T>(weight);
        const T* row = lattice + r * padded;
        for (int c = 0; c < kSlots; ++c) sum[c] += w * P::Load(row + c * kLanes);
      });
      const bool inside = n * channels + padded <= end * channels;
      T* destination = inside ? target : staging.data();
      for (int c = 0; c < kSlots; ++c) P::Store(destination + c * kLanes, sum[c]);
      if (!inside) std::copy(staging.data(), staging.data() + channels, target);
    } else {
      std::fill(staging.data(), staging.data() + padded, T(0));
      valid &= ForEachVertex(indices, weights, n, d1, max_points, [&](int64_t r, float weight) {
        const T w = alpha * static_cast<T>(weight);
        const T* row = lattice + r * padded;
        for (int64_t c = 0; c < padded; c += kLanes) {
          P::Store(staging.data() + c, P::Load(staging.data() + c) + w * P::Load(row + c));
        }
      });
      std::copy(staging.data(), staging.data() + channels, target);
    }
  }
  return valid;
}

// Scratch memory reused across calls (no allocation per filtering once warm): a mutex-guarded
// free list of buffers that only grow.
template <typename T>
class BufferPool {
 public:
  class Lease {
   public:
    Lease(BufferPool* pool, std::unique_ptr<std::vector<T>> buffer)
        : pool_(pool), buffer_(std::move(buffer)) {}
    Lease(Lease&&) = default;
    ~Lease() {
      if (buffer_) pool_->Release(std::move(buffer_));
    }
    T* data() { return buffer_->data(); }

   private:
    BufferPool* pool_;
    std::unique_ptr<std::vector<T>> buffer_;
  };

  static BufferPool* Global() {
    static BufferPool* pool = new BufferPool();
    return pool;
  }

  Lease Acquire(int64_t size) {
    std::unique_ptr<std::vector<T>> buffer;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        buffer = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (!buffer) buffer = std::make_unique<std::vector<T>>();
    if (static_cast<int64_t>(buffer->size()) < size) buffer->resize(size);
    return Lease(this, std::move(buffer));
  }

 private:
  void Release(std::unique_ptr<std::vector<T>> buffer) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.size() < 64) free_.push_back(std::move(buffer));
  }

  std::mutex mutex_;
  std::vector<std::unique_ptr<std::vector<T>>> free_;
};

constexpr char kBadLatticeMessage[] =
    "lattice tensors hold out-of-range indices: build them with KerasDensePermutohedralBuild";

// Scratch of one image's filtering: two lattice buffers and the partial splat buffers of the
// pieces past the first, sized for `rows` lattice rows of `padded` channels.
template <typename T>
struct FilterScratch {
  T* buffer;
  T* scratch;
  T* partial;
};

// One image's lattice, as the filter's stages see it.
struct ImageLattice {
  const int32_t* indices;    // (points, d+1) splat indices
  const float* weights;      // (points, d+1) barycentric weights
  const int32_t* neighbors;  // (max_points, d+1, 2) blur neighbours
  int64_t d1;
  int64_t max_points;
};

// Splat: scatter the weighted values of `points` points onto the lattices, one buffer per
// piece of the image and lattice (a lattice buffer is small and stays in cache), then add the
// pieces' buffers into `memory[k].buffer`. Points go in blocks, each splatted onto every
// lattice in turn, so that a block's values are read from memory once for all lattices.
// Returns false on an out-of-range index.
template <typename T, int kP>
bool SplatImage(OpKernelContext* context, const T* image_in, const ImageLattice* lattices,
                const FilterScratch<T>* memory, int kernels, int64_t points, int64_t channels,
                int64_t pieces) {
  constexpr int64_t kBlock = 256;
  const int64_t padded = PaddedChannels(channels, Packet<T>::kLanes);
  const int64_t packets = padded / Packet<T>::kLanes;
  std::atomic<bool> valid(true);
  ParallelFor(context, pieces, 1000000, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      std::vector<T*> targets(kernels);
      for (int k = 0; k < kernels; ++k) {
        const int64_t size = (lattices[k].max_points + 1) * padded;
        targets[k] = s == 0 ? memory[k].buffer : memory[k].partial + (s - 1) * size;
        std::fill(targets[k], targets[k] + size, T(0));
      }
      const int64_t last = RangeStart(points, pieces, s + 1);
      for (int64_t first = RangeStart(points, pieces, s); first < last; first += kBlock) {
        const int64_t stop = std::min(first + kBlock, last);
        for (int k = 0; k < kernels; ++k) {
          const ImageLattice& lattice = lattices[k];
          if (!SplatRange<T, kP>(image_in, lattice.indices, lattice.weights, first, stop,
                                 lattice.d1, channels, packets, lattice.max_points,
                                 targets[k])) {
            valid = false;
          }
        }
      }
    }
  });
  if (pieces > 1) {
    for (int k = 0; k < kernels; ++k) {
      const int64_t rows = lattices[k].max_points + 1;
      T* buffer = memory[k].buffer;
      const T* partial = memory[k].partial;
      ParallelFor(context, rows, pieces * padded + 10, [&](int64_t begin, int64_t end) {
        for (int64_t s = 1; s < pieces; ++s) {
          AddTo(buffer + begin * padded, partial + ((s - 1) * rows + begin) * padded,
                (end - begin) * padded);
        }
      });
    }
  }
  return valid.load();
}

// Blurs a splatted lattice (in `memory.buffer`) along each lattice direction, in the order
// 0..d (d..0 if `reverse`); row 0 of both buffers stays zero. Sets `*result` to the buffer
// holding the blurred lattice. Returns false on an out-of-range neighbour.
template <typename T, int kP>
bool BlurImage(OpKernelContext* context, const ImageLattice& lattice, int64_t channels,
               bool reverse, FilterScratch<T> memory, const T** result) {
  const int d = static_cast<int>(lattice.d1 - 1);
  const int64_t padded = PaddedChannels(channels, Packet<T>::kLanes);
  const int64_t packets = padded / Packet<T>::kLanes;
  T* buffer = memory.buffer;
  T* scratch = memory.scratch;
  std::fill(scratch, scratch + padded, T(0));
  std::atomic<bool> valid(true);
  for (int step = 0; step < lattice.d1; ++step) {
    const int j = reverse ? d - step : step;
    ParallelFor(context, lattice.max_points, 4 * padded + 10, [&](int64_t begin, int64_t end) {
      if (!BlurRange<T, kP>(buffer, lattice.neighbors, j, begin, end, lattice.d1, packets,
                            lattice.max_points, scratch)) {
        valid = false;
      }
    });
    std::swap(buffer, scratch);
  }
  *result = buffer;
  return valid.load();
}

template <typename T>
T LatticeAlpha(int64_t d1) {
  return static_cast<T>(1.0 / (1.0 + std::pow(2.0, -static_cast<double>(d1 - 1))));
}

// Filters one image's `points` values (`channels` wide, row-major) with its lattice: splat,
// blur along the d+1 directions (reversed order if `reverse`), slice times alpha. Row 0 of
// both lattice buffers is the zero value of missing neighbours; lattice point m is row m+1.
// Returns false on an out-of-range index.
template <typename T, int kP>
bool FilterImage(OpKernelContext* context, const T* image_in, T* image_out,
                 const ImageLattice& lattice, int64_t points, int64_t channels, bool reverse,
                 int64_t pieces, FilterScratch<T> memory) {
  const int64_t padded = PaddedChannels(channels, Packet<T>::kLanes);
  const int64_t packets = padded / Packet<T>::kLanes;
  bool valid = SplatImage<T, kP>(context, image_in, &lattice, &memory, 1, points, channels,
                                 pieces);
  const T* blurred = nullptr;
  valid &= BlurImage<T, kP>(context, lattice, channels, reverse, memory, &blurred);
  const T alpha = LatticeAlpha<T>(lattice.d1);
  std::atomic<bool> sliced(true);
  // Slice: barycentric interpolation of the blurred lattice at every point.
  ParallelFor(context, points, 2 * padded * lattice.d1 + 10, [&](int64_t begin, int64_t end) {
    if (!SliceRange<T, kP>(blurred, lattice.indices, lattice.weights, begin, end, lattice.d1,
                           channels, packets, lattice.max_points, alpha, image_out)) {
      sliced = false;
    }
  });
  return valid && sliced.load();
}


// Lattice-buffer floats one filtering of `channels` values needs (see `FilterScratch`).
template <typename T>
int64_t FilterScratchSize(int64_t max_points, int64_t channels) {
  return (max_points + 1) * PaddedChannels(channels, Packet<T>::kLanes);
}

template <typename T>
class PermutohedralFilterOp : public OpKernel {
 public:
  explicit PermutohedralFilterOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("reverse", &reverse_));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& values = context->input(0);
    const Tensor& splat_indices = context->input(1);
    const Tensor& weights = context->input(2);
    const Tensor& neighbors = context->input(3);
    OP_REQUIRES(context, values.dims() == 3,
                absl::InvalidArgumentError("values must have shape (batch, points, channels)"));
    OP_REQUIRES(context, splat_indices.dims() == 3 && weights.shape() == splat_indices.shape(),
                absl::InvalidArgumentError(
                    "splat_indices and barycentric_weights must both be (batch, points, d+1)"));
    const int64_t batch = values.dim_size(0);
    const int64_t points = values.dim_size(1);
    const int64_t channels = values.dim_size(2);
    const int64_t d1 = splat_indices.dim_size(2);
    const int d = static_cast<int>(d1 - 1);
    OP_REQUIRES(context,
                splat_indices.dim_size(0) == batch && splat_indices.dim_size(1) == points && d >= 1,
                absl::InvalidArgumentError("values and splat_indices disagree on batch or points"));
    OP_REQUIRES(context,
                neighbors.dims() == 4 && neighbors.dim_size(0) == batch &&
                    neighbors.dim_size(2) == d1 && neighbors.dim_size(3) == 2,
                absl::InvalidArgumentError("blur_neighbors must have shape (batch, M, d+1, 2)"));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, values.shape(), &output));
    if (batch == 0 || points == 0 || channels == 0) return;
    const int64_t packets = PaddedChannels(channels, Packet<T>::kLanes) / Packet<T>::kLanes;
    DispatchPackets(packets, [&](auto static_packets) {
      Run<decltype(static_packets)::value>(context, values, splat_indices, weights, neighbors,
                                           output);
    });
  }

 private:
  template <int kP>
  void Run(OpKernelContext* context, const Tensor& values, const Tensor& splat_indices,
           const Tensor& weights, const Tensor& neighbors, Tensor* output) {
    static_assert(kP <= kMaxStaticPackets, "DispatchPackets gives kP <= kMaxStaticPackets");
    const int64_t batch = values.dim_size(0);
    const int64_t points = values.dim_size(1);
    const int64_t channels = values.dim_size(2);
    const int64_t d1 = splat_indices.dim_size(2);
    const int64_t max_points = neighbors.dim_size(1);
    const int64_t vertices = points * d1;

    const T* in = values.flat<T>().data();
    T* out = output->flat<T>().data();
    const int32_t* index_data = splat_indices.flat<int32_t>().data();
    const float* weight_data = weights.flat<float>().data();
    const int32_t* neighbor_data = neighbors.flat<int32_t>().data();

    const int64_t size = FilterScratchSize<T>(max_points, channels);
    const int64_t pieces = NumPieces(context, points, 2048);
    BufferPool<T>* pool = BufferPool<T>::Global();
    auto first = pool->Acquire(size);
    auto second = pool->Acquire(size);
    auto partial = pool->Acquire(std::max<int64_t>(1, (pieces - 1) * size));
    const FilterScratch<T> memory{first.data(), second.data(), partial.data()};
    bool valid = true;
    for (int64_t b = 0; b < batch; ++b) {
      const ImageLattice lattice{index_data + b * vertices, weight_data + b * vertices,
                                 neighbor_data + b * max_points * d1 * 2, d1, max_points};
      valid &= FilterImage<T, kP>(context, in + b * points * channels,
                                  out + b * points * channels, lattice, points, channels,
                                  reverse_, pieces, memory);
    }
    OP_REQUIRES(context, valid, absl::InvalidArgumentError(kBadLatticeMessage));
  }
  bool reverse_ = false;
};

// ---------------------------------------------------------------------------------------------
// KerasDensePottsMeanField: the whole mean-field inference of a dense CRF with Potts
// compatibility in one kernel (the post-processing path; no gradient).
//
// KerasDensePottsMeanField(unary (B, N, C) float, splat_indices[K], barycentric_weights[K],
//                          blur_neighbors[K], kernel_weights: list(float) of K,
//                          num_iterations: int) -> probabilities (B, N, C)
//   Q = softmax(U); then `num_iterations` times: filter Q with each of the K lattices,
//   divide by that lattice's filtering of ones (NORMALIZE_AFTER), and
//   Q = softmax(U + sum_k w_k * filtered_k / norm_k).
//   The Potts energy sum_k w_k sum_{l' != l} filtered_k[l'] / norm_k differs from
//   -sum_k w_k filtered_k[l] / norm_k by a per-pixel constant, which the softmax ignores.
//   Same result as keras_dense.crf.mean_field.mean_field with potts_pairwise (to float
//   rounding: the exponential here is a polynomial approximation, relative error ~2e-7).
//   Buffers are taken once per call from the pool; nothing is allocated per iteration.

using FloatVector = Packet<float>::Type;
typedef int32_t IntVector __attribute__((vector_size(32)));

// exp(x) for 8 floats: x = n ln2 + r with |r| <= ln2 / 2, exp(r) from a degree-7 polynomial
// (the Cephes expf coefficients), 2^n from the exponent bits. Inputs below -87 give exactly 0
// (no denormals; the padding lanes of a softmax hold -inf).
__attribute__((always_inline)) inline FloatVector VectorExp(FloatVector x) {
  const FloatVector upper = FloatVector{} + 88.3762626647949f;
  const FloatVector lower = FloatVector{} - 87.0f;
  const IntVector underflow = x < lower;
  x = x < upper ? x : upper;
  x = x > lower ? x : lower;
  const FloatVector fx = x * 1.44269504088896341f + 0.5f;
  FloatVector n = __builtin_convertvector(__builtin_convertvector(fx, IntVector), FloatVector);
  n = n > fx ? n - 1.0f : n;  // floor
  x = x - n * 0.693359375f;
  x = x - n * -2.12194440e-4f;
  const FloatVector z = x * x;
  FloatVector y = FloatVector{} + 1.9875691500e-4f;
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * z + x + 1.0f;
  const IntVector bits = (__builtin_convertvector(n, IntVector) + 127) << 23;
  FloatVector scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return underflow ? FloatVector{} : y * scale;
}

// The largest lane (`Max`) or the sum of the lanes (`Sum`), in every lane.
__attribute__((always_inline)) inline FloatVector BroadcastMax(FloatVector v) {
  v = v > __builtin_shuffle(v, IntVector{4, 5, 6, 7, 0, 1, 2, 3})
          ? v
          : __builtin_shuffle(v, IntVector{4, 5, 6, 7, 0, 1, 2, 3});
  v = v > __builtin_shuffle(v, IntVector{2, 3, 0, 1, 6, 7, 4, 5})
          ? v
          : __builtin_shuffle(v, IntVector{2, 3, 0, 1, 6, 7, 4, 5});
  return v > __builtin_shuffle(v, IntVector{1, 0, 3, 2, 5, 4, 7, 6})
             ? v
             : __builtin_shuffle(v, IntVector{1, 0, 3, 2, 5, 4, 7, 6});
}

__attribute__((always_inline)) inline FloatVector BroadcastSum(FloatVector v) {
  v += __builtin_shuffle(v, IntVector{4, 5, 6, 7, 0, 1, 2, 3});
  v += __builtin_shuffle(v, IntVector{2, 3, 0, 1, 6, 7, 4, 5});
  return v + __builtin_shuffle(v, IntVector{1, 0, 3, 2, 5, 4, 7, 6});
}

// Q[n] = softmax(U[n] + sum_k scales[k][n] * slice_k(n)) for points [begin, end), where
// slice_k(n) is the barycentric interpolation of lattice k's blurred buffer at point n (the
// filter's slice, without alpha: `scales` holds it). `unary` rows are padded to whole vectors
// with -inf; the lattices' padding lanes are 0 (Q's are), so the padding lanes of the logits
// stay -inf and those of Q are 0. All classes of a point at once, as whole vectors. Q rows
// are written `q_stride` floats apart: the padded width (whole vectors), or the number of
// classes (the op's output). Returns false on an out-of-range index.
template <int kP>
KERAS_DENSE_MULTIVERSION bool UpdateMarginals(const float* __restrict unary,
                                              const ImageLattice* lattices,
                                              const float* const* blurred,
                                              const float* const* scales, int kernels,
                                              int64_t begin, int64_t end, int64_t channels,
                                              int64_t packets, int64_t q_stride,
                                              float* __restrict q) {
  using P = Packet<float>;
  constexpr int64_t kLanes = P::kLanes;
  const int64_t np = kP > 0 ? kP : packets;
  const int64_t padded = np * kLanes;
  FloatVector fixed_logits[kMaxStaticPackets], fixed_sums[kMaxStaticPackets];
  // The general case's vectors live in a float buffer aligned by hand (std::vector does not
  // align to a vector type's 32 bytes here).
  std::vector<float> general_vectors(kP > 0 ? 0 : (2 * np + 1) * kLanes);
  RowScratch<float, kP> staging(padded);
  FloatVector* general = nullptr;
  if (kP == 0) {
    void* start = general_vectors.data();
    size_t space = general_vectors.size() * sizeof(float);
    general = static_cast<FloatVector*>(
        std::align(sizeof(FloatVector), 2 * np * sizeof(FloatVector), start, space));
  }
  FloatVector* logit = kP > 0 ? fixed_logits : general;
  FloatVector* sum = kP > 0 ? fixed_sums : general + np;
  const bool whole_rows = q_stride == padded;
  bool valid = true;
  for (int64_t n = begin; n < end; ++n) {
    for (int64_t p = 0; p < np; ++p) logit[p] = P::Load(unary + n * padded + p * kLanes);
    for (int k = 0; k < kernels; ++k) {
      const ImageLattice& lattice = lattices[k];
      for (int64_t p = 0; p < np; ++p) sum[p] = FloatVector{};
      valid &= ForEachVertex(lattice.indices, lattice.weights, n, lattice.d1, lattice.max_points,
                             [&](int64_t r, float w) {
                               const float* row = blurred[k] + r * padded;
                               for (int64_t p = 0; p < np; ++p) {
                                 sum[p] += w * P::Load(row + p * kLanes);
                               }
                             });
      const float a = scales[k][n];
      for (int64_t p = 0; p < np; ++p) logit[p] += a * sum[p];
    }
    FloatVector top = logit[0];
    for (int64_t p = 1; p < np; ++p) top = logit[p] > top ? logit[p] : top;
    top = BroadcastMax(top);
    FloatVector total = FloatVector{};
    for (int64_t p = 0; p < np; ++p) {
      logit[p] = VectorExp(logit[p] - top);
      total += logit[p];
    }
    const FloatVector inverse = 1.0f / BroadcastSum(total);
    float* target = q + n * q_stride;
    if (whole_rows) {
      for (int64_t p = 0; p < np; ++p) P::Store(target + p * kLanes, logit[p] * inverse);
    } else {
      for (int64_t p = 0; p < np; ++p) {
        P::Store(staging.data() + p * kLanes, logit[p] * inverse);
      }
      std::copy(staging.data(), staging.data() + channels, target);
    }
  }
  return valid;
}

class PottsMeanFieldOp : public OpKernel {
 public:
  explicit PottsMeanFieldOp(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("kernel_weights", &kernel_weights_));
    OP_REQUIRES_OK(context, context->GetAttr("num_iterations", &num_iterations_));
    int kernels = 0;
    OP_REQUIRES_OK(context, context->GetAttr("num_kernels", &kernels));
    OP_REQUIRES(context, static_cast<int>(kernel_weights_.size()) == kernels,
                absl::InvalidArgumentError("kernel_weights must hold one weight per lattice"));
  }

  void Compute(OpKernelContext* context) override {
    const Tensor& unary = context->input(0);
    OP_REQUIRES(context, unary.dims() == 3,
                absl::InvalidArgumentError("unary must have shape (batch, points, classes)"));
    ::tensorflow::OpInputList indices, weights, neighbors;
    OP_REQUIRES_OK(context, context->input_list("splat_indices", &indices));
    OP_REQUIRES_OK(context, context->input_list("barycentric_weights", &weights));
    OP_REQUIRES_OK(context, context->input_list("blur_neighbors", &neighbors));
    const int64_t batch = unary.dim_size(0);
    const int64_t points = unary.dim_size(1);
    for (int k = 0; k < indices.size(); ++k) {
      const Tensor& index = indices[k];
      OP_REQUIRES(context,
                  index.dims() == 3 && index.dim_size(0) == batch &&
                      index.dim_size(1) == points && index.dim_size(2) >= 2 &&
                      weights[k].shape() == index.shape(),
                  absl::InvalidArgumentError(
                      "lattice " + std::to_string(k) +
                      ": splat_indices and barycentric_weights must both be (batch, points, "
                      "d+1) with the unary's batch and points"));
      OP_REQUIRES(context,
                  neighbors[k].dims() == 4 && neighbors[k].dim_size(0) == batch &&
                      neighbors[k].dim_size(2) == index.dim_size(2) &&
                      neighbors[k].dim_size(3) == 2,
                  absl::InvalidArgumentError("lattice " + std::to_string(k) +
                                             ": blur_neighbors must have shape (batch, M, d+1, 2)"));
    }
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, unary.shape(), &output));
    const int64_t channels = unary.dim_size(2);
    if (batch == 0 || points == 0 || channels == 0) return;
    const int64_t packets = PaddedChannels(channels, Packet<float>::kLanes) / Packet<float>::kLanes;
    DispatchPackets(packets, [&](auto static_packets) {
      Run<decltype(static_packets)::value>(context, unary, indices, weights, neighbors, output);
    });
  }

 private:
  template <int kP>
  void Run(OpKernelContext* context, const Tensor& unary,
           const ::tensorflow::OpInputList& indices, const ::tensorflow::OpInputList& weights,
           const ::tensorflow::OpInputList& neighbors, Tensor* output) {
    const int kernels = indices.size();
    const int64_t batch = unary.dim_size(0);
    const int64_t points = unary.dim_size(1);
    const int64_t channels = unary.dim_size(2);
    const int64_t padded = PaddedChannels(channels, Packet<float>::kLanes);
    const int64_t packets = padded / Packet<float>::kLanes;
    const int64_t pieces = NumPieces(context, points, 2048);
    BufferPool<float>* pool = BufferPool<float>::Global();
    // Per lattice: two lattice buffers and the other pieces' splat buffers.
    std::vector<BufferPool<float>::Lease> leases;
    std::vector<FilterScratch<float>> memory(kernels);
    for (int k = 0; k < kernels; ++k) {
      const int64_t size = FilterScratchSize<float>(neighbors[k].dim_size(1), channels);
      leases.push_back(pool->Acquire(size));
      leases.push_back(pool->Acquire(size));
      leases.push_back(pool->Acquire(std::max<int64_t>(1, (pieces - 1) * size)));
      memory[k] = {leases[3 * k].data(), leases[3 * k + 1].data(), leases[3 * k + 2].data()};
    }
    auto scale_memory = pool->Acquire(kernels * points);
    // U and Q with rows padded to whole vectors (U: -inf, Q: 0 in the padding lanes).
    auto padded_unary = pool->Acquire(points * padded);
    auto marginals = pool->Acquire(points * padded);
    auto ones = pool->Acquire(points);
    std::fill(ones.data(), ones.data() + points, 1.0f);
    std::vector<const float*> scales(kernels), blurred(kernels);
    for (int k = 0; k < kernels; ++k) scales[k] = scale_memory.data() + k * points;

    const float* unary_data = unary.flat<float>().data();
    float* out = output->flat<float>().data();
    int64_t vertices = 0;
    for (int k = 0; k < kernels; ++k) vertices += indices[k].dim_size(2);
    const int64_t update_cost = 10 * padded * (vertices + 4);
    bool valid = true;
    std::vector<ImageLattice> lattices(kernels);
    for (int64_t b = 0; b < batch; ++b) {
      const float* source = unary_data + b * points * channels;
      float* image_unary = padded_unary.data();
      ParallelFor(context, points, padded + 10, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) {
          std::copy(source + n * channels, source + (n + 1) * channels, image_unary + n * padded);
          std::fill(image_unary + n * padded + channels, image_unary + (n + 1) * padded,
                    -std::numeric_limits<float>::infinity());
        }
      });
      float* q = marginals.data();
      float* image_out = out + b * points * channels;
      for (int k = 0; k < kernels; ++k) {
        const int64_t d1 = indices[k].dim_size(2);
        const int64_t max_points = neighbors[k].dim_size(1);
        lattices[k] = {indices[k].flat<int32_t>().data() + b * points * d1,
                       weights[k].flat<float>().data() + b * points * d1,
                       neighbors[k].flat<int32_t>().data() + b * max_points * d1 * 2, d1,
                       max_points};
        // Per-point factor of the kernel: weight * alpha / (filtering of ones).
        float* scale = scale_memory.data() + k * points;
        valid &= FilterImage<float, 1>(context, ones.data(), scale, lattices[k], points, 1,
                                       false, pieces, memory[k]);
        const float factor = kernel_weights_[k] * LatticeAlpha<float>(d1);
        for (int64_t n = 0; n < points; ++n) scale[n] = factor / (scale[n] + 1e-20f);
      }
      std::atomic<bool> updated(true);
      // The last update writes the output (rows of `channels`), the others Q (padded rows).
      auto update = [&](int active_kernels, bool last) {
        ParallelFor(context, points, update_cost, [&](int64_t begin, int64_t end) {
          if (!UpdateMarginals<kP>(image_unary, lattices.data(), blurred.data(), scales.data(),
                                   active_kernels, begin, end, channels, packets,
                                   last ? channels : padded, last ? image_out : q)) {
            updated = false;
          }
        });
      };
      update(0, num_iterations_ == 0);  // Q = softmax(U)
      for (int iteration = 0; iteration < num_iterations_; ++iteration) {
        valid &= SplatImage<float, kP>(context, q, lattices.data(), memory.data(), kernels,
                                       points, padded, pieces);
        for (int k = 0; k < kernels; ++k) {
          valid &= BlurImage<float, kP>(context, lattices[k], padded, false, memory[k],
                                        &blurred[k]);
        }
        update(kernels, iteration + 1 == num_iterations_);
      }
      valid &= updated.load();
    }
    OP_REQUIRES(context, valid, absl::InvalidArgumentError(kBadLatticeMessage));
  }

  std::vector<float> kernel_weights_;
  int num_iterations_ = 0;
};

}  // namespace

REGISTER_OP("KerasDensePermutohedralBuild")
    .Input("features: float32")
    .Output("splat_indices: int32")
    .Output("barycentric_weights: float32")
    .Output("blur_neighbors: int32")
    .Output("num_points: int32")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle features;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &features));
      DimensionHandle batch = c->Dim(features, 0);
      DimensionHandle points = c->Dim(features, 1);
      DimensionHandle d1;
      TF_RETURN_IF_ERROR(c->Add(c->Dim(features, 2), 1, &d1));
      c->set_output(0, c->MakeShape({batch, points, d1}));
      c->set_output(1, c->MakeShape({batch, points, d1}));
      c->set_output(2, c->MakeShape({batch, c->UnknownDim(), d1, c->MakeDim(2)}));
      c->set_output(3, c->Vector(batch));
      return absl::OkStatus();
    })
    .Doc("Builds a permutohedral lattice over per-point features (see the source header).");

REGISTER_OP("KerasDensePermutohedralFilter")
    .Input("values: T")
    .Input("splat_indices: int32")
    .Input("barycentric_weights: float32")
    .Input("blur_neighbors: int32")
    .Output("output: T")
    .Attr("T: {float32, float64}")
    .Attr("reverse: bool = false")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle values;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &values));
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 3, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 4, &unused));
      c->set_output(0, values);
      return absl::OkStatus();
    })
    .Doc("Splat, blur along the d+1 lattice directions (reversed if `reverse`), slice.");

REGISTER_KERNEL_BUILDER(Name("KerasDensePermutohedralBuild").Device(DEVICE_CPU),
                        PermutohedralBuildOp);
REGISTER_KERNEL_BUILDER(
    Name("KerasDensePermutohedralFilter").Device(DEVICE_CPU).TypeConstraint<float>("T"),
    PermutohedralFilterOp<float>);
REGISTER_KERNEL_BUILDER(
    Name("KerasDensePermutohedralFilter").Device(DEVICE_CPU).TypeConstraint<double>("T"),
    PermutohedralFilterOp<double>);

REGISTER_OP("KerasDensePottsMeanField")
    .Input("unary: float32")
    .Input("splat_indices: num_kernels * int32")
    .Input("barycentric_weights: num_kernels * float32")
    .Input("blur_neighbors: num_kernels * int32")
    .Output("probabilities: float32")
    .Attr("num_kernels: int >= 1")
    .Attr("kernel_weights: list(float)")
    .Attr("num_iterations: int >= 0")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unary;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &unary));
      c->set_output(0, unary);
      return absl::OkStatus();
    })
    .Doc("Mean-field inference of a dense CRF with Potts compatibility (see the source).");

REGISTER_KERNEL_BUILDER(Name("KerasDensePottsMeanField").Device(DEVICE_CPU), PottsMeanFieldOp);

}  // namespace keras_dense
