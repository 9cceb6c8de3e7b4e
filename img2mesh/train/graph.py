"""A training step's forward and backward pass replayed from one CUDA graph (``TrainConfig.cuda_graphs``).

Eager, a step is host-bound: the two UNet passes, their recomputation under gradient checkpointing and the backward
pass are thousands of small kernels launched from Python, and launching them takes longer than the GPU takes to
run them. Captured once, the whole pass is launched by one call. The step's random draws stay outside the graph
(its inputs are drawn eagerly, then copied into the graph's buffers), so a graphed run draws what an eager one
does; the optimiser, gradient clipping and logging stay outside too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

log = logging.getLogger(__name__)


class GraphedBackward:
    """Runs ``backward`` (inputs → detached loss, gradients added into the parameters' ``.grad``) eagerly for
    ``warmup`` calls, then captures it as a CUDA graph and replays that for every later call with inputs of the same
    shapes and dtypes (others run eagerly).

    The graph adds into the ``.grad`` tensors that the eager calls created, so between steps zero them in place
    (``zero_grad(set_to_none=False)``), never set them to None. ``backward`` must draw no random numbers and read
    no host values of device tensors. If the capture fails, every later step runs eagerly (a warning says why).
    """

    def __init__(self, backward: Callable[..., torch.Tensor], warmup: int = 2):
        self.backward = backward
        self.warmup = warmup
        self.calls = 0
        self.failed = False
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: list[torch.Tensor] = []
        self.loss: torch.Tensor | None = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.failed:
            return self.backward(*inputs)
        if self.calls <= self.warmup:
            return self._eager(inputs)
        if self.graph is None and not self._capture(inputs):
            return self._eager(inputs)
        if any(s.shape != x.shape or s.dtype != x.dtype for s, x in zip(self.static, inputs, strict=True)):
            return self._eager(inputs)
        for buffer, value in zip(self.static, inputs, strict=True):
            buffer.copy_(value)
        self.graph.replay()
        return self.loss.clone()

    def _eager(self, inputs) -> torch.Tensor:
        """The step without a graph, on a side stream as CUDA graph warm-up requires (cuBLAS and cuDNN allocate
        their workspaces per stream)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            loss = self.backward(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        return loss

    def _capture(self, inputs) -> bool:
        """Capture the step for inputs like ``inputs``; False (and eager from then on) if capture fails."""
        self.static = [x.clone() for x in inputs]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.loss = self.backward(*self.static)
        except Exception as error:  # a capture failure must cost speed, never the run
            log.warning("CUDA graph capture of the training step failed (%s: %s); continuing eager",
                        type(error).__name__, error)  # fmt: skip
            self.failed, self.static, self.loss = True, [], None
            torch.cuda.synchronize()
            return False
        self.graph = graph
        return True
