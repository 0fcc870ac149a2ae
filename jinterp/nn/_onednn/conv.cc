// oneDNN 2-D convolution (NHWC activations, HWIO kernels, float32) as XLA FFI handlers for jax.ffi: forward,
// backward-data (dx) and backward-weights (dW), with stride, asymmetric non-negative padding, dilation and groups.
// Semantics: lax.conv_general_dilated(x, w, (sh, sw), ((pt, pb), (pl, pr)), rhs_dilation=(dh, dw),
// dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups).
//
// Activations are handed to oneDNN in their own NHWC layout (no reorder: PyTorch's channels_last path); the kernel
// is declared with format "any" so that oneDNN picks its blocked weight layout, and is reordered from / to the HWIO
// buffer (kh·kw·Cin·Cout floats, small next to the activations).
//
// Leading batch dimensions (jax.vmap with vmap_method="expand_dims": each operand's leading dims are either the
// output's or 1) are looped over here; where the kernel has none and the activation all of them (vmap over
// images), they are folded into N instead (one call).
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using Dims = ffi::Span<const int64_t>;

namespace {

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

struct Geometry {
  int64_t n, h, w, cin, ho, wo, cout, kh, kw, groups;
  memory::dims stride, pad_l, pad_r, dil;  // dil in oneDNN's convention: 0 = dense
};

memory::desc ActDesc(int64_t n, int64_t c, int64_t h, int64_t w) {
  return memory::desc({n, c, h, w}, memory::data_type::f32, memory::format_tag::nhwc);
}

memory::dims WeightDims(const Geometry& g) {
  if (g.groups == 1) return {g.cout, g.cin, g.kh, g.kw};
  return {g.groups, g.cout / g.groups, g.cin / g.groups, g.kh, g.kw};
}

// The user's HWIO buffer; with groups, output channel o = group·(Cout/G) + o_g, so HWIO is (h, w, i, g, o_g).
memory::desc UserWeightDesc(const Geometry& g) {
  return memory::desc(WeightDims(g), memory::data_type::f32,
                      g.groups == 1 ? memory::format_tag::hwio : memory::format_tag::hwigo);
}

memory::desc AnyWeightDesc(const Geometry& g) {
  return memory::desc(WeightDims(g), memory::data_type::f32, memory::format_tag::any);
}

dnnl::convolution_forward::primitive_desc FwdPd(const Geometry& g, const dnnl::primitive_attr& attr) {
  return dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      ActDesc(g.n, g.cin, g.h, g.w), AnyWeightDesc(g), ActDesc(g.n, g.cout, g.ho, g.wo), g.stride, g.dil,
      g.pad_l, g.pad_r, attr);
}

// a = {sh, sw, pt, pb, pl, pr, dh, dw, groups}; x4 = (N, H, W, Cin), y4 = (N, Ho, Wo, Cout).
Geometry MakeGeometry(const std::array<int64_t, 4>& x4, const std::array<int64_t, 4>& y4, int64_t kh, int64_t kw,
                      const int64_t* a) {
  Geometry g;
  g.n = x4[0]; g.h = x4[1]; g.w = x4[2]; g.cin = x4[3];
  g.ho = y4[1]; g.wo = y4[2]; g.cout = y4[3];
  g.kh = kh; g.kw = kw; g.groups = a[8];
  g.stride = {a[0], a[1]}; g.pad_l = {a[2], a[4]}; g.pad_r = {a[3], a[5]}; g.dil = {a[6] - 1, a[7] - 1};
  return g;
}

// Primitives (and their descriptors, which are what is slow to create: oneDNN's own primitive cache only skips
// the JIT code generation) are built once per geometry and kept: a training step calls the same few convolutions
// every time, and at small shapes building them cost more than running them (about 1 ms per call at 8x8x16).
// XLA runs custom calls on any of its worker threads, and with oneDNN's default library-managed scratchpad a
// primitive must run on the thread that created it; so every primitive here takes a user scratchpad, allocated
// per call (oneDNN: thread-safe as long as no two executions share one). The map itself is guarded.
struct Kernels {
  memory::desc weights;  // the primitive's own (possibly blocked) weights / diff_weights layout
  dnnl::primitive conv;
  memory::desc conv_scratchpad;
  dnnl::reorder to_primitive_weights;  // user HWIO -> weights (bwd-weights: diff_weights -> user); empty if equal
  memory::desc reorder_scratchpad;
  bool weights_are_user = true;
};

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

