"""2-D convolution on the CPU through oneDNN (the library PyTorch uses there), as XLA FFI custom calls.

Why: XLA:CPU's convolution gradients were the gap to PyTorch on conv training steps (``experiments/README.md``,
"oneDNN via XLA FFI"): its kernel gradient recomputes the BatchNorm/residual/ReLU chain inside transposes, and its
Eigen convolutions are slower than oneDNN's JIT kernels. Here the forward and both backward passes are oneDNN
primitives on the NHWC buffers as they are (``conv.cc``), joined by a ``custom_vjp``. :func:`conv_transpose2d`
reuses the same three handlers with the roles swapped (a transposed conv is a conv's backward-data).

Build (lazy, at the first CPU convolution of a process, or ahead with ``python -m jinterp.nn._onednn``):

1. oneDNN 3.2 headers and ``libdnnl.so.3`` are looked for in ``$JINTERP_ONEDNN_ROOT``, in the Python prefix (the
   PyPI wheels ``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp`` of the extra ``jinterp[onednn]``, 37 MB, GNU OpenMP
   runtime, no other dependency, install ``lib/`` and ``include/`` there) and in the cache. Nothing is downloaded
   at run time. (PyPI's newer ``onednn`` wheel is the SYCL build, which needs Intel's DPC++ runtime.)
2. ``conv.cc`` is compiled with ``g++`` against them and the XLA FFI headers jaxlib ships
   (``jax.ffi.include_dir()``), into ``<cache>/onednn/libjinterp_onednn-<hash>.so`` (hash of the source, the jaxlib
   version and the oneDNN location), under a file lock so that parallel processes build once.

``<cache>`` is ``$JINTERP_CACHE_DIR``, else ``$XDG_CACHE_HOME/jinterp``, else ``~/.cache/jinterp`` (as
:mod:`jinterp.models.weights`); a build in the default folder is reused when ``JINTERP_CACHE_DIR`` names
another. Any failure (the extra not installed, no ``g++``, read-only cache) gives one warning and
:func:`available` is False: callers use XLA's convolution. ``JINTERP_ONEDNN=0`` (or ``JINTERP_FASTCONV=0``,
checked by :mod:`jinterp.nn.ops`) skips oneDNN without trying. Loading sets ``OMP_WAIT_POLICY=PASSIVE`` unless
the environment sets it (see :func:`available`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jinterp.errors import ModelError, ShapeError
from jinterp.nn.fastconv import conv_out_size

ONEDNN_VERSION = "2023.2.0"  # PyPI version of the oneDNN 3.2 CPU wheels (GNU OpenMP runtime)
_SRC = Path(__file__).with_name("conv.cc")
_SYMBOLS = {"fwd": "JinterpOnednnConvFwd", "bwd_data": "JinterpOnednnConvBwdData",
            "bwd_weights": "JinterpOnednnConvBwdWeights"}
_TARGET = "jinterp_onednn_conv_{}"

#: Seconds spent by the last :func:`build` of this process: ``{"fetch_s", "compile_s", "wheel_mb"}``.
build_cost: dict[str, float] = {}


def cache_dir() -> Path:
    """``<cache>/onednn`` (see the module docstring)."""
    if os.environ.get("JINTERP_CACHE_DIR"):
        root = Path(os.environ["JINTERP_CACHE_DIR"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jinterp"
    return root / "onednn"


def _default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jinterp" / "onednn"


def _cache_dirs() -> list[Path]:
    """:func:`cache_dir`, then the default one: a build there is reused when ``JINTERP_CACHE_DIR`` points to a
    fresh or unwritable folder (tests do), instead of fetching and compiling again."""
    return list(dict.fromkeys([cache_dir(), _default_cache_dir()]))


def _has_onednn(prefix: Path) -> bool:
    header = prefix / "include" / "oneapi" / "dnnl" / "dnnl.hpp"
    return header.is_file() and (prefix / "lib" / "libdnnl.so.3").exists()


def _prefixes() -> list[Path]:
    roots = [Path(os.environ["JINTERP_ONEDNN_ROOT"])] if os.environ.get("JINTERP_ONEDNN_ROOT") else []
    return roots + [Path(sys.prefix)] + [c / f"onednn-{ONEDNN_VERSION}" for c in _cache_dirs()]


def onednn_prefix(cache: Path | None = None) -> Path:
    """A folder with oneDNN's ``include/`` and ``lib/`` (see the module docstring for the search order); nothing is
    downloaded at run time: the wheels come with ``pip install 'jinterp[onednn]'`` (``make setup`` installs them)."""
    for prefix in _prefixes():
        if _has_onednn(prefix):
            return prefix
    raise RuntimeError(f"oneDNN 3.2 not found (no include/oneapi/dnnl/dnnl.hpp + lib/libdnnl.so.3 under "
                       f"{', '.join(str(p) for p in _prefixes())}): pip install 'jinterp[onednn]', or set "
                       "JINTERP_ONEDNN_ROOT to an installation")


def _lib_name(prefix: Path) -> str:
    key = hashlib.sha256(_SRC.read_bytes() + jax.lib.__version__.encode() + str(prefix.resolve()).encode())
    return f"libjinterp_onednn-{key.hexdigest()[:16]}.so"


def _writable_cache() -> Path:
    errors = []
    for c in _cache_dirs():
        try:
            c.mkdir(parents=True, exist_ok=True)
            (c / ".lock").touch()
            return c
        except OSError as err:
            errors.append(f"{c}: {err.strerror or err}")
    raise OSError(f"no writable cache folder for the oneDNN build ({'; '.join(errors)}); set JINTERP_CACHE_DIR")


def build() -> Path:
    """The compiled FFI library: an existing build in one of the cache folders, else oneDNN located or fetched and
    ``conv.cc`` compiled, under a file lock so that parallel processes build once."""
    import fcntl

    for prefix in filter(_has_onednn, _prefixes()):
        for c in _cache_dirs():
            if (c / _lib_name(prefix)).exists():
                return c / _lib_name(prefix)
    cache = _writable_cache()
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        prefix = onednn_prefix(cache)
        lib = cache / _lib_name(prefix)
        if not lib.exists():
            t0 = time.perf_counter()
            tmp = lib.with_name(lib.name + f".{os.getpid()}.tmp")
            cmd = [os.environ.get("CXX", "g++"), "-O2", "-std=c++17", "-shared", "-fPIC", "-w",
                   f"-I{prefix / 'include'}", f"-I{jax.ffi.include_dir()}", str(_SRC), "-o", str(tmp),
                   f"-L{prefix / 'lib'}", "-l:libdnnl.so.3", f"-Wl,-rpath,{(prefix / 'lib').resolve()}"]
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
            os.replace(tmp, lib)
            build_cost["compile_s"] = time.perf_counter() - t0
    return lib


def _describe(err: BaseException) -> str:
    if isinstance(err, subprocess.CalledProcessError):
        tail = (err.stderr or err.stdout or "").strip().splitlines()[-1:] or [""]
        return f"{Path(err.cmd[0]).name} {' '.join(map(str, err.cmd[1:3]))} ... failed: {tail[0][:200]}"
    return f"{type(err).__name__}: {err}"


@functools.cache
def available() -> bool:
    """True once the FFI targets are registered in this process (building them if needed); False, with one
    warning naming the reason, where they cannot be had. ``JINTERP_ONEDNN=0`` gives False without trying."""
    if os.environ.get("JINTERP_ONEDNN", "1") == "0":
        return False
    try:
        lib = build()
        # oneDNN runs on GNU OpenMP, which reads this when it loads (now, unless something loaded it before).
        # Spinning workers compete with XLA's own threads between convolutions: the ResNet-20 step measured
        # 1515/1652 ms spinning vs 1191/1252 ms passive (two alternating runs each, experiments/README.md).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        so = ctypes.CDLL(str(lib))
        for kind, symbol in _SYMBOLS.items():
            jax.ffi.register_ffi_target(_TARGET.format(kind), jax.ffi.pycapsule(getattr(so, symbol)), platform="cpu")
    except Exception as err:  # noqa: BLE001 - any failure means "use XLA", said once
        warnings.warn(f"jinterp: oneDNN convolutions unavailable ({_describe(err)}); using XLA's convolution "
                      "(set JINTERP_ONEDNN=0 to skip the attempt)", RuntimeWarning, stacklevel=2)
        return False
    return True


def supports(x: jax.Array, kernel: jax.Array, padding) -> bool:
    """Whether :func:`conv2d` handles these operands: float32 and non-negative padding."""
    pads = [p for pair in padding for p in pair]
    return x.dtype == jnp.float32 and kernel.dtype == jnp.float32 and min(pads) >= 0


def _attrs(stride, padding, dilation, groups) -> dict:
    (pt, pb), (pl, pr) = padding
    return {k: np.int64(v) for k, v in dict(sh=stride[0], sw=stride[1], pt=pt, pb=pb, pl=pl, pr=pr,
                                             dh=dilation[0], dw=dilation[1], groups=groups).items()}


def _call(kind, out_shape, a, b, stride, padding, dilation, groups):
    if not available():  # registers the FFI targets on first use
        raise ModelError("oneDNN convolutions are unavailable in this process (see the warning, or JINTERP_ONEDNN=0); "
                         "use jinterp.nn.ops.conv2d, which falls back to XLA's convolution")
    return jax.ffi.ffi_call(_TARGET.format(kind), jax.ShapeDtypeStruct(out_shape, jnp.float32),
                            vmap_method="expand_dims")(a, b, **_attrs(stride, padding, dilation, groups))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv2d(x: jax.Array, kernel: jax.Array, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1),
           groups: int = 1) -> jax.Array:
    """``lax.conv_general_dilated`` (NHWC, HWIO, ``feature_group_count=groups``) computed by oneDNN.

    ``x`` (N, H, W, Cin), ``kernel`` (kh, kw, Cin/groups, Cout) -> (N, Ho, Wo, Cout); ``padding`` is
    ``((top, bottom), (left, right))``, all >= 0; float32. Needs :func:`available`. First-order reverse mode only
    (no ``jvp``, no gradient of the gradient), like the other ``custom_vjp`` formulations of ``fastconv``.
    """
    return _conv2d_fwd(x, kernel, stride, padding, dilation, groups)[0]


def _conv2d_fwd(x, kernel, stride, padding, dilation, groups):
    n, h, w, _ = x.shape
    kh, kw, _, cout = kernel.shape
    out = (n, conv_out_size(h, kh, stride[0], padding[0], dilation[0]),
           conv_out_size(w, kw, stride[1], padding[1], dilation[1]), cout)
    return _call("fwd", out, x, kernel, stride, padding, dilation, groups), (x, kernel)


def _conv2d_bwd(stride, padding, dilation, groups, residuals, g):
    x, kernel = residuals
    dx = _call("bwd_data", x.shape, g, kernel, stride, padding, dilation, groups)
    dw = _call("bwd_weights", kernel.shape, x, g, stride, padding, dilation, groups)
    return dx, dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# ------------------------------------------------------------------------------------------- transposed


def conv_transpose_padding(pad: int, output_padding: int) -> tuple[int, int]:
    """``(top, bottom)`` padding of the convolution whose input gradient is the transposed convolution.

    The transposed conv maps ``size`` pixels to ``out = (size - 1)·s - 2p + k + op`` (PyTorch). It is the adjoint of
    a conv from ``out`` to ``size`` pixels with padding ``p`` on top and any bottom padding ``b`` that gives
    ``(out + p + b - k) // s + 1 == size``, i.e. ``0 <= op + b - p < s``; ``b = max(p - op, 0)`` satisfies that
    and is non-negative, as oneDNN needs, whenever ``op < s`` (PyTorch's own condition without dilation).
    """
    return pad, max(pad - output_padding, 0)


def conv_transpose2d(x: jax.Array, kernel: jax.Array, stride=(2, 2), padding=(0, 0),
                     output_padding=(0, 0)) -> jax.Array:
    """``torch.nn.functional.conv_transpose2d`` (NHWC) computed by oneDNN's convolution primitives.

    ``x`` (N, H, W, Cin), ``kernel`` (kh, kw, Cin, Cout) in :mod:`jinterp.nn.ops`' layout (PyTorch orientation,
    not flipped) -> (N, (H-1)·sh - 2·ph + kh + oph, ..., Cout). With ``C`` the convolution from the output grid to
    the input grid whose HWIO kernel is ``kernel`` with its channel axes swapped, ``(kh, kw, Cout, Cin)``
    (padding from :func:`conv_transpose_padding`): the forward is ``C``'s backward-data, the input gradient ``C``'s
    forward applied to the cotangent, and the kernel gradient ``C``'s backward-weights with the cotangent as the
    source and ``x`` as the output gradient. ``padding >= 0``, ``output_padding < stride``; float32; needs
    :func:`available`; first-order reverse mode only, like :func:`conv2d`.
    """
    n, h, w, _ = x.shape
    kh, kw, _, cout = kernel.shape
    if min(padding) < 0 or any(not 0 <= op < s for op, s in zip(output_padding, stride, strict=True)):
        raise ShapeError(f"oneDNN transposed conv needs padding >= 0 and 0 <= output_padding < stride, got padding "
                         f"{tuple(padding)}, output_padding {tuple(output_padding)}, stride {tuple(stride)}; use "
                         "jinterp.nn.ops.conv_transpose2d, which falls back to col2im")
    pads = tuple(conv_transpose_padding(p, op) for p, op in zip(padding, output_padding, strict=True))
    out_hw = tuple((size - 1) * s - 2 * p + k + op for size, k, s, p, op in
                   zip((h, w), (kh, kw), stride, padding, output_padding, strict=True))
    return _conv_transpose(x, jnp.swapaxes(kernel, 2, 3), tuple(stride), pads, out_hw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_transpose(x, conv_kernel, stride, pads, out_hw):
    """The adjoint of ``conv2d(·, conv_kernel, stride, pads)`` from ``out_hw`` pixels to ``x``'s (see above)."""
    return _conv_transpose_fwd(x, conv_kernel, stride, pads, out_hw)[0]


def _conv_transpose_fwd(x, conv_kernel, stride, pads, out_hw):
    out = (x.shape[0], *out_hw, conv_kernel.shape[2])
    return _call("bwd_data", out, x, conv_kernel, stride, pads, (1, 1), 1), (x, conv_kernel)


def _conv_transpose_bwd(stride, pads, out_hw, residuals, g):
    x, conv_kernel = residuals
    dx = _call("fwd", x.shape, g, conv_kernel, stride, pads, (1, 1), 1)
    dk = _call("bwd_weights", conv_kernel.shape, g, x, stride, pads, (1, 1), 1)
    return dx, dk


_conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)
