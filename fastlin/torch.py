"""fastlin's ops for PyTorch: differentiable, traceable, CPU tensors in and out.

Every public fastlin function is registered with ``torch.library.custom_op``
under the ``fastlin::`` namespace, with a fake (meta) implementation, so that
``torch.compile`` traces through it, and its gradient through
``register_autograd``; the backward passes are ops of their own
(``fastlin::softmax_backward``, ...), so a traced backward stays traceable.

Conventions are torch's: ``dim`` / ``keepdim``, ``torch.cdist``'s argument
names (``x1``, ``x2``), ``F.normalize``'s defaults (``dim=1``), results as
tensors.  Tensors are handed to the kernels without a copy where their
memory allows (CPU, any strides); results come back as tensors sharing the
kernels' output memory.

Dtypes: float32 and float64 are computed natively.  float16 and bfloat16
are computed in float32 and the result returned in the input's dtype (the
conversions are ordinary torch ops, so their gradients flow as usual);
other dtypes raise ``TypeError``, tensors on another device ``ValueError``.

Double backward is not provided: differentiating a backward op raises
torch's "autograd kernel was not registered" ``RuntimeError`` rather than
returning a silently wrong or zero second derivative.

Requires ``torch`` (``pip install torch``); importing ``fastlin`` itself
never imports it.
"""
from typing import Optional

import numpy as np
try:
    import torch
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(f"fastlin.torch needs PyTorch ({e}); install it with "
                      "pip install 'fastlin[torch]'") from e

import fastlin as _fl

__all__ = ["softmax", "log_softmax", "logsumexp", "normalize", "cdist", "pdist",
           "mahalanobis", "max_margin_loss", "cdist_topk", "cdist_logsumexp"]

_NATIVE = (torch.float32, torch.float64)
_VIA_FLOAT32 = (torch.float16, torch.bfloat16)
Tensor = torch.Tensor


def _np(t):
    """A CPU tensor's memory as an ndarray, without a copy."""
    return t.detach().resolve_conj().resolve_neg().numpy()


def _t(a):
    """A kernel's result (ndarray or NumPy scalar) as a tensor sharing it."""
    return torch.from_numpy(np.asarray(a))


def _opt(t):
    return None if t is None else _np(t)


def _prepare(name, *tensors):
    """Check the tensors a wrapper was given (None passes through) and bring
    float16 / bfloat16 to float32; returns them and the dtype to give back."""
    out, back = [], None
    for label, t in tensors:
        if t is None:
            out.append(None)
            continue
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t)
        if t.device.type != "cpu":
            raise ValueError(f"fastlin.torch.{name}: {label} is on {t.device}; fastlin runs "
                             f"on the CPU (move it with .cpu())")
        if t.dtype in _VIA_FLOAT32:
            back = back or t.dtype
            t = t.float()
        elif t.dtype not in _NATIVE:
            raise TypeError(f"fastlin.torch.{name}: {label} must be a floating tensor "
                            f"(float32, float64, float16 or bfloat16), got {t.dtype}")
        out.append(t)
    # one computation dtype for all (fastlin promotes mixed inputs to float64)
    common = torch.float64 if any(t is not None and t.dtype == torch.float64
                                  for t in out) else torch.float32
    return [t if t is None or t.dtype == common else t.to(common) for t in out], back


def _give_back(r, back):
    if back is None:
        return r
    if isinstance(r, tuple):
        return tuple(x.to(back) if x.is_floating_point() else x for x in r)
    return r.to(back)


def _need(ctx, i):
    return ctx.needs_input_grad[i]


def _dims(dim, ndim):
    if isinstance(dim, int):
        return [dim]
    return list(dim) if dim is not None else list(range(ndim))


def _custom(name):
    """Register fn as the custom op fastlin::name (CPU) and keep fn itself as
    ``.raw``: the eager path without autograd calls it directly (_run)."""
    def deco(fn):
        op = torch.library.custom_op(f"fastlin::{name}", mutates_args=(), device_types="cpu")(fn)
        op.raw = fn
        return op
    return deco


_wrapped = getattr(getattr(torch._C, "_functorch", None), "is_functorch_wrapped_tensor",
                   lambda t: False)