enum class Kind { kFwd, kBwdData, kBwdWeights };

std::string Key(Kind kind, const Geometry& g) {
  std::string k = std::to_string(static_cast<int>(kind));
  for (int64_t v : {g.n, g.h, g.w, g.cin, g.ho, g.wo, g.cout, g.kh, g.kw, g.groups}) k += "," + std::to_string(v);
  for (const auto* d : {&g.stride, &g.pad_l, &g.pad_r, &g.dil})
    for (auto v : *d) k += ";" + std::to_string(v);
  return k;
}

// Backward-data and backward-weights descriptors take the same arguments (the forward one as a hint).
template <typename Pd>
Pd BackwardPd(const Geometry& g, const dnnl::convolution_forward::primitive_desc& fwd,
              const dnnl::primitive_attr& attr) {
  return Pd(Engine(), dnnl::algorithm::convolution_direct, ActDesc(g.n, g.cin, g.h, g.w), AnyWeightDesc(g),
            ActDesc(g.n, g.cout, g.ho, g.wo), g.stride, g.dil, g.pad_l, g.pad_r, fwd, attr);
}

Kernels MakeKernels(Kind kind, const Geometry& g) {
  Kernels k;
  const dnnl::primitive_attr attr = UserScratchpad();
  auto fwd = FwdPd(g, attr);
  memory::desc user = UserWeightDesc(g);
  if (kind == Kind::kFwd) {
    k.weights = fwd.weights_desc();
    k.conv_scratchpad = fwd.scratchpad_desc();
    k.conv = dnnl::convolution_forward(fwd);
  } else if (kind == Kind::kBwdData) {
    auto pd = BackwardPd<dnnl::convolution_backward_data::primitive_desc>(g, fwd, attr);
    k.weights = pd.weights_desc();
    k.conv_scratchpad = pd.scratchpad_desc();
    k.conv = dnnl::convolution_backward_data(pd);
  } else {
    auto pd = BackwardPd<dnnl::convolution_backward_weights::primitive_desc>(g, fwd, attr);
    k.weights = pd.diff_weights_desc();
    k.conv_scratchpad = pd.scratchpad_desc();
    k.conv = dnnl::convolution_backward_weights(pd);
  }
  k.weights_are_user = k.weights == user;
  if (!k.weights_are_user) {
    auto reorder = kind == Kind::kBwdWeights
                       ? dnnl::reorder::primitive_desc(Engine(), k.weights, Engine(), user, attr)
                       : dnnl::reorder::primitive_desc(Engine(), user, Engine(), k.weights, attr);
    k.reorder_scratchpad = reorder.scratchpad_desc();
    k.to_primitive_weights = dnnl::reorder(reorder);
  }
  return k;
}

const Kernels& CachedKernels(Kind kind, const Geometry& g) {
  static std::mutex mu;
  static std::unordered_map<std::string, std::unique_ptr<Kernels>> cache;
  std::string key = Key(kind, g);
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, std::make_unique<Kernels>(MakeKernels(kind, g))).first;
  return *it->second;
}

// Runs the weight reorder from `from` to `to` with its own scratchpad.
void Reorder(const Kernels& k, memory& from, memory& to, dnnl::stream& s) {
  memory scratch(k.reorder_scratchpad, Engine());
  k.to_primitive_weights.execute(s, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}, {DNNL_ARG_SCRATCHPAD, scratch}});
}

// The kernel in the primitive's layout: the user's HWIO buffer itself, or a reordered copy.
memory PrimitiveWeights(const Kernels& k, const Geometry& g, float* data, dnnl::stream& s) {
  memory user(UserWeightDesc(g), Engine(), data);
  if (k.weights_are_user) return user;
  memory mem(k.weights, Engine());
  Reorder(k, user, mem, s);
  return mem;
}

