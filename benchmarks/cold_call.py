"""One ``img2mesh`` command in this fresh process, with a timeline of where its seconds go.

``serve_latency.py``'s cold phase runs ``img2mesh recon`` and ``img2mesh views`` through this wrapper, so one call
gives both the wall time a user sees and its parts: interpreter start, the imports (done here first, in the order
the command would do them, so the total is the command's), the CUDA context, the model load, the first denoising
step (graph capture and its warm-up) and the rest of the views; for ``recon`` the hull, each fitting stage's first
step and first replayed step, the fit, meshing and texturing (with the mesh modules' imports, which the command does
after the fit), the export. Nothing of the command changes, except with
``--cudnn-benchmark``, a diagnostic variant: the fast path with cuDNN's per-shape autotuning, which only the compiled
mode does since run 3 of RESULTS' "cold CLI calls" (there, without it: 1.7 s off the first step, the others no slower).

    python benchmarks/cold_call.py views PHOTO -o OUT --model MODEL -v
    python benchmarks/cold_call.py recon GRID --export m.glb -v

Prints the command's own output, then one line ``timeline {json}`` on stderr (seconds since this process started)
and one line ``modules [...]``: which of the libraries that take seconds to import (:data:`HEAVY`) it loaded. What
the process takes after ``end`` is its exit (with ``img2mesh.cli.fast_exit``: the atexit handlers, then
``os._exit``).
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import atexit  # noqa: E402  (after the clock: the timeline starts with the interpreter)
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's img2mesh and recon


#: Seconds since the interpreter started at each named point.
MARKS: dict[str, float] = {}


def mark(name: str) -> None:
    MARKS.setdefault(name, time.monotonic() - STARTED)


def main() -> None:
    argv = sys.argv[1:]
    autotune = "--cudnn-benchmark" in argv
    argv = [a for a in argv if a != "--cudnn-benchmark"]
    command = argv[0] if argv else ""
    mark("interpreter")
    atexit.register(_report)

    from img2mesh.cli import main as cli

    mark("import_cli")
    import torch

    mark("import_torch")
    if command == "views":
        import img2mesh.pipeline
        import img2mesh.zero123pp.fast_step
        import img2mesh.zero123pp.pipeline as zpipe
        import recon.posed_views

        mark("import_diffusion")
        _patch_views(img2mesh.pipeline.Img2Mesh, zpipe.Zero123PlusPipeline, autotune)
    elif command == "recon":
        # What the command imports before the fit (the mesh modules come after it).
        import img2mesh.pipeline
        import recon.dataset
        import recon.devices
        import recon.fit
        import recon.paths  # noqa: F401

        mark("import_recon")
        _patch_recon()
    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")
        torch.cuda.synchronize()
        mark("cuda_context")
    sys.argv = ["img2mesh", *argv]
    try:
        cli()
    finally:
        mark("end")


#: Libraries whose import costs seconds: which of them the command loaded (``modules {json}`` at exit).
HEAVY = ("torch._dynamo", "sympy", "diffusers", "transformers", "peft", "scipy.stats", "trimesh", "networkx")


def _report() -> None:
    mark("end")  # where the command ended through img2mesh.cli.fast_exit, whose atexit handlers run this
    print("timeline " + json.dumps(MARKS), file=sys.stderr, flush=True)
    print("modules " + json.dumps([m for m in HEAVY if m in sys.modules]), file=sys.stderr, flush=True)


def _synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(name: str, function):
    """``function`` with marks ``<name>_start`` and ``<name>_end`` around each call."""

    def wrapper(*args, **kwargs):
        mark(f"{name}_start")
        out = function(*args, **kwargs)
        mark(f"{name}_end")
        return out

    return wrapper


def _patch_recon() -> None:
    """Marks around the hull, each fitting stage (its first step: the warm-up and the graph capture, synchronised;
    the moment its last step is queued), the fit, the meshing and texturing and the export. The stage's end is not
    synchronised here (``fit_end`` follows the fit's own sync), so the marks show how far the host runs ahead."""
    import recon.fit

    carve, run_steps, fit = recon.fit.Hull.carve.__func__, recon.fit.run_steps, recon.fit.fit_fields
    stage = [0]

    def timed_carve(cls, *args, **kwargs):
        out = carve(cls, *args, **kwargs)
        _synchronize()
        mark("hull")
        return out

    def timed_run_steps(step, count, device, graphs=True, after_step=None, on_replay=None):
        done = [0]

        def after() -> None:
            # Step 1: the first eager step (kernels loaded at first use); step 4: after the eager warm-up steps,
            # the capture and the first replay where a graph is used (recon.graph_steps.WARMUP_STEPS = 3).
            if after_step is not None:
                after_step()
            done[0] += 1
            if done[0] in (1, 4):
                _synchronize()
                mark(f"stage{stage[0]}_step{done[0]}")

        out = run_steps(step, count, device, graphs, after, on_replay)
        mark(f"stage{stage[0]}_queued")
        stage[0] += 1
        return out

    def timed_fit(*args, **kwargs):
        out = timed("fit", fit)(*args, **kwargs)
        # The command imports these after the fit: patched where it will look them up.
        import recon.asset
        import recon.export

        recon.asset.finish_asset = timed("finish", recon.asset.finish_asset)
        recon.export.export_levels = timed("export", recon.export.export_levels)
        return out

    recon.fit.Hull.carve = classmethod(timed_carve)
    recon.fit.run_steps = timed_run_steps
    recon.fit.fit_fields = timed_fit


def _patch_views(Img2Mesh, Pipeline, autotune: bool) -> None:
    """Marks around the model load, the views call and its first denoising step (synchronised: graph capture,
    cuDNN autotuning and the first use of every kernel), the posing of the grid and the writing of the folder."""
    import torch

    load, generate, predict = Img2Mesh.load, Img2Mesh.generate_views, Pipeline.predict
    calls = [0]

    def timed_load(self, *args, **kwargs):
        if self._pipe is None:
            mark("load_start")
        out = load(self, *args, **kwargs)
        if autotune:
            torch.backends.cudnn.benchmark = True
        mark("load_end")
        return out

    def timed_predict(self, *args, **kwargs):
        mark("first_step_start")  # after the condition's VAE encode and the CLIP encoders: their first use
        out = predict(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 1:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            mark("first_step")
        return out

    def timed_generate(self, *args, **kwargs):
        mark("views_start")
        out = generate(self, *args, **kwargs)
        mark("views_end")
        return out

    Img2Mesh.load, Img2Mesh.generate_views, Pipeline.predict = timed_load, timed_generate, timed_predict
    # What follows the views (run 3's "write", 1.3 s on an H200): posing the grid, then writing the folder.
    Img2Mesh.pose_views, Img2Mesh.save_views = timed("pose", Img2Mesh.pose_views), timed("save", Img2Mesh.save_views)


if __name__ == "__main__":
    main()