def _run(op, *args):
    """op(*args), through the dispatcher only where it is needed: a call
    that records no autograd (no input requires grad, or grad mode is off),
    outside torch.compile and functorch transforms, on plain tensors, runs
    the kernel directly -- the dispatcher's ~10 us a call is more than a
    small kernel's work.  The result is the same either way."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if (torch.compiler.is_compiling()
            or any(type(t) is not torch.Tensor or _wrapped(t) for t in tensors)
            or (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))):
        return op(*args)
    return op.raw(*args)


# ----------------------------------------------------------- softmax family

@_custom("softmax")
def _softmax(x: Tensor, dim: int) -> Tensor:
    return _t(_fl.softmax(_np(x), axis=dim))


@_custom("log_softmax")
def _log_softmax(x: Tensor, dim: int) -> Tensor:
    return _t(_fl.log_softmax(_np(x), axis=dim))


@_custom("softmax_backward")
def _softmax_backward(grad: Tensor, y: Tensor, dim: int) -> Tensor:
    return _t(_fl.softmax_backward(_np(grad), _np(y), axis=dim))


@_custom("log_softmax_backward")
def _log_softmax_backward(grad: Tensor, y: Tensor, dim: int) -> Tensor:
    return _t(_fl.log_softmax_backward(_np(grad), _np(y), axis=dim))


for _op in (_softmax, _log_softmax):
    @_op.register_fake
    def _(x, dim):
        return x.new_empty(x.shape)

for _op in (_softmax_backward, _log_softmax_backward):
    @_op.register_fake
    def _(grad, y, dim):
        return y.new_empty(y.shape)


def _save_output(ctx, inputs, output):
    ctx.dim = inputs[1]
    ctx.save_for_backward(output)


def _softmax_grad(ctx, grad):
    y, = ctx.saved_tensors
    return _softmax_backward(grad.contiguous(), y, ctx.dim), None


def _log_softmax_grad(ctx, grad):
    y, = ctx.saved_tensors
    return _log_softmax_backward(grad.contiguous(), y, ctx.dim), None


_softmax.register_autograd(_softmax_grad, setup_context=_save_output)
_log_softmax.register_autograd(_log_softmax_grad, setup_context=_save_output)


def softmax(x, dim):
    """``torch.softmax(x, dim)`` by fastlin's kernel (see :func:`fastlin.softmax`)."""
    (x,), back = _prepare("softmax", ("x", x))
    return _give_back(_run(_softmax, x, dim), back)


def log_softmax(x, dim):
    """``torch.log_softmax(x, dim)`` by fastlin's kernel."""
    (x,), back = _prepare("log_softmax", ("x", x))
    return _give_back(_run(_log_softmax, x, dim), back)


@_custom("logsumexp")
def _logsumexp(x: Tensor, dim: list[int], keepdim: bool) -> Tensor:
    return _t(_fl.logsumexp(_np(x), axis=tuple(dim), keepdims=keepdim))


@_logsumexp.register_fake
def _(x, dim, keepdim):
    nd = x.dim()
    axes = {d % nd for d in dim} if nd else set()
    shape = [1 if i in axes else s for i, s in enumerate(x.shape)
             if keepdim or i not in axes]
    return x.new_empty(shape)


@_custom("logsumexp_backward")
def _logsumexp_backward(grad: Tensor, x: Tensor, dim: list[int], keepdim: bool) -> Tensor:
    return _t(_fl.logsumexp_backward(_np(grad), _np(x), axis=tuple(dim), keepdims=keepdim))


@_logsumexp_backward.register_fake
def _(grad, x, dim, keepdim):
    return x.new_empty(x.shape)


def _lse_setup(ctx, inputs, output):
    ctx.dim, ctx.keepdim = inputs[1], inputs[2]
    ctx.save_for_backward(inputs[0])


def _lse_grad(ctx, grad):
    x, = ctx.saved_tensors
    return _logsumexp_backward(grad.contiguous(), x, ctx.dim, ctx.keepdim), None, None


_logsumexp.register_autograd(_lse_grad, setup_context=_lse_setup)


