// Fast R-CNN RoI max pooling (Girshick, 2015) with Caffe's ROIPoolingLayer semantics, as two
// TensorFlow CPU ops (the pure-TF twin is keras_dense/layers/roi_pooling.py).
//
// KerasDenseRoiMaxPool(features (B, H, W, C) float, rois (B, R, 4) float
//                      [ymin, xmin, ymax, xmax] in input pixels, inclusive)
//   -> (B, R, pooled_height, pooled_width, C) float
// KerasDenseRoiMaxPoolGrad(features, rois, grad (B, R, Ph, Pw, C)) -> (B, H, W, C) float
//
// Bins: every coordinate is multiplied by `spatial_scale` in float32 and rounded half away
// from zero; RoI size = end - start + 1, floored at 1; bin i spans
// [floor(i * size / P), ceil((i + 1) * size / P)) (float32 quotient and products, as Caffe),
// offset by the RoI start and clipped to the map. An empty bin outputs 0 and gets no
// gradient; any other bin outputs its maximum and sends all of its gradient to its argmax:
// the first maximal cell in row-major order (Caffe keeps a value only if strictly greater).
//
// The forward pass is split over (image, RoI) pairs, the backward pass over (image, channel
// block) pairs (disjoint parts of the gradient, so no atomics and a deterministic sum), on
// TensorFlow's intra-op CPU worker threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

#include "parallel_for.h"

namespace keras_dense {
namespace {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;

// Rounded coordinates are clipped to +-2^24 (exact in float32), as the pure-TF twin does.
constexpr float kMaxCoordinate = 16777216.0f;
// Channels per backward work unit (the unit's slice of the map stays in the L2 cache).
constexpr int kChannelBlock = 64;

// Eight float lanes and the matching int32 lanes (GCC/Clang vector extensions: one AVX2
// register, or two SSE / NEON registers); comparisons give -1/0 lanes, `?:` selects lane-wise.
typedef float Floats __attribute__((vector_size(32)));
typedef int32_t Ints __attribute__((vector_size(32)));
constexpr int kLanes = 8;

// The hot loops are compiled twice on x86-64, for AVX2 and for the baseline ISA, and picked
// at load time (the library is built without -march flags).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(KERAS_DENSE_NO_MULTIVERSION)
#define KERAS_DENSE_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define KERAS_DENSE_MULTIVERSION
#endif

// Unaligned load (an out-parameter: a vector returned by value would change the ABI).
template <typename V>
inline void Load(const float* source, V* value) {
  std::memcpy(value, source, sizeof(V));
}

// Work below this many (estimated) cycles runs on the calling thread.
constexpr int64_t kMinParallelCost = int64_t{1} << 20;

template <typename Fn>
void ParallelFor(OpKernelContext* context, int64_t total, int64_t cost, Fn fn) {
  ::keras_dense::ParallelFor(context, total, cost, kMinParallelCost, fn);
}

// C's round() of coordinate * scale, clipped to +-2^24; NaN reads as 0 (the pure-TF twin
// leaves NaN coordinates unspecified).
int ScaledCoordinate(float coordinate, float scale) {
  float value = coordinate * scale;
  if (std::isnan(value)) value = 0.0f;
  value = std::min(std::max(std::round(value), -kMaxCoordinate), kMaxCoordinate);
  return static_cast<int>(value);
}

// Half-open bin edges [begin[i], end[i]) along one axis, clipped to [0, limit].
void BinEdges(int start, int last, int pooled, int limit, int* begin, int* end) {
  const int size = std::max(last - start + 1, 1);
  const float bin = static_cast<float>(size) / static_cast<float>(pooled);
  for (int i = 0; i < pooled; ++i) {
    const float low = std::floor(static_cast<float>(i) * bin);
    const float high = std::ceil(static_cast<float>(i + 1) * bin);
    begin[i] = std::min(std::max(static_cast<int>(low) + start, 0), limit);
    end[i] = std::min(std::max(static_cast<int>(high) + start, 0), limit);
  }
}

// The bins of one RoI.
struct RoiBins {
  std::vector<int> h_begin, h_end, w_begin, w_end;

