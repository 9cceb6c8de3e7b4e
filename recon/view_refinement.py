"""Per-view corrections learnt with the fields: a small camera pose correction and an affine colour transform.

Each generated view is its own sample: slightly misregistered against the fixed Zero123++ cameras, with its own
exposure and white balance. Fitting one field to all six as they are averages the disagreement into blur, thin parts
and ghosts. So the fit may move each camera a little (a rotation about its centre and a translation, held near the
given pose by a squared penalty and locked during a warm-up, as nerfstudio's camera optimiser and BARF do) and
recolour what it renders for each view (an affine colour transform, as NeRF in the Wild's appearance codes do, held
near identity by a Charbonnier penalty, so that the views that agree set the field's colour and an outlier view
takes its own transform). Both are undone for baking: the texture is projected through the corrected cameras from
the views with their colour transforms inverted (:func:`corrected_views`).

Pose corrections are in pixels of the fitted image, so their learning rate and penalty read the same at any
resolution: a rotation of ``p`` about an axis across the view moves the image by ``p`` pixels, a translation of
``p`` across it too. Both classes are free of host synchronisation (the fitting step is a CUDA graph).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from recon.posed_views import PosedViews
from recon.volume_render import RayBatch, Rendered


class PoseRefinement(torch.nn.Module):
    """A learnt rotation (about the camera centre) and translation per view, both in world axes."""

    def __init__(self, cam_to_world: torch.Tensor, focal: float):
        super().__init__()
        count = cam_to_world.shape[0]
        self.offset = torch.nn.Parameter(torch.zeros(count, 6, device=cam_to_world.device))
        """(N, 6): rotation vector and translation per view, in pixels of the fitted image."""
        self.focal = focal
        self.register_buffer("distance", torch.linalg.norm(cam_to_world[:, :3, 3], dim=-1))

    def rotations(self) -> torch.Tensor:
        """(N, 3, 3) world-frame rotations about each camera's centre."""
        return axis_angle_to_matrix(self.offset[:, :3] / self.focal)

    def translations(self) -> torch.Tensor:
        """(N, 3) world translations of the camera centres."""
        return self.offset[:, 3:] * (self.distance / self.focal)[:, None]

    def apply(self, rays: RayBatch, learn: bool = True) -> RayBatch:
        """The rays as the corrected cameras cast them (held fixed, with no gradient, unless ``learn``)."""
        rotation, translation = self.rotations(), self.translations()
        if not learn:
            rotation, translation = rotation.detach(), translation.detach()
        directions = (rotation[rays.view] @ rays.directions[..., None])[..., 0]
        origins = rays.origins + translation[rays.view]
        return dataclasses.replace(rays, origins=origins, directions=directions)

    def penalty(self) -> torch.Tensor:
        """Mean squared correction per view, pixels²."""
        return (self.offset**2).sum(-1).mean()

    def cam_to_world(self, cam_to_world: np.ndarray) -> np.ndarray:
        """The corrected camera-to-world matrices (N, 4, 4) of the given ones."""
        with torch.no_grad():
            rotation = self.rotations().cpu().double().numpy()
            translation = self.translations().cpu().double().numpy()
        corrected = np.array(cam_to_world, dtype=np.float64)
        corrected[:, :3, :3] = rotation @ corrected[:, :3, :3]
        corrected[:, :3, 3] += translation
        return corrected


#: Colour the affine transforms are centred on: gain and offset then barely trade off (faster, better conditioned).
PIVOT = 0.5


class ColourCompensation(torch.nn.Module):
    """An affine colour transform per view, ``rgb ↦ A (rgb - p) + p + b`` about the mid-gray ``p``
    (:data:`PIVOT`), applied to what the fit renders for the view."""

    def __init__(self, count: int, device: torch.device):
        super().__init__()
        self.affine = torch.nn.Parameter(torch.zeros(count, 3, 4, device=device))
        """(N, 3, 4): ``A - I`` and ``b`` per view."""

    def transforms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Matrices ``A`` (N, 3, 3) and offsets ``b`` (N, 3)."""
        eye = torch.eye(3, device=self.affine.device)
        return eye + self.affine[:, :, :3], self.affine[:, :, 3]

    def apply(self, out: Rendered, view: torch.Tensor, background: torch.Tensor) -> Rendered:
        """``out`` with the object's colour (not the background's) transformed by each ray's view, kept in range."""
        matrix, offset = self.transforms()
        opacity = out.opacity[:, None]
        premultiplied = out.rgb - (1 - opacity) * background
        pivot = PIVOT * opacity
        coloured = (matrix[view] @ (premultiplied - pivot)[..., None])[..., 0] + pivot + offset[view] * opacity
        coloured = torch.minimum(coloured.clamp_min(0), opacity)  # the views' pixels saturate at 0 and 1
        return dataclasses.replace(out, rgb=coloured + (1 - opacity) * background)

    def penalty(self) -> torch.Tensor:
        """Mean Charbonnier size of the transforms' departure from identity (robust: an outlier view may go far)."""
        return torch.sqrt(self.affine**2 + 1e-6).sum((1, 2)).mean()


def axis_angle_to_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) of rotation vectors (..., 3) (Rodrigues; smooth through zero)."""
    angle2 = (vectors**2).sum(-1, keepdim=True)[..., None]
    angle = torch.sqrt(angle2 + 1e-12)
    x, y, z = vectors.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*vectors.shape[:-1], 3, 3)
    eye = torch.eye(3, device=vectors.device, dtype=vectors.dtype)
    return eye + torch.sin(angle) / angle * skew + (1 - torch.cos(angle)) / (angle2 + 1e-12) * (skew @ skew)


def undo_colour(images: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Images (N, H, W, 3) in [0, 1] with each view's transform (:attr:`ColourCompensation.affine`, (N, 3, 4))
    inverted: the colours of the field."""
    inverse = np.linalg.inv(np.eye(3) + affine[:, :, :3].astype(np.float64)).astype(np.float32)
    offset = affine[:, :, 3].astype(np.float32)
    shifted = np.asarray(images, dtype=np.float32) - PIVOT - offset[:, None, None]
    # A batched float32 matmul: an einsum in float64 over six full views cost several times more, on the way to a GLB
    restored = shifted @ inverse.transpose(0, 2, 1)[:, None] + PIVOT
    return restored.clip(0, 1)


def corrected_views(views: PosedViews, cam_to_world: np.ndarray | None, colour: np.ndarray | None) -> PosedViews:
    """``views`` seen through corrected cameras and with their colour transforms (N, 3, 4) undone (for baking)."""
    if cam_to_world is not None:
        views = dataclasses.replace(views, cam_to_world=cam_to_world)
    if colour is not None:
        views = dataclasses.replace(views, images=undo_colour(views.images, colour))
    return views
