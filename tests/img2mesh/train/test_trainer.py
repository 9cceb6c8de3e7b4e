"""Fine-tuning the tiny Zero123++ on renders of two meshes: it learns, checkpointing and resuming change nothing,
and a saved adapter loads back into the pipeline exactly."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from PIL import Image

from img2mesh.train.config import TrainConfig
from img2mesh.train.data import PairDataset, collate_pairs
from img2mesh.train.lora import add_lora, load_lora
from img2mesh.train.trainer import Trainer
from img2mesh.zero123pp import Zero123PlusPipeline


def make_trainer(data: Path, model: Path, out: Path, resume: bool = False, **changes) -> Trainer:
    settings = dict(
        model=str(model), batch_size=2, lora_rank=8, learning_rate=1e-2, workers=0, validation_meshes=0,
        validate_every=0, checkpoint_every=1000, steps=3,
    )  # fmt: skip
    trainer = Trainer(data, out, TrainConfig(**{**settings, **changes}), resume=resume, progress=False)
    trainer.setup()
    return trainer


def every_pair(trainer: Trainer):
    dataset = PairDataset(trainer.split.train, (192, 128))
    return collate_pairs([dataset[i] for i in range(len(dataset))])


def probe_loss(trainer: Trainer, batch) -> float:
    """The loss of every pair at eight fixed draws of timestep and noise (no dropout): a deterministic measure."""
    _, conditions, targets = batch
    with torch.no_grad():
        losses = [trainer.loss(conditions, targets, torch.manual_seed(s), 0.0) for s in range(8)]
    return float(torch.stack(losses).mean())


def logged_losses(run: Path) -> dict[int, float]:
    with (run / "log.csv").open() as handle:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(handle)}


@pytest.fixture
def photo(pairs: Path) -> Image.Image:
    """A condition cut-out of the duck, the kind of image the pipeline is called with."""
    return Image.open(pairs / "duck" / "condition_00.png").convert("RGBA")


def sample(pipe, condition: Image.Image) -> torch.Tensor:
    return pipe(condition, num_inference_steps=2, generator=torch.manual_seed(0), output_type="pt").images


def test_training_halves_the_loss_within_100_steps(pairs: Path, small_model: Path, tmp_path: Path):
    trainer = make_trainer(pairs, small_model, tmp_path / "run", steps=60)
    batch = every_pair(trainer)
    before = probe_loss(trainer, batch)
    losses = trainer.run()
    after = probe_loss(trainer, batch)
    assert len(losses) == 60
    assert after <= 0.5 * before, (before, after)
    assert sorted(logged_losses(tmp_path / "run")) == list(range(1, 61))
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert "CC-BY-NC-4.0" in (tmp_path / "run" / "NOTICE.txt").read_text()


def test_gradient_checkpointing_gives_the_gradients_of_the_plain_backward(
    pairs: Path, small_model: Path, tmp_path: Path
):
    """The reference keys and values must survive until the backward pass re-runs the blocks, in their mode."""
    gradients = []
    for checkpointing in (False, True):
        trainer = make_trainer(pairs, small_model, tmp_path / str(checkpointing), gradient_checkpointing=checkpointing)
        trainer.pipe.denoiser.bank.retain = checkpointing
        _, conditions, targets = every_pair(trainer)
        loss = trainer.loss(conditions, targets, torch.manual_seed(1), 0.0)
        loss.backward()
        trainer.pipe.denoiser.bank.clear()
        gradients.append({n: p.grad.clone() for n, p in trainer.pipe.unet.named_parameters() if p.requires_grad})
    plain, checkpointed = gradients
    assert plain.keys() == checkpointed.keys() and any(g.abs().sum() > 0 for g in plain.values())
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-7, msg=name)


def test_resume_continues_the_loss_curve(pairs: Path, small_model: Path, tmp_path: Path):
    straight = make_trainer(pairs, small_model, tmp_path / "straight", steps=6)
    straight.run()
    first = make_trainer(pairs, small_model, tmp_path / "resumed", steps=3)
    first.run()
    resumed = make_trainer(pairs, small_model, tmp_path / "resumed", resume=True, steps=6)
    assert resumed.start == 3
    resumed.run()
    expected, got = logged_losses(tmp_path / "straight"), logged_losses(tmp_path / "resumed")
    assert sorted(got) == list(range(1, 7))
    assert got == expected  # every draw of a step follows from (seed, step): the same curve, to the digit
    for name, value in straight.trainable_state().items():
        torch.testing.assert_close(resumed.trainable_state()[name], value)


def test_kept_encodings_give_the_loss_curve_of_encoding_every_step(pairs: Path, small_model: Path, tmp_path: Path):
    # 4 pairs, batch 2: steps 3 and 4 find their pairs' encodings kept from steps 1 and 2.
    for cache in (True, False):
        trainer = make_trainer(pairs, small_model, tmp_path / str(cache), steps=4, cache_encodings=cache)
        trainer.run()
        assert len(trainer.cache) == (4 if cache else 0)
    kept, encoded = logged_losses(tmp_path / "True"), logged_losses(tmp_path / "False")
    for step in range(1, 5):
        assert kept[step] == pytest.approx(encoded[step], rel=1e-4, abs=1e-6), step


def test_a_zero_adapter_leaves_the_output_bit_identical(small_model: Path, photo):
    pipe = Zero123PlusPipeline.from_pretrained(small_model)
    pipe.set_progress_bar_config(disable=True)
    base = sample(pipe, photo)
    add_lora(pipe.unet, rank=8)
    assert torch.equal(sample(pipe, photo), base)  # peft starts the up-projection at zero
    pipe.unet.fuse_lora()
    pipe.unet.unload_lora()
    assert torch.equal(sample(pipe, photo), base)


def test_a_saved_adapter_loads_back_to_identical_outputs(pairs: Path, small_model: Path, tmp_path: Path, photo):
    trainer = make_trainer(pairs, small_model, tmp_path / "run", steps=2, validate_every=2, validation_steps=2)
    trainer.run()
    sheet = Image.open(tmp_path / "run" / "validation" / "step-000002.png")
    assert sheet.size == (3 * 640, 960)  # condition | sampled grid | target grid
    trained = trainer.pipe
    trained.unet.eval()
    unmerged = sample(trained, photo)

    def loaded(merge: bool):
        pipe = Zero123PlusPipeline.from_pretrained(small_model)
        pipe.set_progress_bar_config(disable=True)
        load_lora(pipe.unet, tmp_path / "run", merge=merge)
        return pipe

    base = Zero123PlusPipeline.from_pretrained(small_model)
    base.set_progress_bar_config(disable=True)
    assert not torch.equal(sample(base, photo), unmerged)  # the adapter learnt something
    assert torch.equal(sample(loaded(merge=False), photo), unmerged)
    trained.unet.fuse_lora()
    trained.unet.unload_lora()
    assert torch.equal(sample(loaded(merge=True), photo), sample(trained, photo))


def test_a_full_fine_tune_is_a_model_folder_that_loads(pairs: Path, small_model: Path, tmp_path: Path):
    trainer = make_trainer(pairs, small_model, tmp_path / "run", steps=1, mode="full", learning_rate=1e-3)
    trainer.run()
    loaded = Zero123PlusPipeline.from_pretrained(tmp_path / "run" / "model").unet.state_dict()
    base = Zero123PlusPipeline.from_pretrained(small_model).unet.state_dict()
    trained = trainer.pipe.unet.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[name], trained[name]) for name in loaded)
    assert any(not torch.equal(loaded[name], base[name]) for name in loaded)


def trained_weights(trainer: Trainer) -> torch.Tensor:
    return torch.cat([value.float().flatten() for value in trainer.trainable_state().values()])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_steps_train_like_eager_steps(pairs: Path, small_model: Path, tmp_path: Path):
    """From the third step on, steps replay the captured graph; with the capture held off, the same code runs every
    step eagerly. Both draw the same inputs and make the same updates, up to bf16 rounding and the attention
    backward's atomics (so close, not equal)."""
    runs = {}
    for graphs in (False, True):
        trainer = make_trainer(pairs, small_model, tmp_path / str(graphs), steps=8, learning_rate=1e-3)
        if not graphs:
            trainer.graphed.warmup = trainer.config.steps  # never captured
        start = trained_weights(trainer)
        trainer.run()
        assert (trainer.graphed.graph is not None) == graphs and not trainer.graphed.failed
        runs[graphs] = (logged_losses(tmp_path / str(graphs)), trained_weights(trainer) - start)
    (eager_losses, eager_update), (graph_losses, graph_update) = runs[False], runs[True]
    assert graph_losses == pytest.approx(eager_losses, rel=2e-2)
    assert (graph_update - eager_update).norm() <= 0.1 * eager_update.norm()