  RoiBins(int pooled_h, int pooled_w)
      : h_begin(pooled_h), h_end(pooled_h), w_begin(pooled_w), w_end(pooled_w) {}

  void Compute(const float* roi, float scale, int height, int width) {
    const int y0 = ScaledCoordinate(roi[0], scale);
    const int x0 = ScaledCoordinate(roi[1], scale);
    const int y1 = ScaledCoordinate(roi[2], scale);
    const int x1 = ScaledCoordinate(roi[3], scale);
    BinEdges(y0, y1, static_cast<int>(h_begin.size()), height, h_begin.data(), h_end.data());
    BinEdges(x0, x1, static_cast<int>(w_begin.size()), width, w_begin.data(), w_end.data());
  }
};

// Maximum over the cells [h0, h1) x [w0, w1) of `map` into `out` (0 when empty).
KERAS_DENSE_MULTIVERSION
void PoolBin(const float* map, int width, int64_t channels, int h0, int h1, int w0, int w1,
             float* __restrict out) {
  if (h1 <= h0 || w1 <= w0) {
    std::fill(out, out + channels, 0.0f);
    return;
  }
  std::memcpy(out, map + (int64_t{h0} * width + w0) * channels, channels * sizeof(float));
  for (int h = h0; h < h1; ++h) {
    for (int w = w0; w < w1; ++w) {
      const float* __restrict cell = map + (int64_t{h} * width + w) * channels;
      for (int64_t c = 0; c < channels; ++c) out[c] = cell[c] > out[c] ? cell[c] : out[c];
    }
  }
}

// Finds Caffe's argmax (the first strictly greater value in row-major order) of the bin
// [h0, h1) x [w0, w1) for kGroups * kLanes consecutive channels and adds `up` to the gradient
// there. Two groups keep their state in registers on AVX2 and halve the passes over the bin.
template <int kGroups>
inline __attribute__((always_inline)) void BinArgmax(const float* map, int width,
                                                     int64_t channels, int h0, int h1, int w0,
                                                     int w1, const float* up, float* target) {
  const int32_t first = h0 * width + w0;
  Floats best[kGroups];
  Ints where[kGroups];
  for (int g = 0; g < kGroups; ++g) {
    Load(map + int64_t{first} * channels + g * kLanes, &best[g]);
    where[g] = Ints{} + first;
  }
  for (int h = h0; h < h1; ++h) {
    for (int w = w0; w < w1; ++w) {
      const int32_t position = h * width + w;
      const float* cell = map + int64_t{position} * channels;
      for (int g = 0; g < kGroups; ++g) {
        Floats value;
        Load(cell + g * kLanes, &value);
        const Ints greater = value > best[g];
        best[g] = greater ? value : best[g];
        where[g] = greater ? Ints{} + position : where[g];
      }
    }
  }
  int32_t cells[kGroups * kLanes];
  std::memcpy(cells, where, sizeof(cells));
  for (int k = 0; k < kGroups * kLanes; ++k) target[int64_t{cells[k]} * channels + k] += up[k];
}

// The same for a single channel.
inline void BinArgmaxScalar(const float* map, int width, int64_t channels, int h0, int h1,
                            int w0, int w1, const float* up, float* target) {
  int32_t where = h0 * width + w0;
  float best = map[int64_t{where} * channels];
  for (int h = h0; h < h1; ++h) {
    for (int w = w0; w < w1; ++w) {
      const int32_t position = h * width + w;
      const float value = map[int64_t{position} * channels];
      if (value > best) {
        best = value;
        where = position;
      }
    }
  }
  target[int64_t{where} * channels] += up[0];
}

// Adds the upstream gradient `up` (Ph, Pw, channels) of one RoI to the argmax cells of its
// bins in `target`, for the channels [0, count) of the block `map`, `up` and `target` start
// at (`channels` is the row stride of all three).
KERAS_DENSE_MULTIVERSION
void BackwardRoi(const RoiBins& roi, const float* map, int width, int64_t channels,
                 int64_t count, const float* up, float* target) {
  const int pooled_h = static_cast<int>(roi.h_begin.size());
  const int pooled_w = static_cast<int>(roi.w_begin.size());
  for (int i = 0; i < pooled_h; ++i) {
    for (int j = 0; j < pooled_w; ++j, up += channels) {
      const int h0 = roi.h_begin[i], h1 = roi.h_end[i];
      const int w0 = roi.w_begin[j], w1 = roi.w_end[j];
      if (h1 <= h0 || w1 <= w0) continue;
      int64_t c = 0;
      for (; c + 2 * kLanes <= count; c += 2 * kLanes) {
        BinArgmax<2>(map + c, width, channels, h0, h1, w0, w1, up + c, target + c);
      }
      for (; c + kLanes <= count; c += kLanes) {
        BinArgmax<1>(map + c, width, channels, h0, h1, w0, w1, up + c, target + c);
      }
      for (; c < count; ++c) {
        BinArgmaxScalar(map + c, width, channels, h0, h1, w0, w1, up + c, target + c);
      }
    }
  }
}

// Attributes and shapes shared by both kernels.
class RoiPoolBase : public OpKernel {
 public:
  explicit RoiPoolBase(OpKernelConstruction* context) : OpKernel(context) {
    OP_REQUIRES_OK(context, context->GetAttr("pooled_height", &pooled_h_));
    OP_REQUIRES_OK(context, context->GetAttr("pooled_width", &pooled_w_));
    OP_REQUIRES_OK(context, context->GetAttr("spatial_scale", &scale_));
  }

