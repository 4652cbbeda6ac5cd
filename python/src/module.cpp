// flashsigmoid._C: the nanobind extension behind the Python package.
//
// It includes nothing of PyTorch: tensors become descriptors (pointer, dtype code, device, shapes,
// strides) through their Python attributes, and the CUDA stream comes as an integer. The binary
// therefore does not depend on the PyTorch version or its C++ ABI; dispatcher registration,
// autograd, fake tensors and torch.compile live in Python (flashsigmoid/_ops.py, torch.library ops).
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "flashsigmoid/flashsigmoid.hpp"

namespace nb = nanobind;
namespace fs = flashsigmoid;

namespace {

fs::TensorView make_view(std::uintptr_t data, int dtype, int device_type, int device_index,
                         const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& strides) {
  if (dtype < 0 || dtype > static_cast<int>(fs::DType::int32)) {
    throw fs::Error("flashsigmoid: unknown dtype code " + std::to_string(dtype));
  }
  if (device_type != static_cast<int>(fs::DeviceType::cpu) && device_type != static_cast<int>(fs::DeviceType::cuda)) {
    throw fs::Error("flashsigmoid: unknown device type code " + std::to_string(device_type) +
                    "; accepted: cpu, cuda");
  }
  if (shape.size() != strides.size()) {
    throw fs::Error("flashsigmoid: tensor has " + std::to_string(shape.size()) + " sizes but " +
                    std::to_string(strides.size()) + " strides");
  }
  if (shape.empty() || shape.size() > static_cast<std::size_t>(fs::kMaxRank)) {
    throw fs::Error("flashsigmoid: tensors must have rank 1 to " + std::to_string(fs::kMaxRank) + ", got rank " +
                    std::to_string(shape.size()));
  }
  fs::TensorView t;
  t.data = reinterpret_cast<void*>(data);
  t.dtype = static_cast<fs::DType>(dtype);
  t.device = fs::Device{static_cast<fs::DeviceType>(device_type), device_index};
  t.rank = static_cast<int>(shape.size());
  for (std::size_t d = 0; d < shape.size(); ++d) {
    t.shape[d] = shape[d];
    t.stride[d] = strides[d];
  }
  return t;
}

// torch tensors read through their Python attributes (no PyTorch headers: the binary stays
// independent of PyTorch's version and C++ ABI). The package registers its dtype -> code table once
// (set_dtype_codes), as handles kept for the life of the process (static nb::objects would be
// released after the interpreter is gone).
std::vector<std::pair<nb::handle, int>>& dtype_codes() {
  static std::vector<std::pair<nb::handle, int>> codes;
  return codes;
}

std::string python_str(nb::handle h) { return nb::str(h).c_str(); }

fs::TensorView view_of(nb::handle t, const char* name) {
  if (t.is_none()) return {};
  static const nb::handle kDtype = nb::str("dtype").release(), kIsCuda = nb::str("is_cuda").release(),
                          kIsCpu = nb::str("is_cpu").release(), kGetDevice = nb::str("get_device").release(),
                          kShape = nb::str("shape").release(), kStride = nb::str("stride").release(),
                          kDataPtr = nb::str("data_ptr").release();
  const nb::object dtype = t.attr(kDtype);
  int code = -1;
  for (const auto& [obj, c] : dtype_codes()) {
    if (obj.is(dtype)) code = c;
  }
  if (code < 0) {
    std::string d = python_str(dtype);
    if (d.rfind("torch.", 0) == 0) d = d.substr(6);
    throw fs::Error(std::string("flashsigmoid: ") + name + " has dtype " + d +
                    ", which flashsigmoid does not take; accepted: float32, float16, bfloat16, float64 (cu_seqlens: "
                    "int32)");
  }
  int device = 0, index = 0;
  if (nb::cast<bool>(t.attr(kIsCuda))) {
    device = static_cast<int>(fs::DeviceType::cuda);
    index = nb::cast<int>(t.attr(kGetDevice)());
  } else if (nb::cast<bool>(t.attr(kIsCpu))) {
    device = static_cast<int>(fs::DeviceType::cpu);
  } else {
    throw fs::Error(std::string("flashsigmoid: ") + name + " is on device type '" +
                    python_str(t.attr("device").attr("type")) + "'; accepted: cpu, cuda");
  }
  const nb::object shape = t.attr(kShape);
  const std::size_t rank = nb::len(shape);
  if (rank == 0 || rank > 4) {
    throw fs::Error(std::string("flashsigmoid: ") + name + " has rank " + std::to_string(rank) + " " +
                    python_str(nb::list(shape)) +
                    "; accepted: rank 4 [batch, seqlen, heads, head_dim], 3 for varlen, 1 or 2 for "
                    "bias/alibi/cu_seqlens");
  }
  const nb::object stride = t.attr(kStride)();
  std::vector<std::int64_t> sizes(rank), strides(rank);
  for (std::size_t d = 0; d < rank; ++d) {
    sizes[d] = nb::cast<std::int64_t>(shape[d]);
    strides[d] = nb::cast<std::int64_t>(stride[d]);
  }
  return make_view(nb::cast<std::uintptr_t>(t.attr(kDataPtr)()), code, device, index, sizes, strides);
}

std::string repr_view(const fs::TensorView& t) {
  if (!t.defined()) return "flashsigmoid._C.Tensor(undefined)";
  std::string s = "flashsigmoid._C.Tensor(";
  s += fs::to_string(t.dtype);
  s += ", ";
  s += fs::to_string(t.device.type);
  if (t.device.type == fs::DeviceType::cuda) s += ":" + std::to_string(t.device.index);
  s += ", shape=[";
  for (int d = 0; d < t.rank; ++d) s += (d ? ", " : "") + std::to_string(t.shape[d]);
  s += "], stride=[";
  for (int d = 0; d < t.rank; ++d) s += (d ? ", " : "") + std::to_string(t.stride[d]);
  return s + "])";
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "flashsigmoid C++ bindings (torch-independent; use the flashsigmoid package API)";
  m.attr("__version__") = FLASHSIGMOID_VERSION;

  // flashsigmoid::Error -> flashsigmoid.FlashSigmoidError (a ValueError), same message.
  nb::exception<fs::Error>(m, "FlashSigmoidError", PyExc_ValueError);

  m.attr("DTYPE_FLOAT32") = static_cast<int>(fs::DType::float32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(fs::DType::float16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(fs::DType::bfloat16);
  m.attr("DTYPE_FLOAT64") = static_cast<int>(fs::DType::float64);
  m.attr("DTYPE_INT32") = static_cast<int>(fs::DType::int32);
  m.attr("DEVICE_CPU") = static_cast<int>(fs::DeviceType::cpu);
  m.attr("DEVICE_CUDA") = static_cast<int>(fs::DeviceType::cuda);
  m.attr("BIAS_NEG_LOG_SEQLEN_K") = static_cast<int>(fs::BiasMode::neg_log_seqlen_k);
  m.attr("BIAS_SCALAR") = static_cast<int>(fs::BiasMode::scalar);
  m.attr("BIAS_PER_HEAD") = static_cast<int>(fs::BiasMode::per_head);
  {
    nb::list dims;
    for (int d : fs::kSupportedHeadDims) dims.append(d);
    m.attr("SUPPORTED_HEAD_DIMS") = nb::tuple(dims);
  }

  nb::class_<fs::TensorView>(m, "Tensor", "A non-owning strided tensor descriptor (sizes and strides in elements)")
      .def(nb::init<>(), "An undefined (absent) tensor")
      .def(
          "__init__",
          [](fs::TensorView* self, std::uintptr_t data, int dtype, int device_type, int device_index,
             const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& strides) {
            new (self) fs::TensorView(make_view(data, dtype, device_type, device_index, shape, strides));
          },
          nb::arg("data_ptr"), nb::arg("dtype"), nb::arg("device_type"), nb::arg("device_index"),
          nb::arg("shape"), nb::arg("strides"))
      .def_prop_ro("defined", &fs::TensorView::defined)
      .def_prop_ro("data_ptr", [](const fs::TensorView& t) { return reinterpret_cast<std::uintptr_t>(t.data); })
      .def_prop_ro("dtype", [](const fs::TensorView& t) { return static_cast<int>(t.dtype); })
      .def_prop_ro("shape", [](const fs::TensorView& t) {
        return std::vector<std::int64_t>(t.shape.begin(), t.shape.begin() + t.rank);
      })
      .def_prop_ro("strides", [](const fs::TensorView& t) {
        return std::vector<std::int64_t>(t.stride.begin(), t.stride.begin() + t.rank);
      })
      .def("__repr__", &repr_view);

  nb::class_<fs::Options>(m, "Options", "flashsigmoid::Options (see flashsigmoid.hpp)")
      .def(nb::init<>())
      .def_rw("scale", &fs::Options::scale)
      .def_prop_rw(
          "bias_mode", [](const fs::Options& o) { return static_cast<int>(o.bias_mode); },
          [](fs::Options& o, int mode) { o.bias_mode = static_cast<fs::BiasMode>(mode); })
      .def_rw("bias_value", &fs::Options::bias_value)
      .def_rw("bias", &fs::Options::bias)
      .def_rw("causal", &fs::Options::causal)
      .def_rw("window_left", &fs::Options::window_left)
      .def_rw("window_right", &fs::Options::window_right)
      .def_rw("alibi_slopes", &fs::Options::alibi_slopes)
      .def_rw("cu_seqlens_q", &fs::Options::cu_seqlens_q)
      .def_rw("cu_seqlens_k", &fs::Options::cu_seqlens_k)
      .def_rw("max_seqlen_q", &fs::Options::max_seqlen_q)
      .def_rw("max_seqlen_k", &fs::Options::max_seqlen_k)
      .def_prop_rw(
          "positions",
          [](const fs::Options& o) -> std::optional<std::pair<std::int64_t, std::int64_t>> {
            if (!o.positions) return std::nullopt;
            return std::make_pair(o.positions->q, o.positions->k);
          },
          [](fs::Options& o, std::optional<std::pair<std::int64_t, std::int64_t>> p) {
            o.positions.reset();
            if (p) o.positions = fs::Options::PositionOffsets{p->first, p->second};
          },
          "global positions (q offset, k offset) of the first query / key row, or None (bottom-right)")
      .def_prop_rw(
          "stream", [](const fs::Options& o) { return reinterpret_cast<std::uintptr_t>(o.stream); },
          [](fs::Options& o, std::uintptr_t s) { o.stream = reinterpret_cast<void*>(s); },
          "the cudaStream_t as an integer (0 = default stream)")
      .def_rw("deterministic", &fs::Options::deterministic)
      .def_rw("num_threads", &fs::Options::num_threads);

  m.def(
      "forward",
      [](const fs::TensorView& q, const fs::TensorView& k, const fs::TensorView& v, const fs::TensorView& out,
         const fs::Options& options) { fs::forward(q, k, v, out, options); },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("out"), nb::arg("options"),
      nb::call_guard<nb::gil_scoped_release>(), "flashsigmoid::forward: writes out");

  m.def(
      "backward",
      [](const fs::TensorView& q, const fs::TensorView& k, const fs::TensorView& v, const fs::TensorView& dout,
         const fs::TensorView& dq, const fs::TensorView& dk, const fs::TensorView& dv, const fs::TensorView& dbias,
         const fs::Options& options) {
        fs::Gradients g;
        g.dq = dq;
        g.dk = dk;
        g.dv = dv;
        g.dbias = dbias;
        fs::backward(q, k, v, dout, g, options);
      },
      nb::arg("q"), nb::arg("k"), nb::arg("v"), nb::arg("dout"), nb::arg("dq"), nb::arg("dk"), nb::arg("dv"),
      nb::arg("dbias"), nb::arg("options"), nb::call_guard<nb::gil_scoped_release>(),
      "flashsigmoid::backward: writes dq, dk, dv and (when defined) dbias");

  m.def(
      "forward_with_kvcache",
      [](const fs::TensorView& q, const fs::TensorView& k_cache, const fs::TensorView& v_cache,
         const fs::TensorView& cache_seqlens, const fs::TensorView& block_table,
         const fs::TensorView& cache_batch_idx, const fs::TensorView& k_new, const fs::TensorView& v_new,
         const fs::TensorView& out, const fs::Options& options, int num_splits) {
        fs::forward_with_kvcache(
            q, fs::KVCache{k_cache, v_cache, cache_seqlens, block_table, cache_batch_idx, k_new, v_new}, out,
            options, num_splits);
      },
      nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"), nb::arg("cache_seqlens"), nb::arg("block_table"),
      nb::arg("cache_batch_idx"), nb::arg("k_new"), nb::arg("v_new"), nb::arg("out"), nb::arg("options"),
      nb::arg("num_splits"), nb::call_guard<nb::gil_scoped_release>(),
      "flashsigmoid::forward_with_kvcache: appends k_new / v_new (when defined) into the cache, writes out");

  m.def(
      "set_dtype_codes",
      [](const std::vector<std::pair<nb::object, int>>& codes) {
        dtype_codes().clear();  // a re-registration keeps the old references: a few immortal dtypes
        for (const auto& [dtype, code] : codes) dtype_codes().emplace_back(nb::object(dtype).release(), code);
      },
      "Registers the torch dtype -> dtype code table that describe and forward_with_kvcache_tensors read");

  m.def("describe", &view_of, nb::arg("tensor").none(), nb::arg("name"),
        "A torch tensor's descriptor (an undefined one for None); name is for the error messages");

  m.def(
      "forward_with_kvcache_tensors",
      [](nb::handle q, nb::handle k_cache, nb::handle v_cache, nb::handle cache_seqlens, nb::handle block_table,
         nb::handle cache_batch_idx, nb::handle k_new, nb::handle v_new, nb::handle out, const fs::Options& options,
         int num_splits) {
        // Described in the order the checks report: q, the cache's tensors, k, v, out.
        const fs::TensorView qv = view_of(q, "q");
        const fs::KVCache cache{view_of(k_cache, "k_cache"),      view_of(v_cache, "v_cache"),
                                view_of(cache_seqlens, "cache_seqlens"), view_of(block_table, "block_table"),
                                view_of(cache_batch_idx, "cache_batch_idx"), view_of(k_new, "k"),
                                view_of(v_new, "v")};
        const fs::TensorView ov = view_of(out, "out");
        nb::gil_scoped_release release;
        fs::forward_with_kvcache(qv, cache, ov, options, num_splits);
      },
      nb::arg("q"), nb::arg("k_cache"), nb::arg("v_cache"), nb::arg("cache_seqlens"), nb::arg("block_table").none(),
      nb::arg("cache_batch_idx").none(), nb::arg("k_new").none(), nb::arg("v_new").none(), nb::arg("out"),
      nb::arg("options"), nb::arg("num_splits"),
      "forward_with_kvcache on torch tensors (None for an absent one), described here instead of in Python");

  m.def("cuda_head_dims", &fs::cuda_head_dims,
        "Head dims this build has CUDA kernels for (empty without the CUDA backend)");
  m.def("cuda_available", &fs::cuda_available,
        "True when this build carries CUDA kernels and a CUDA device is visible");
}