void RunFwd(const Geometry& g, float* x, float* w, float* y) {
  const Kernels& k = CachedKernels(Kind::kFwd, g);
  dnnl::stream s(Engine());
  memory x_mem(ActDesc(g.n, g.cin, g.h, g.w), Engine(), x), y_mem(ActDesc(g.n, g.cout, g.ho, g.wo), Engine(), y);
  memory w_mem = PrimitiveWeights(k, g, w, s);
  memory scratch(k.conv_scratchpad, Engine());
  k.conv.execute(s, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DST, y_mem},
                     {DNNL_ARG_SCRATCHPAD, scratch}});
  s.wait();
}

void RunBwdData(const Geometry& g, float* dy, float* w, float* dx) {
  const Kernels& k = CachedKernels(Kind::kBwdData, g);
  dnnl::stream s(Engine());
  memory dy_mem(ActDesc(g.n, g.cout, g.ho, g.wo), Engine(), dy), dx_mem(ActDesc(g.n, g.cin, g.h, g.w), Engine(), dx);
  memory w_mem = PrimitiveWeights(k, g, w, s);
  memory scratch(k.conv_scratchpad, Engine());
  k.conv.execute(s, {{DNNL_ARG_DIFF_DST, dy_mem}, {DNNL_ARG_WEIGHTS, w_mem}, {DNNL_ARG_DIFF_SRC, dx_mem},
                     {DNNL_ARG_SCRATCHPAD, scratch}});
  s.wait();
}

void RunBwdWeights(const Geometry& g, float* x, float* dy, float* dw) {
  const Kernels& k = CachedKernels(Kind::kBwdWeights, g);
  dnnl::stream s(Engine());
  memory x_mem(ActDesc(g.n, g.cin, g.h, g.w), Engine(), x), dy_mem(ActDesc(g.n, g.cout, g.ho, g.wo), Engine(), dy);
  memory w_user(UserWeightDesc(g), Engine(), dw);
  memory w_mem = k.weights_are_user ? w_user : memory(k.weights, Engine());
  memory scratch(k.conv_scratchpad, Engine());
  k.conv.execute(s, {{DNNL_ARG_SRC, x_mem}, {DNNL_ARG_DIFF_DST, dy_mem}, {DNNL_ARG_DIFF_WEIGHTS, w_mem},
                     {DNNL_ARG_SCRATCHPAD, scratch}});
  if (!k.weights_are_user) Reorder(k, w_mem, w_user, s);
  s.wait();
}

// The leading (vmap) dims of operands of rank 4 + k against the output's k leading dims.
struct BatchLoop {
  std::vector<int64_t> out_batch;
  int64_t count = 1;
  explicit BatchLoop(Dims out_dims) {
    for (size_t i = 0; i + 4 < out_dims.size(); ++i) {
      out_batch.push_back(out_dims[i]);
      count *= out_dims[i];
    }
  }
  // Element offset in an operand with dims `dims` of flat output batch index b (stride 0 along size-1 dims).
  int64_t Offset(Dims dims, int64_t b) const {
    int64_t stride = 1;
    for (size_t i = dims.size() - 4; i < dims.size(); ++i) stride *= dims[i];
    int64_t off = 0;
    for (int64_t i = static_cast<int64_t>(out_batch.size()) - 1; i >= 0; --i) {
      int64_t idx = b % out_batch[i];
      b /= out_batch[i];
      if (dims[i] != 1) off += idx * stride;
      stride *= dims[i];
    }
    return off;
  }
  bool Full(Dims dims) const {
    for (size_t i = 0; i < out_batch.size(); ++i)
      if (dims[i] != out_batch[i]) return false;
    return true;
  }
  bool None(Dims dims) const {
    for (size_t i = 0; i < out_batch.size(); ++i)
      if (dims[i] != 1) return false;
    return true;
  }
};