 protected:
  // Checks features (B, H, W, C) and rois (B, R, 4).
  static ::absl::Status CheckInputs(const Tensor& features, const Tensor& rois) {
    if (features.dims() != 4) {
      return ::absl::InvalidArgumentError("features must be (B, H, W, C)");
    }
    if (rois.dims() != 3 || rois.dim_size(2) != 4 || rois.dim_size(0) != features.dim_size(0)) {
      return ::absl::InvalidArgumentError("rois must be (B, R, 4)");
    }
    if (features.dim_size(1) * features.dim_size(2) >= (int64_t{1} << 31)) {
      return ::absl::InvalidArgumentError("feature map too large");
    }
    return ::absl::OkStatus();
  }

  TensorShape OutputShape(const Tensor& features, const Tensor& rois) const {
    return TensorShape(
        {features.dim_size(0), rois.dim_size(1), pooled_h_, pooled_w_, features.dim_size(3)});
  }

  int pooled_h_;
  int pooled_w_;
  float scale_;
};

class RoiMaxPoolOp : public RoiPoolBase {
 public:
  using RoiPoolBase::RoiPoolBase;

  void Compute(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    const Tensor& rois = context->input(1);
    OP_REQUIRES_OK(context, CheckInputs(features, rois));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, OutputShape(features, rois), &output));
    const int64_t count = rois.dim_size(1);
    const int height = static_cast<int>(features.dim_size(1));
    const int width = static_cast<int>(features.dim_size(2));
    const int64_t channels = features.dim_size(3);
    const float* data = features.flat<float>().data();
    const float* boxes = rois.flat<float>().data();
    float* out = output->flat<float>().data();
    const int64_t bins = int64_t{pooled_h_} * pooled_w_;
    const int64_t cost = bins * channels * 16 + 100;
    ParallelFor(context, features.dim_size(0) * count, cost, [&](int64_t begin, int64_t end) {
      RoiBins roi(pooled_h_, pooled_w_);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t image = unit / count;
        roi.Compute(boxes + unit * 4, scale_, height, width);
        const float* map = data + image * height * width * channels;
        float* pooled = out + unit * bins * channels;
        for (int i = 0; i < pooled_h_; ++i) {
          for (int j = 0; j < pooled_w_; ++j, pooled += channels) {
            PoolBin(map, width, channels, roi.h_begin[i], roi.h_end[i], roi.w_begin[j],
                    roi.w_end[j], pooled);
          }
        }
      }
    });
  }

};

