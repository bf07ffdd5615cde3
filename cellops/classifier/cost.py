"""What a model costs to run: parameters, multiply-accumulates per image and CPU latency per image."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model`` (trainable or not).

    Parameters
    ----------
    model : nn.Module
        The model.

    Returns
    -------
    int
        Total number of parameter elements.

    Examples
    --------
    >>> count_parameters(nn.Linear(4, 3))
    15
    """
    return int(sum(p.numel() for p in model.parameters()))


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one image of ``input_shape`` (C, H, W), as torch's own FLOP
    counter sees the convolutions and matrix products (MACs = FLOPs / 2).

    Parameters
    ----------
    model : nn.Module
        The model (put in eval mode).
    input_shape : tuple of int
        Shape of one input, without the batch axis.

    Returns
    -------
    int
        Multiply-accumulates per image.

    Examples
    --------
    >>> count_macs(nn.Linear(4, 3, bias=False), (4,))
    12
    """
    model.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros((1, *input_shape)))
    return int(counter.get_total_flops() // 2)


def cpu_latency_ms(model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int = 1, repeats: int = 20,
                   warmup: int = 3) -> float:
    """Median wall-clock milliseconds per image of eval-mode forward passes on the CPU, ``batch_size`` images at a
    time (the median of ``repeats`` timed passes after ``warmup`` untimed ones).

    Parameters
    ----------
    model : nn.Module
        The model (moved to the CPU, eval mode).
    input_shape : tuple of int
        Shape of one input, without the batch axis.
    batch_size : int, optional
        Images per timed pass.
    repeats : int, optional
        Timed passes.
    warmup : int, optional
        Untimed passes first.

    Returns
    -------
    float
        Median milliseconds per image.
    """
    model = model.cpu().eval()
    x = torch.rand((batch_size, *input_shape), generator=torch.Generator().manual_seed(0))
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0 / batch_size)


def model_costs(model: nn.Module, input_shape: tuple[int, ...], *, latency_batch_size: int = 1) -> dict[str, float]:
    """What a model costs to run: parameters, multiply-accumulates and CPU latency for one input of ``input_shape``.

    Parameters
    ----------
    model : nn.Module
        The classifier, in eval mode.
    input_shape : tuple of int
        (channels, height, width) of one input.
    latency_batch_size : int, optional
        Images per timed forward pass.

    Returns
    -------
    dict of str to float
        ``parameters``, ``macs`` and ``cpu_latency_ms``.
    """
    return {"parameters": count_parameters(model), "macs": count_macs(model, input_shape),
            "cpu_latency_ms": cpu_latency_ms(model, input_shape, batch_size=latency_batch_size)}
