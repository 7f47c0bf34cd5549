// Lattice rows as whole 32-byte vectors, shared by the lattice ops (permutohedral_ops.cc,
// lattice_convolution_ops.cc).
#ifndef KERAS_DENSE_OPS_LATTICE_ROWS_H_
#define KERAS_DENSE_OPS_LATTICE_ROWS_H_

#include <cstdint>
#include <type_traits>
#include <vector>

namespace keras_dense {

// Lattice rows hold the C channels padded with zeros to a multiple of one 32-byte vector
// (8 floats or 4 doubles), so that the hot loops run whole vectors with no scalar remainder.
template <typename T>
struct Packet {
  static constexpr int64_t kLanes = 32 / sizeof(T);
  typedef T Type __attribute__((vector_size(32)));
  // Always inlined, so that each clone uses its own instructions (and no call passes a
  // vector across the AVX / non-AVX ABI boundary).
  __attribute__((always_inline)) static inline Type Load(const T* p) {
    Type v;
    __builtin_memcpy(&v, p, sizeof(v));
    return v;
  }
  __attribute__((always_inline)) static inline void Store(T* p, Type v) {
    __builtin_memcpy(p, &v, sizeof(v));
  }
};

inline int64_t PaddedChannels(int64_t channels, int64_t lanes) {
  return (channels + lanes - 1) / lanes * lanes;
}

// The filter's kernels process all C channels of a lattice row or a point together, as
// `packets` whole 32-byte vectors. kP > 0 fixes the number of packets at compile time (the
// common small C: accumulators stay in registers and the loops unroll); kP == 0 is the
// general case (packets at run time).
constexpr int kMaxStaticPackets = 6;

// Calls `fn(std::integral_constant<int, kP>())` with kP = `packets` when a kernel is compiled
// for that many packets (1 to kMaxStaticPackets), and kP = 0 (the general case) otherwise.
template <typename Fn>
void DispatchPackets(int64_t packets, Fn fn) {
  static_assert(kMaxStaticPackets == 6, "add the cases to DispatchPackets");
  switch (packets) {
    case 1: return fn(std::integral_constant<int, 1>());
    case 2: return fn(std::integral_constant<int, 2>());
    case 3: return fn(std::integral_constant<int, 3>());
    case 4: return fn(std::integral_constant<int, 4>());
    case 5: return fn(std::integral_constant<int, 5>());
    case 6: return fn(std::integral_constant<int, 6>());
    default: return fn(std::integral_constant<int, 0>());
  }
}

// One row of `padded` scratch values: on the stack when kP > 0 (at most kMaxStaticPackets
// vectors), on the heap in the general case.
template <typename T, int kP>
class RowScratch {
 public:
  explicit RowScratch(int64_t padded) : general_(kP > 0 ? 0 : padded) {}
  T* data() { return kP > 0 ? fixed_ : general_.data(); }

 private:
  T fixed_[kMaxStaticPackets * Packet<T>::kLanes];
  std::vector<T> general_;
};

}  // namespace keras_dense

#endif  // KERAS_DENSE_OPS_LATTICE_ROWS_H_