class RoiMaxPoolGradOp : public RoiPoolBase {
 public:
  using RoiPoolBase::RoiPoolBase;

  void Compute(OpKernelContext* context) override {
    const Tensor& features = context->input(0);
    const Tensor& rois = context->input(1);
    const Tensor& grad = context->input(2);
    OP_REQUIRES_OK(context, CheckInputs(features, rois));
    OP_REQUIRES(context, grad.shape() == OutputShape(features, rois),
                ::absl::InvalidArgumentError("grad must be (B, R, Ph, Pw, C)"));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(0, features.shape(), &output));
    const int64_t batch = features.dim_size(0);
    const int64_t count = rois.dim_size(1);
    const int height = static_cast<int>(features.dim_size(1));
    const int width = static_cast<int>(features.dim_size(2));
    const int64_t channels = features.dim_size(3);
    const int64_t blocks = (channels + kChannelBlock - 1) / kChannelBlock;
    const float* data = features.flat<float>().data();
    const float* boxes = rois.flat<float>().data();
    const float* upstream = grad.flat<float>().data();
    float* result = output->flat<float>().data();
    const int64_t plane = int64_t{height} * width * channels;
    const int64_t bins = int64_t{pooled_h_} * pooled_w_;
    const int64_t cost = count * bins * kChannelBlock * 16 + plane / blocks;
    ParallelFor(context, batch * blocks, cost, [&](int64_t begin, int64_t end) {
      RoiBins roi(pooled_h_, pooled_w_);
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t image = unit / blocks;
        const int64_t c0 = (unit % blocks) * kChannelBlock;
        const int64_t width_c = std::min<int64_t>(kChannelBlock, channels - c0);
        const float* map = data + image * plane + c0;
        float* target = result + image * plane + c0;
        for (int64_t cell = 0; cell < int64_t{height} * width; ++cell) {
          std::fill(target + cell * channels, target + cell * channels + width_c, 0.0f);
        }
        for (int64_t r = 0; r < count; ++r) {
          roi.Compute(boxes + (image * count + r) * 4, scale_, height, width);
          const float* up = upstream + (image * count + r) * bins * channels + c0;
          BackwardRoi(roi, map, width, channels, width_c, up, target);
        }
      }
    });
  }

};

::absl::Status PooledShape(InferenceContext* c) {
  ShapeHandle features, rois;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &features));
  TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &rois));
  int pooled_h, pooled_w;
  TF_RETURN_IF_ERROR(c->GetAttr("pooled_height", &pooled_h));
  TF_RETURN_IF_ERROR(c->GetAttr("pooled_width", &pooled_w));
  c->set_output(0, c->MakeShape({c->Dim(features, 0), c->Dim(rois, 1), c->MakeDim(pooled_h),
                                 c->MakeDim(pooled_w), c->Dim(features, 3)}));
  return ::absl::OkStatus();
}

REGISTER_OP("KerasDenseRoiMaxPool")
    .Input("features: float")
    .Input("rois: float")
    .Output("output: float")
    .Attr("pooled_height: int >= 1")
    .Attr("pooled_width: int >= 1")
    .Attr("spatial_scale: float")
    .SetShapeFn(PooledShape);

REGISTER_OP("KerasDenseRoiMaxPoolGrad")
    .Input("features: float")
    .Input("rois: float")
    .Input("grad: float")
    .Output("features_grad: float")
    .Attr("pooled_height: int >= 1")
    .Attr("pooled_width: int >= 1")
    .Attr("spatial_scale: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->input(0));
      return ::absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("KerasDenseRoiMaxPool").Device(DEVICE_CPU), RoiMaxPoolOp);
REGISTER_KERNEL_BUILDER(Name("KerasDenseRoiMaxPoolGrad").Device(DEVICE_CPU), RoiMaxPoolGradOp);

}  // namespace
}  // namespace keras_dense
