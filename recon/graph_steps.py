"""Run one optimisation step many times, captured once as a CUDA graph on the GPU, eagerly elsewhere.

Why: a fitting step is ~100 small kernels (sampling, grid lookups, compositing, losses, their backward, Adam). Launched
one by one from Python they leave the GPU idle most of the time, so fitting is bound by the launch rate, not by the
card. A CUDA graph records the whole step (forward, backward and optimiser update) once and replays it with a single
launch. What the step must obey, so that one recording serves every step:

- static shapes and no host synchronisation inside (no ``.item()``, no printing, no Python branching on tensor values);
- every per-step input (ray batch, schedule values, learning rates) is read on the device from tensors prepared before
  the run, indexed by a step counter that the step itself advances;
- the optimiser keeps its state on the device (fused, capturable Adam) and takes tensor learning rates.

On the CPU (or with graphs switched off) the very same step runs eagerly, so both paths share one definition.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

#: Eager steps before capture: they initialise the optimiser's state and let lazily built kernels settle.
WARMUP_STEPS = 3


def run_steps(
    step: Callable[[], None],
    count: int,
    device: torch.device,
    graphs: bool = True,
    after_step: Callable[[], None] | None = None,
    on_replay: Callable[[], None] | None = None,
) -> bool:
    """Run ``step`` ``count`` times (as a CUDA graph after a few eager steps when ``graphs`` and on CUDA).

    ``after_step`` runs on the host after each step (a progress bar; it must not read device values); ``on_replay``
    once, after the first replay is queued (never without a graph). Returns whether a graph was used.
    """
    after = after_step or (lambda: None)
    if not graphs or device.type != "cuda" or count <= WARMUP_STEPS:
        for _ in range(count):
            step()
            after()
        return False
    # Warm-up on a side stream, as CUDA graph capture requires of work that allocates (the documented recipe).
    side = warmup_stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            step()
            after()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):  # records only: the captured step has not run yet
        step()
    for index in range(count - WARMUP_STEPS):
        graph.replay()
        after()
        if index == 0 and on_replay is not None:
            on_replay()
    return True


def warmup_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream of the eager warm-up steps on ``device``: one for the process's life, not one per run.

    Each ``torch.cuda.Stream()`` is the next of torch's pool of 32 streams per device, and the first matrix product
    on a stream (the shading's, here) makes cuBLAS a workspace for it (tens of MiB on Hopper), which torch keeps as
    long as the process lives: ``empty_cache`` cannot give it back. With a stream per fitting stage, a long-lived
    fitting process (the server's, the batch runner's) would grow by one workspace per stage per item until the pool
    came round (benchmarks/RESULTS.md, "`img2mesh serve` latency", runs 2 and 4).
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _warmup_stream(index)


@functools.cache
def _warmup_stream(index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(torch.device("cuda", index))


class StepSchedule:
    """Everything that varies from step to step of a run, prepared up front as ``(steps, ...)`` device tensors.

    The step reads row ``counter`` of each (:meth:`now`) and advances the counter itself (:meth:`advance`), so one
    captured step serves every step of the run.
    """

    def __init__(self, values: dict[str, torch.Tensor]):
        self.values = values
        device = next(iter(values.values())).device
        self.counter = torch.zeros(1, dtype=torch.long, device=device)
        """(1,) long: the step about to run."""

    def now(self) -> dict[str, torch.Tensor]:
        """This step's row of every scheduled value."""
        return {name: values.index_select(0, self.counter)[0] for name, values in self.values.items()}

    def advance(self) -> None:
        self.counter.add_(1)


class ScheduledAdam:
    """Adam with one parameter per group, each group's learning rate read from a schedule row on the device.

    The update is torch's fused Adam kernel (``torch._fused_adam_``), called as ``torch.optim.Adam(fused=True,
    capturable=True)`` calls it for one parameter with a tensor learning rate, so the numbers are the same; the
    update never touches the host. Not through ``torch.optim``: its first use imports ``torch._dynamo`` (its methods
    are wrapped to keep dynamo out), some 2 s of every cold ``img2mesh recon`` call that nothing else needs
    (benchmarks/RESULTS.md, "cold CLI calls").
    """

    def __init__(self, groups: list[tuple[torch.nn.Parameter, torch.Tensor]], betas: tuple[float, float]):
        self.params = [param for param, _ in groups]
        self.rates = [rates for _, rates in groups]
        self.lrs = [rates[0].clone() for rates in self.rates]
        self.betas = betas
        self.eps = 1e-8  # torch.optim.Adam's default
        # Adam's state as torch.optim keeps it for a fused, capturable Adam: float32 step count on the device.
        self.steps = [torch.zeros((), dtype=torch.float32, device=p.device) for p in self.params]
        self.exp_avgs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]

    def step(self, loss: torch.Tensor, counter: torch.Tensor) -> None:
        """Back-propagate ``loss`` and update every parameter with its learning rate of step ``counter``."""
        for param in self.params:
            param.grad = None
        loss.backward()
        with torch.no_grad():
            self._update(counter)

    def _update(self, counter: torch.Tensor) -> None:
        for i, (param, rates, lr) in enumerate(zip(self.params, self.rates, self.lrs, strict=True)):
            lr.copy_(rates.index_select(0, counter)[0])
            if param.grad is None:  # torch.optim skips a parameter without a gradient, its step count too
                continue
            torch._foreach_add_([self.steps[i]], 1)
            torch._fused_adam_(
                [param],
                [param.grad],
                [self.exp_avgs[i]],
                [self.exp_avg_sqs[i]],
                [],
                [self.steps[i]],
                amsgrad=False,
                lr=lr,
                beta1=self.betas[0],
                beta2=self.betas[1],
                weight_decay=0.0,
                eps=self.eps,
                maximize=False,
                grad_scale=None,
                found_inf=None,
            )
