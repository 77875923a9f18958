// Fused time steps of the LIF scans (stllr_engine/fused.py; DESIGN §9).
//
// One pass over the elements does what the eager step does in ~8-12 tensor operations:
// the membrane update, threshold, spike, reset, the surrogate Ψ(v) and the post-synaptic
// trace (S-TLLR's forward), or the backward-through-time step of a layer (BPTT).
//
// Every tensor is viewed as [G, M]: G groups (the members of a pack; 1 for one network),
// each a contiguous block of M elements, the blocks `stride` apart. Per-group constants
// (λ_post of each member) come as a [G] tensor. The arithmetic is the eager step's, in the
// same order and precision (no contraction into fused multiply-adds: -ffp-contract=off).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <cmath>

namespace {

struct View {
  char* base = nullptr;
  int64_t stride = 0;  // between groups, in elements
  template <typename T>
  T* at(int64_t g) const { return reinterpret_cast<T*>(base) + g * stride; }
  bool operator!() const { return base == nullptr; }
};

View view_of(const c10::optional<at::Tensor>& t, int64_t G, int64_t M, at::ScalarType dtype, const char* name) {
  View v;
  if (!t.has_value() || !t->defined()) return v;
  const at::Tensor& x = *t;
  TORCH_CHECK(x.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(x.scalar_type() == dtype, name, " has dtype ", x.scalar_type(), ", expected ", dtype);
  TORCH_CHECK(x.numel() == G * M, name, " has ", x.numel(), " elements, expected ", G * M);
  // inner block contiguous: the strides of dims 1.. are those of a contiguous tensor
  int64_t expect = 1;
  for (int64_t d = x.dim() - 1; d >= (G > 1 ? 1 : 0); --d) {
    if (x.size(d) != 1) TORCH_CHECK(x.stride(d) == expect, name, " is not contiguous within a member");
    expect *= x.size(d);
  }
  v.base = static_cast<char*>(x.data_ptr());
  v.stride = G > 1 ? x.stride(0) : 0;
  return v;
}

// Ψ(v), scalar and vectorised, each the eager surrogate's operations in its order
// (stllr_engine/neurons.py): abs/fmadd/reciprocal as there, so results agree to the last bit
// where the eager kernel takes the same instructions, and to float rounding otherwise.
template <typename T>
inline T surrogate(T v, int64_t kind) {
  switch (kind) {
    case 0: {  // inverse_square: 1 / (100|v| + 1)^2
      T a = T(1) + T(100) * std::abs(v);
      return T(1) / (a * a);
    }
    case 1: {  // triangle: 0.3 max(0, 1 - |v|)
      T a = -std::abs(v) + T(1);
      return (a > T(0) ? a : T(0)) * T(0.3);
    }
    case 2: {  // sigmoid: 4 σ(v)(1 - σ(v))
      T s = T(1) / (T(1) + std::exp(-v));
      return s * (-s + T(1)) * T(4);
    }
    default: {  // arctan: 1 / (1 + (10 v)^2)
      T a = v * T(10);
      return T(1) / (a * a + T(1));
    }
  }
}

template <typename T>
inline at::vec::Vectorized<T> surrogate(const at::vec::Vectorized<T>& v, int64_t kind) {
  using V = at::vec::Vectorized<T>;
  switch (kind) {
    case 0: {
      V a = at::vec::fmadd(v.abs(), V(T(100)), V(T(1)));
      return V(T(1)) / (a * a);
    }
    case 1:
      return at::vec::clamp_min(v.abs().neg() + V(T(1)), V(T(0))) * V(T(0.3));
    case 2: {
      V s = ((V(T(0)) - v).exp() + V(T(1))).reciprocal();
      return s * (s.neg() + V(T(1))) * V(T(4));
    }
    default: {
      V a = v * V(T(10));
      return (a * a + V(T(1))).reciprocal();
    }
  }
}

// u ← γ u + I (+ rec); v ← u − θ; y ← H(v); reset; optionally ψ ← Ψ(v),
// (rec may be v's own buffer: each element is read before it is written)
// save ← tr_in, tr_out ← ψ + λ_g tr_in (fma as torch.add(ψ, tr, alpha=λ) when fma_trace,
// else ψ + tr·λ as torch.addcmul).
void lif_step(at::Tensor u, at::Tensor cur, c10::optional<at::Tensor> rec, c10::optional<at::Tensor> v_out,
              at::Tensor y, c10::optional<at::Tensor> psi_out, c10::optional<at::Tensor> tr_in,
              c10::optional<at::Tensor> tr_out, c10::optional<at::Tensor> tr_save, c10::optional<at::Tensor> lam,
              double lam_all, double gamma, double theta, bool soft, int64_t kind, int64_t groups, bool fma_trace) {
  const int64_t G = groups, M = u.numel() / groups;
  TORCH_CHECK(G >= 1 && u.numel() == G * M, "u does not split into ", G, " groups");
  const auto dtype = u.scalar_type();
  View U = view_of(u, G, M, dtype, "u"), C = view_of(cur, G, M, dtype, "current"), R = view_of(rec, G, M, dtype, "rec"),
       V = view_of(v_out, G, M, dtype, "v"), Y = view_of(y, G, M, dtype, "y"), P = view_of(psi_out, G, M, dtype, "psi"),
       TI = view_of(tr_in, G, M, dtype, "tr_in"), TO = view_of(tr_out, G, M, dtype, "tr_out"),
       TS = view_of(tr_save, G, M, dtype, "tr_save");
  TORCH_CHECK(!TI == !TO, "tr_in and tr_out come together");
  TORCH_CHECK(!TS || !!TI, "tr_save needs tr_in");
  at::Tensor lam_c;  // per group; without it, lam_all for every group
  if (!!TI && lam.has_value() && lam->defined()) {
    TORCH_CHECK(lam->numel() == G, "lam must hold one value per group");
    lam_c = lam->to(at::kCPU, dtype).contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(dtype, "lif_step", [&] {
    using Vec = at::vec::Vectorized<scalar_t>;
    constexpr int64_t W = Vec::size();
    const scalar_t g = static_cast<scalar_t>(gamma), th = static_cast<scalar_t>(theta);
    const Vec gv(g), thv(th), mthv(-th), zero(scalar_t(0)), one(scalar_t(1));
    const scalar_t* lams = lam_c.defined() ? lam_c.data_ptr<scalar_t>() : nullptr;
    for (int64_t grp = 0; grp < G; ++grp) {
      scalar_t* pu = U.at<scalar_t>(grp);
      const scalar_t* pc = C.at<scalar_t>(grp);
      const scalar_t* pr = !R ? nullptr : R.at<scalar_t>(grp);
      scalar_t* pv = !V ? nullptr : V.at<scalar_t>(grp);
      scalar_t* py = Y.at<scalar_t>(grp);
      scalar_t* pp = !P ? nullptr : P.at<scalar_t>(grp);
      const scalar_t* pti = !TI ? nullptr : TI.at<scalar_t>(grp);
      scalar_t* pto = !TO ? nullptr : TO.at<scalar_t>(grp);
      scalar_t* pts = !TS ? nullptr : TS.at<scalar_t>(grp);
      const scalar_t l = lams ? lams[grp] : static_cast<scalar_t>(lam_all);
      const Vec lv(l);
      at::parallel_for(0, M, 8192, [&](int64_t b, int64_t e) {
        int64_t i = b;
        for (; i + W <= e; i += W) {
          Vec m = at::vec::fmadd(Vec::loadu(pu + i), gv, Vec::loadu(pc + i));
          if (pr) m = m + Vec::loadu(pr + i);
          const Vec v = m - thv;
          const Vec s = v.ge(zero);
          (soft ? at::vec::fmadd(s, mthv, m) : m * (one - s)).store(pu + i);
          s.store(py + i);
          if (pv) v.store(pv + i);
          if (pp || pto) {
            const Vec p = surrogate(v, kind);
            if (pp) p.store(pp + i);
            if (pto) {
              const Vec old = Vec::loadu(pti + i);
              if (pts) old.store(pts + i);
              (fma_trace ? at::vec::fmadd(old, lv, p) : p + old * lv).store(pto + i);
            }
          }
        }
        for (; i < e; ++i) {
          scalar_t m = pc[i] + g * pu[i];
          if (pr) m = m + pr[i];
          const scalar_t v = m - th;
          const scalar_t s = v >= scalar_t(0) ? scalar_t(1) : scalar_t(0);
          pu[i] = soft ? m - th * s : m * (scalar_t(1) - s);
          py[i] = s;
          if (pv) pv[i] = v;
          if (pp || pto) {
            const scalar_t p = surrogate(v, kind);
            if (pp) pp[i] = p;
            if (pto) {
              const scalar_t old = pti[i];
              if (pts) pts[i] = old;
              pto[i] = p + l * old;
            }
          }
        }
      });
    }
  });
}

// One step back through time of a LIF layer (stllr_engine.bptt.LIFScan.backward):
// g_y = ĝ_y (+ g_rec); soft: g_y −= θ g_u, g_I = g_u + g_y Ψ(v);
// hard: g_y −= (v + θ) g_u, g_I = g_u (1 − H(v)) + g_y Ψ(v); g_u ← γ g_I.
void lif_backward_step(at::Tensor g_spike, c10::optional<at::Tensor> g_rec, at::Tensor g_u, at::Tensor v,
                       at::Tensor g_cur, double gamma, double theta, bool soft, int64_t kind, int64_t groups) {
  const int64_t G = groups, M = g_u.numel() / groups;
  TORCH_CHECK(G >= 1 && g_u.numel() == G * M, "g_u does not split into ", G, " groups");
  const auto dtype = g_u.scalar_type();
  View GS = view_of(g_spike, G, M, dtype, "g_spike"), GR = view_of(g_rec, G, M, dtype, "g_rec"),
       GU = view_of(g_u, G, M, dtype, "g_u"), VV = view_of(v, G, M, dtype, "v"), GC = view_of(g_cur, G, M, dtype, "g_cur");
  AT_DISPATCH_FLOATING_TYPES(dtype, "lif_backward_step", [&] {
    using Vec = at::vec::Vectorized<scalar_t>;
    constexpr int64_t W = Vec::size();
    const scalar_t g = static_cast<scalar_t>(gamma), th = static_cast<scalar_t>(theta);
    const Vec gv(g), thv(th), mthv(-th), zero(scalar_t(0)), one(scalar_t(1));
    for (int64_t grp = 0; grp < G; ++grp) {
      const scalar_t* ps = GS.at<scalar_t>(grp);
      const scalar_t* pr = !GR ? nullptr : GR.at<scalar_t>(grp);
      scalar_t* pu = GU.at<scalar_t>(grp);
      const scalar_t* pv = VV.at<scalar_t>(grp);
      scalar_t* pc = GC.at<scalar_t>(grp);
      at::parallel_for(0, M, 8192, [&](int64_t b, int64_t e) {
        int64_t i = b;
        for (; i + W <= e; i += W) {
          Vec gy = Vec::loadu(ps + i);
          if (pr) gy = gy + Vec::loadu(pr + i);
          const Vec vi = Vec::loadu(pv + i), gu = Vec::loadu(pu + i);
          const Vec p = surrogate(vi, kind);
          Vec gi;
          if (soft) {
            gy = at::vec::fmadd(gu, mthv, gy);
            gi = gu + gy * p;
          } else {
            gy = gy - (vi + thv) * gu;
            gi = gu * (one - vi.ge(zero)) + gy * p;
          }
          gi.store(pc + i);
          (gi * gv).store(pu + i);
        }
        for (; i < e; ++i) {
          scalar_t gy = ps[i];
          if (pr) gy = gy + pr[i];
          const scalar_t vi = pv[i], gu = pu[i];
          const scalar_t p = surrogate(vi, kind);
          scalar_t gi;
          if (soft) {
            gy = gy - th * gu;
            gi = gu + gy * p;
          } else {
            gy = gy - (vi + th) * gu;
            gi = gu * (scalar_t(1) - (vi >= scalar_t(0) ? scalar_t(1) : scalar_t(0))) + gy * p;
          }
          pc[i] = gi;
          pu[i] = gi * g;
        }
      });
    }
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lif_step", &lif_step, "fused LIF forward step (S-TLLR records optional)");
  m.def("lif_backward_step", &lif_backward_step, "fused LIF backward-through-time step");
}
