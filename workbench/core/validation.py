"""Input validation with messages that name the argument, the expectation and the fix.

Checks that need the *values* of a tensor (finiteness, ranges) cannot run inside
``torch.func.vmap``; code that vmaps over the contract wraps the call in
:func:`value_checks_disabled`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

_VALUE_CHECKS = contextvars.ContextVar("workbench_value_checks", default=True)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@contextlib.contextmanager
def value_checks_disabled() -> Iterator[None]:
    """Skip data-dependent checks (needed under ``torch.func.vmap``); shape/dtype checks remain."""
    token = _VALUE_CHECKS.set(False)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def value_checks_enabled() -> bool:
    return _VALUE_CHECKS.get()


def check_tensor(x: object, name: str) -> torch.Tensor:
    """x must be a floating-point torch.Tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor(...)"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64), got {x.dtype}; "
            f"convert with {name}.to(torch.float64)"
        )
    return x


def check_finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise ValueError if x holds NaN or inf (skipped when value checks are disabled)."""
    if value_checks_enabled() and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} contains {n_bad} non-finite value(s) (NaN or inf); expected finite numbers")
    return x


def check_state(x: object, dim: int | None, name: str = "x") -> torch.Tensor:
    """x must be a finite floating tensor of shape (batch, dim) (or (batch, *event) if dim is None)."""
    x = check_tensor(x, name)
    if dim is not None:
        if x.ndim != 2 or x.shape[-1] != dim:
            raise ValueError(f"{name} must have shape (batch, {dim}), got {tuple(x.shape)}")
    elif x.ndim < 2:
        raise ValueError(f"{name} must have shape (batch, *event), got {tuple(x.shape)}")
    return check_finite(x, name)


def check_positive_int(n: object, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return n


def check_probability_vector(w: torch.Tensor, name: str = "weights") -> torch.Tensor:
    """w must be 1-D, non-negative, finite and sum to 1 (to 1e-6 relative)."""
    if w.ndim != 1 or w.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector, got shape {tuple(w.shape)}")
    check_finite(w, name)
    if bool((w < 0).any()):
        raise ValueError(f"{name} must be non-negative, got {w.tolist()}")
    total = float(w.sum())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"{name} must sum to 1, got sum {total!r}; normalise with w / w.sum()")
    return w


# -- the mixed-dtype rule ---------------------------------------------------------------------------------
# A neural model computes in the dtype of its parameters. A tensor argument of another floating dtype is
# REFUSED at the entry (TypeError naming the argument and both dtypes, with the cast that fixes it), never
# silently cast: a float64 oracle point fed to a float32 network would otherwise lose precision unseen, and
# a float32 point fed to a float64 network would return float64 where the caller expects its own dtype.
def check_dtype_matches(x: torch.Tensor, name: str, dtype: torch.dtype, owner: str = "the model's parameters") -> torch.Tensor:
    """x must have ``dtype`` (the dtype ``owner`` computes in): TypeError naming ``name`` otherwise."""
    if x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but {owner} are {dtype}; cast one of them: "
            f"{name}.to({dtype}) or model.to({x.dtype})"
        )
    return x


def model_dtype(model: object) -> torch.dtype | None:
    """The floating dtype ``model`` computes in: THE one answer the mixed-dtype rule uses everywhere.

    A model's own ``dtype`` attribute wins when it has one (a torch.dtype, or None for a wrapper whose
    base follows its input, e.g. ``PerturbedFlowMap(ExactFlowMap(flow))``); else the dtype of its first
    floating parameter (an ``nn.Module``); else None: a model without parameters (an analytic flow,
    ``ExactFlowMap``) follows its input's dtype and accepts any floating tensor."""
    if hasattr(model, "dtype"):
        dtype = model.dtype
        if dtype is None or isinstance(dtype, torch.dtype):
            return dtype
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return None


def check_floating_dtype(dtype: object, name: str = "dtype") -> torch.dtype:
    """dtype must be a floating torch.dtype (float16, bfloat16, float32, float64)."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be a torch.dtype such as torch.float32, got {type(dtype).__name__} {dtype!r}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating dtype (float32 or float64), got {dtype}")
    return dtype


def check_generator(generator: object, name: str = "generator") -> torch.Generator | None:
    """generator must be None or a torch.Generator (an int seed is refused with the fix)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        hint = f"; for a seed use torch.Generator().manual_seed({generator!r})" if isinstance(generator, int) else ""
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__}{hint}")
    return generator


def check_device(device: object, name: str = "device") -> torch.device:
    """device must name a device torch knows and this machine has ('cpu', 'cuda', 'cuda:1', 'mps', a
    torch.device); ValueError naming ``name`` otherwise (e.g. 'cuda' without CUDA, 'gpu0')."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{name} must be a str or torch.device such as 'cpu' or 'cuda', got {type(device).__name__}")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"{name} {device!r} is not a device torch knows (expected 'cpu', 'cuda', 'cuda:N', "
                         f"'mps'): {str(err).splitlines()[0]}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} {device!r} needs CUDA, which this machine does not have; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{name} {device!r} needs Apple MPS, which this machine does not have; use 'cpu'")
    return dev


def check_sampling_args(
    n: object, generator: object, dtype: object, device: object
) -> tuple[int, torch.dtype, torch.device]:
    """The arguments of a sampler ``sample(n, generator, *, dtype, device)``: n a positive int, generator None
    or a torch.Generator, dtype a floating dtype, device a device this machine has (default: the
    generator's device, else CPU; a generator on another device than ``device`` is refused).
    Returns (n, dtype, device)."""
    check_positive_int(n, "n")
    check_generator(generator)
    check_floating_dtype(dtype)
    if device is None:
        dev = torch.device(generator.device) if generator is not None else torch.device("cpu")
    else:
        dev = check_device(device)
        if generator is not None and torch.device(generator.device).type != dev.type:
            raise ValueError(
                f"device {str(dev)!r} differs from the generator's device {str(generator.device)!r}; "
                f"draw with a generator on {str(dev)!r} (torch.Generator(device={str(dev)!r})) or omit device"
            )
    return n, dtype, dev