// The trailing 4 dims, N multiplied by `fold`.
std::array<int64_t, 4> Last4(Dims dims, int64_t fold = 1) {
  size_t k = dims.size() - 4;
  return {dims[k] * fold, dims[k + 1], dims[k + 2], dims[k + 3]};
}

ffi::Error Guard(const std::function<void()>& body) {
  try {
    body();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("jinterp oneDNN convolution: ") + e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("jinterp oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

// Forward (act = x, out = y) or backward-data (act = dy, out = dx): run(g, act, kernel, out).
template <typename Run>
ffi::Error ActKernelCall(ffi::Buffer<ffi::F32>& act, ffi::Buffer<ffi::F32>& ker, ffi::ResultBuffer<ffi::F32>& out,
                         bool act_is_input, const int64_t* a, Run run) {
  return Guard([&] {
    Dims ad = act.dimensions(), kd = ker.dimensions(), od = out->dimensions();
    BatchLoop loop(od);
    size_t k = kd.size() - 4;
    int64_t fold = (loop.None(kd) && loop.Full(ad)) ? loop.count : 1;
    auto a4 = Last4(ad, fold), o4 = Last4(od, fold);
    Geometry g = act_is_input ? MakeGeometry(a4, o4, kd[k], kd[k + 1], a) : MakeGeometry(o4, a4, kd[k], kd[k + 1], a);
    if (fold > 1 || loop.count == 1) {
      run(g, act.typed_data(), ker.typed_data(), out->typed_data());
      return;
    }
    for (int64_t b = 0; b < loop.count; ++b)
      run(g, act.typed_data() + loop.Offset(ad, b), ker.typed_data() + loop.Offset(kd, b),
          out->typed_data() + loop.Offset(od, b));
  });
}

#define JINTERP_ATTR_PARAMS \
  int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t dh, int64_t dw, int64_t groups

ffi::Error ConvFwd(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                   JINTERP_ATTR_PARAMS) {
  const int64_t a[] = {sh, sw, pt, pb, pl, pr, dh, dw, groups};
  return ActKernelCall(x, w, y, true, a, RunFwd);
}

ffi::Error ConvBwdData(ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                       JINTERP_ATTR_PARAMS) {
  const int64_t a[] = {sh, sw, pt, pb, pl, pr, dh, dw, groups};
  return ActKernelCall(dy, w, dx, false, a, RunBwdData);
}

// dW from x and dy: one oneDNN call per output batch index (per-model or per-example kernel gradients).
ffi::Error ConvBwdWeights(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::ResultBuffer<ffi::F32> dwt,
                          JINTERP_ATTR_PARAMS) {
  const int64_t a[] = {sh, sw, pt, pb, pl, pr, dh, dw, groups};
  return Guard([&] {
    Dims xd = x.dimensions(), yd = dy.dimensions(), wd = dwt->dimensions();
    BatchLoop loop(wd);
    size_t k = wd.size() - 4;
    Geometry g = MakeGeometry(Last4(xd), Last4(yd), wd[k], wd[k + 1], a);
    for (int64_t b = 0; b < loop.count; ++b)
      RunBwdWeights(g, x.typed_data() + loop.Offset(xd, b), dy.typed_data() + loop.Offset(yd, b),
                    dwt->typed_data() + loop.Offset(wd, b));
  });
}

}  // namespace

#define JINTERP_CONV_BINDING                                                                                  \
  ffi::Ffi::Bind()                                                                                            \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                           \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                           \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                           \
      .Attr<int64_t>("sh")                                                                                    \
      .Attr<int64_t>("sw")                                                                                    \
      .Attr<int64_t>("pt")                                                                                    \
      .Attr<int64_t>("pb")                                                                                    \
      .Attr<int64_t>("pl")                                                                                    \
      .Attr<int64_t>("pr")                                                                                    \
      .Attr<int64_t>("dh")                                                                                    \
      .Attr<int64_t>("dw")                                                                                    \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(JinterpOnednnConvFwd, ConvFwd, JINTERP_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JinterpOnednnConvBwdData, ConvBwdData, JINTERP_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(JinterpOnednnConvBwdWeights, ConvBwdWeights, JINTERP_CONV_BINDING);
