"""CuPy kernels for a step's element-wise tail, behind nn.Tail's signatures.

CuPy spends about 20 µs of host time launching each operation, so a full-batch step of some 30
small kernels is host-bound at small hidden sizes. These kernels do the same arithmetic as the
Array API reference in nn.py and optim.py in fewer launches:

    bias_relu            Z ← relu(Z + b)                         1 kernel  (reference: 4)
    relu_backward        dA ← dA·[A > 0]                          1 kernel  (reference: 1, no mask)
    softmax_ce_gradient  dZ = (softmax(Z) - Y) / m, row by row   1 kernel  (reference: 8)
    adam_update          m, v and θ of one parameter              1 kernel  (reference: 10)

Each returns what it wrote. The ReLU slope kept for backward is A itself ([A > 0] = [Z + b > 0]),
which also saves one (m, H) array per hidden layer. ReLU keeps NaN as NaN (`s·0` below, as the
reference's Z·[Z > 0] does), so a diverging run shows NaN on the GPU as on the CPU; a NaN logit
makes its row's softmax gradient NaN through exp, as in the reference. Only CupyBackend.tail
imports this module.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import cupy

from ..nn import Tail

_bias_relu = cupy.ElementwiseKernel(
    "T b", "T z", "const T s = z + b; z = s > (T)0 ? s : s * (T)0", "mnist_xp_bias_relu")

_relu_backward = cupy.ElementwiseKernel(
    "T a", "T da", "da = a > (T)0 ? da : da * (T)0", "mnist_xp_relu_backward")

# One thread per row: the row's max, Σ e^{z - max}, then (e^{z - max}/Σ - y)/m for each class.
_softmax_ce_gradient = cupy.ElementwiseKernel(
    "raw T z, raw T y, int64 classes, T inv_m", "raw T dz",
    """
    const ptrdiff_t row = i * classes;
    T top = z[row];
    for (ptrdiff_t k = 1; k < classes; ++k) top = max(top, z[row + k]);
    T total = 0;
    for (ptrdiff_t k = 0; k < classes; ++k) {
        const T e = exp(z[row + k] - top);
        dz[row + k] = e;
        total += e;
    }
    const T scale = inv_m / total;
    for (ptrdiff_t k = 0; k < classes; ++k) dz[row + k] = dz[row + k] * scale - y[row + k] * inv_m;
    """,
    "mnist_xp_softmax_ce_gradient")

_adam_update = cupy.ElementwiseKernel(
    "T g, T step_size, T beta1, T beta2, T eps_hat, T decay", "T p, T m, T v",
    """
    const T grad = g + decay * p;
    m = beta1 * m + (1 - beta1) * grad;
    v = beta2 * v + (1 - beta2) * grad * grad;
    p -= step_size * m / (sqrt(v) + eps_hat);
    """,
    "mnist_xp_adam_update")

# Every call this module makes, for tests/test_cupy_kernels_compile.py, which compiles each
# kernel with NVRTC as CuPy would for these calls, without a GPU: {name: (kernel, [call, ...])}.
# In a call's "args", a tuple is a C-contiguous device array of the float dtype T by its shape in
# named dimensions (() is 0-d), a string a host scalar's dtype ("T": the float dtype); "size"
# names the dimension given as size=.
KERNELS = {
    "bias_relu": (_bias_relu, [{"args": (("H",), ("m", "H"))}]),  # b, Z
    "relu_backward": (_relu_backward, [{"args": (("m", "H"), ("m", "H"))}]),  # A, dA
    "softmax_ce_gradient": (_softmax_ce_gradient, [  # Z, Y, classes, inv_m, dZ
        {"args": (("m", "C"), ("m", "C"), "int64", "T", ("m", "C")), "size": "m"}]),
    "adam_update": (_adam_update, [  # g, step_size, beta1, beta2, eps_hat, decay, p, m, v
        {"args": (("i", "o"), (), "T", "T", (), "T", ("i", "o"), ("i", "o"), ("i", "o"))},
        {"args": (("o",), (), "T", "T", (), "T", ("o",), ("o",), ("o",))}]),  # a bias
}


def bias_relu(Z: Any, b: Any) -> tuple[Any, Any]:
    _bias_relu(b, Z)
    return Z, Z


def relu_backward(dA: Any, A: Any) -> Any:
    _relu_backward(A, dA)
    return dA


def softmax_ce_gradient(Z: Any, Y: Any, rows: int) -> Any:
    Z, Y = cupy.ascontiguousarray(Z), cupy.ascontiguousarray(Y)
    dZ = cupy.empty_like(Z)
    inv_m = Z.dtype.type(1.0 / rows)
    _softmax_ce_gradient(Z, Y, Z.shape[1], inv_m, dZ, size=Z.shape[0])
    return dZ


def adam_update(p: Any, g: Any, m: Any, v: Any, step_size: Any, beta1: float, beta2: float,
                eps_hat: Any, decay: float) -> tuple[Any, Any, Any]:
    """One parameter's Adam update in one kernel, in place in p, m and v, which it returns.
    step_size and eps_hat are 0-d arrays (they depend on the step count)."""
    t = p.dtype.type
    step_size, eps_hat = cupy.asarray(step_size, p.dtype), cupy.asarray(eps_hat, p.dtype)
    _adam_update(g, step_size, t(beta1), t(beta2), eps_hat, t(decay), p, m, v)
    return p, m, v


@cache
def cupy_tail() -> Tail:
    return Tail("cupy-fused", bias_relu, relu_backward, softmax_ce_gradient, adam_update)