def logsumexp(x, dim, keepdim=False):
    """``torch.logsumexp(x, dim, keepdim)`` by fastlin's kernel; dim an int or
    a tuple of ints."""
    (x,), back = _prepare("logsumexp", ("x", x))
    return _give_back(_run(_logsumexp, x, _dims(dim, x.dim()), bool(keepdim)), back)


# ------------------------------------------------------------- normalize

@_custom("normalize")
def _normalize(x: Tensor, dim: int, eps: float) -> Tensor:
    return _t(_fl.normalize(_np(x), axis=dim, eps=eps))


@_normalize.register_fake
def _(x, dim, eps):
    return x.new_empty(x.shape)


@_custom("normalize_backward")
def _normalize_backward(grad: Tensor, x: Tensor, dim: int, eps: float) -> Tensor:
    return _t(_fl.normalize_backward(_np(grad), _np(x), axis=dim, eps=eps))


@_normalize_backward.register_fake
def _(grad, x, dim, eps):
    return x.new_empty(x.shape)


def _normalize_setup(ctx, inputs, output):
    ctx.dim, ctx.eps = inputs[1], inputs[2]
    ctx.save_for_backward(inputs[0])


def _normalize_grad(ctx, grad):
    x, = ctx.saved_tensors
    return _normalize_backward(grad.contiguous(), x, ctx.dim, ctx.eps), None, None


_normalize.register_autograd(_normalize_grad, setup_context=_normalize_setup)


def normalize(x, p=2.0, dim=1, eps=1e-12):
    """``torch.nn.functional.normalize(x, p=2, dim, eps)``: ``x / max(||x||, eps)``
    along dim, by fastlin's overflow-free kernel (p = 2 only)."""
    if p != 2:
        raise ValueError(f"fastlin.torch.normalize: only p=2 is supported, got {p!r}")
    (x,), back = _prepare("normalize", ("x", x))
    return _give_back(_run(_normalize, x, int(dim), float(eps)), back)


# ------------------------------------------------------------- distances

def _check_vi_grad(name, VI):
    if VI is not None and VI.requires_grad:
        raise NotImplementedError(
            f"fastlin.torch.{name}: no gradient with respect to VI (it is a constant "
            "of the metric here); for a learned metric whiten the points instead, "
            "cdist(x1 @ L, x2 @ L) with VI = L L^T")


@_custom("cdist")
def _cdist(x1: Tensor, x2: Tensor, metric: str, VI: Optional[Tensor]) -> Tensor:
    return _t(_fl.cdist(_np(x1), _np(x2), metric, VI=_opt(VI)))


@_cdist.register_fake
def _(x1, x2, metric, VI):
    return x1.new_empty((x1.shape[0], x2.shape[0]))


@_custom("cdist_backward")
def _cdist_backward(grad: Tensor, x1: Tensor, x2: Tensor, metric: str, VI: Optional[Tensor],
                    dist: Tensor) -> tuple[Tensor, Tensor]:
    g1, g2 = _fl.cdist_backward(_np(grad), _np(x1), _np(x2), metric, VI=_opt(VI),
                                dist=_np(dist))
    return _t(g1), _t(g2)


@_cdist_backward.register_fake
def _(grad, x1, x2, metric, VI, dist):
    return x1.new_empty(x1.shape), x2.new_empty(x2.shape)


def _cdist_setup(ctx, inputs, output):
    ctx.metric = inputs[2]
    ctx.save_for_backward(inputs[0], inputs[1], inputs[3], output)


def _cdist_grad(ctx, grad):
    x1, x2, VI, D = ctx.saved_tensors
    g1, g2 = _cdist_backward(grad.contiguous(), x1, x2, ctx.metric, VI, D)
    return (g1 if _need(ctx, 0) else None), (g2 if _need(ctx, 1) else None), None, None


_cdist.register_autograd(_cdist_grad, setup_context=_cdist_setup)


def _weighted(metric, w, *xs):
    """A weighted metric is the metric of the rows scaled by sqrt(w) (torch
    differentiates the scaling, w included)."""
    if w is None:
        return xs
    if metric == "mahalanobis":
        raise TypeError("fastlin.torch: w is not used with metric='mahalanobis' "
                        "(fold it into VI)")
    if (w < 0).any():
        raise ValueError("fastlin.torch: w must be non-negative")
    sw = w.sqrt()
    return tuple(x * sw for x in xs)


def cdist(x1, x2, metric="euclidean", *, w=None, VI=None):
    """Distances between the rows of x1 (P, M) and x2 (R, M), as
    :func:`fastlin.cdist` (exact, scipy's metrics): ``torch.cdist(x1, x2)``
    for 'euclidean'.  Differentiable in x1, x2 and w; VI is a constant."""
    (x1, x2, w, VI), back = _prepare("cdist", ("x1", x1), ("x2", x2), ("w", w), ("VI", VI))
    _check_vi_grad("cdist", VI)
    x1, x2 = _weighted(_fl._distance_api._metric(metric), w, x1, x2)
    return _give_back(_run(_cdist, x1, x2, metric, VI), back)


@_custom("pdist")
def _pdist(x: Tensor, metric: str, VI: Optional[Tensor]) -> Tensor:
    return _t(_fl.pdist(_np(x), metric, VI=_opt(VI)))


@_pdist.register_fake
def _(x, metric, VI):
    m = x.shape[0]
    return x.new_empty((m * (m - 1) // 2,))


@_custom("pdist_backward")
def _pdist_backward(grad: Tensor, x: Tensor, metric: str, VI: Optional[Tensor],
                    dist: Tensor) -> Tensor:
    return _t(_fl.pdist_backward(_np(grad), _np(x), metric, VI=_opt(VI), dist=_np(dist)))


@_pdist_backward.register_fake
def _(grad, x, metric, VI, dist):
    return x.new_empty(x.shape)


def _pdist_setup(ctx, inputs, output):
    ctx.metric = inputs[1]
    ctx.save_for_backward(inputs[0], inputs[2], output)


def _pdist_grad(ctx, grad):
    x, VI, D = ctx.saved_tensors
    return _pdist_backward(grad.contiguous(), x, ctx.metric, VI, D), None, None


_pdist.register_autograd(_pdist_grad, setup_context=_pdist_setup)


def pdist(x, metric="euclidean", *, w=None, VI=None):
    """Condensed distances between the rows of x (scipy's order), as
    :func:`fastlin.pdist`: ``torch.pdist(x)`` for 'euclidean'."""
    (x, w, VI), back = _prepare("pdist", ("x", x), ("w", w), ("VI", VI))
    _check_vi_grad("pdist", VI)
    x, = _weighted(_fl._distance_api._metric(metric), w, x)
    return _give_back(_run(_pdist, x, metric, VI), back)


# ------------------------------------------------------------- Mahalanobis

@_custom("mahalanobis")
def _mahalanobis(x: Tensor, mean: Tensor, M: Tensor, kind: str, squared: bool) -> Tensor:
    return _t(_fl.mahalanobis(_np(x), _np(mean), **{kind: _np(M)}, squared=squared))


@_mahalanobis.register_fake
def _(x, mean, M, kind, squared):
    return x.new_empty(x.shape[:-1])


@_custom("mahalanobis_backward")
def _mahalanobis_backward(grad: Tensor, x: Tensor, mean: Tensor, M: Tensor, kind: str,
                          squared: bool) -> tuple[Tensor, Tensor, Tensor]:
    r = _fl.mahalanobis_backward(_np(grad), _np(x), _np(mean), **{kind: _np(M)},
                                 squared=squared)
    return tuple(_t(a) for a in r)


@_mahalanobis_backward.register_fake
def _(grad, x, mean, M, kind, squared):
    return x.new_empty(x.shape), mean.new_empty(mean.shape), M.new_empty(M.shape)


def _maha_setup(ctx, inputs, output):
    ctx.kind, ctx.squared = inputs[3], inputs[4]
    ctx.save_for_backward(*inputs[:3])


def _maha_grad(ctx, grad):
    x, mean, M = ctx.saved_tensors
    gx, gm, gM = _mahalanobis_backward(grad.contiguous(), x, mean, M, ctx.kind, ctx.squared)
    return ((gx if _need(ctx, 0) else None), (gm if _need(ctx, 1) else None),
            (gM if _need(ctx, 2) else None), None, None)


_mahalanobis.register_autograd(_maha_grad, setup_context=_maha_setup)


def mahalanobis(x, mean, cov=None, *, VI=None, cholesky=None, squared=False):
    """Mahalanobis distance of each point (..., d) to one distribution, as
    :func:`fastlin.mahalanobis` (exactly one of cov, VI, cholesky).
    Differentiable in x, mean and the matrix given."""
    given = [(k, v) for k, v in (("cov", cov), ("VI", VI), ("cholesky", cholesky))
             if v is not None]
    if len(given) != 1:
        raise ValueError("fastlin.torch.mahalanobis: give exactly one of cov, VI or "
                         f"cholesky, got {len(given)}")
    kind, M = given[0]
    (x, mean, M), back = _prepare("mahalanobis", ("x", x), ("mean", mean), (kind, M))
    return _give_back(_run(_mahalanobis, x, mean, M, kind, bool(squared)), back)


# ------------------------------------------------------------- max-margin loss

@_custom("max_margin_loss")
def _margin(pos: Tensor, neg: Tensor, margin: float, reduction: str) -> Tensor:
    r = _fl.max_margin_loss(_np(pos), _np(neg), margin, reduction)
    return _t(np.asarray(r, dtype=_np(pos).dtype if reduction != "none" else None))


@_margin.register_fake
def _(pos, neg, margin, reduction):
    if reduction == "none":
        return neg.new_empty(torch.broadcast_shapes(pos.shape + (1,), neg.shape))
    return neg.new_empty(())


@_custom("max_margin_loss_backward")
def _margin_backward(grad: Tensor, pos: Tensor, neg: Tensor, margin: float,
                     reduction: str) -> tuple[Tensor, Tensor]:
    g = _np(grad)
    gp, gn = _fl.max_margin_loss_backward(g if g.ndim else float(g), _np(pos), _np(neg),
                                          margin, reduction)
    return _t(gp), _t(gn)


@_margin_backward.register_fake
def _(grad, pos, neg, margin, reduction):
    return pos.new_empty(pos.shape), neg.new_empty(neg.shape)


def _margin_setup(ctx, inputs, output):
    ctx.margin, ctx.reduction = inputs[2], inputs[3]
    ctx.save_for_backward(inputs[0], inputs[1])


def _margin_grad(ctx, grad):
    pos, neg = ctx.saved_tensors
    gp, gn = _margin_backward(grad.contiguous(), pos, neg, ctx.margin, ctx.reduction)
    return (gp if _need(ctx, 0) else None), (gn if _need(ctx, 1) else None), None, None


_margin.register_autograd(_margin_grad, setup_context=_margin_setup)


def max_margin_loss(pos, neg, margin=1.0, reduction="sum"):
    """The hinge ranking loss ``max(0, margin - pos + neg)``, as
    :func:`fastlin.max_margin_loss` (pos (...,), neg (..., N))."""
    (pos, neg), back = _prepare("max_margin_loss", ("pos", pos), ("neg", neg))
    return _give_back(_run(_margin, pos, neg, float(margin), str(reduction)), back)


# ------------------------------------------------------------- pairwise reductions

@_custom("cdist_topk")
def _topk(x1: Tensor, x2: Tensor, k: int, metric: str, largest: bool,
          VI: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    d, i = _fl.cdist_topk(_np(x1), _np(x2), k, metric, largest=largest, VI=_opt(VI))
    return _t(d), _t(i)


@_topk.register_fake
def _(x1, x2, k, metric, largest, VI):
    return (x1.new_empty((x1.shape[0], k)),
            x1.new_empty((x1.shape[0], k), dtype=torch.int64))


@_custom("cdist_topk_backward")
def _topk_backward(grad: Tensor, x1: Tensor, x2: Tensor, idx: Tensor, metric: str,
                   VI: Optional[Tensor], dist: Tensor) -> tuple[Tensor, Tensor]:
    g1, g2 = _fl.cdist_topk_backward(_np(grad), _np(x1), _np(x2), _np(idx), metric,
                                     VI=_opt(VI), dist=_np(dist))
    return _t(g1), _t(g2)


@_topk_backward.register_fake
def _(grad, x1, x2, idx, metric, VI, dist):
    return x1.new_empty(x1.shape), x2.new_empty(x2.shape)


def _topk_setup(ctx, inputs, output):
    ctx.metric = inputs[3]
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(inputs[0], inputs[1], inputs[5], output[0], output[1])


def _topk_grad(ctx, gd, gi):
    x1, x2, VI, d, i = ctx.saved_tensors
    g1, g2 = _topk_backward(gd.contiguous(), x1, x2, i, ctx.metric, VI, d)
    return ((g1 if _need(ctx, 0) else None), (g2 if _need(ctx, 1) else None),
            None, None, None, None)


_topk.register_autograd(_topk_grad, setup_context=_topk_setup)


def cdist_topk(x1, x2, k, metric="euclidean", *, largest=False, w=None, VI=None):
    """The k nearest (largest: farthest) rows of x2 to each row of x1, exactly
    and without the distance matrix, as :func:`fastlin.cdist_topk`: returns
    (dist, idx), like ``torch.topk(torch.cdist(x1, x2), k, largest=False)``
    but ties broken by the lower index.  dist is differentiable in x1, x2, w."""
    (x1, x2, w, VI), back = _prepare("cdist_topk", ("x1", x1), ("x2", x2), ("w", w),
                                     ("VI", VI))
    _check_vi_grad("cdist_topk", VI)
    x1, x2 = _weighted(_fl._distance_api._metric(metric), w, x1, x2)
    return _give_back(_run(_topk, x1, x2, int(k), metric, bool(largest), VI), back)


@_custom("cdist_logsumexp")
def _softmin(x1: Tensor, x2: Tensor, metric: str, scale: float, b: Optional[Tensor],
             VI: Optional[Tensor]) -> Tensor:
    return _t(_fl.cdist_logsumexp(_np(x1), _np(x2), metric, scale=scale, b=_opt(b),
                                  VI=_opt(VI)))


@_softmin.register_fake
def _(x1, x2, metric, scale, b, VI):
    return x1.new_empty((x1.shape[0],))


@_custom("cdist_logsumexp_backward")
def _softmin_backward(grad: Tensor, x1: Tensor, x2: Tensor, metric: str, scale: float,
                      b: Optional[Tensor], VI: Optional[Tensor],
                      lse: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r = _fl.cdist_logsumexp_backward(_np(grad), _np(x1), _np(x2), metric, scale=scale,
                                     b=_opt(b), VI=_opt(VI), lse=_np(lse))
    return tuple(_t(a) for a in r)


@_softmin_backward.register_fake
def _(grad, x1, x2, metric, scale, b, VI, lse):
    return x1.new_empty(x1.shape), x2.new_empty(x2.shape), x2.new_empty((x2.shape[0],))


def _softmin_setup(ctx, inputs, output):
    ctx.metric, ctx.scale = inputs[2], inputs[3]
    ctx.save_for_backward(inputs[0], inputs[1], inputs[4], inputs[5], output)


def _softmin_grad(ctx, grad):
    x1, x2, b, VI, lse = ctx.saved_tensors
    g1, g2, gb = _softmin_backward(grad.contiguous(), x1, x2, ctx.metric, ctx.scale, b, VI,
                                   lse)
    return ((g1 if _need(ctx, 0) else None), (g2 if _need(ctx, 1) else None), None, None,
            (gb if _need(ctx, 4) else None), None)


_softmin.register_autograd(_softmin_grad, setup_context=_softmin_setup)


def cdist_logsumexp(x1, x2, metric="sqeuclidean", *, scale=-1.0, b=None, w=None, VI=None):
    """``log(sum_j b_j exp(scale D_ij))`` per row of x1 without the distance
    matrix, as :func:`fastlin.cdist_logsumexp`; differentiable in x1, x2, b
    and w."""
    (x1, x2, b, w, VI), back = _prepare("cdist_logsumexp", ("x1", x1), ("x2", x2), ("b", b),
                                        ("w", w), ("VI", VI))
    _check_vi_grad("cdist_logsumexp", VI)
    x1, x2 = _weighted(_fl._distance_api._metric(metric), w, x1, x2)
    return _give_back(_run(_softmin, x1, x2, metric, float(scale), b, VI), back)
