"""The config of each reconstruction stage, one dataclass per stage, and the checks of their values.

They live apart from the code they configure so that reading them costs no numpy, torch or trimesh: the command
line builds its options and ``--help`` from these types, and checks a whole config before any model loads or any
fitting starts. Each ``validate()`` raises :class:`ConfigValueError` naming the field, its value and the range it
must be in; ``img2mesh.config`` adds the section and where the value came from (a preset, ``--set``, an option).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from recon.errors import InputError

Format = Literal["glb", "obj", "ply"]
FORMATS: tuple[str, ...] = ("glb", "obj", "ply")

#: Camera distance of the Zero123++ views (see :mod:`recon.cameras`).
DEFAULT_RADIUS = 4.0

#: Fewest faces a mesh may be decimated to: below this the repair after decimation has too little left to close.
MIN_FACES = 200

#: Texture sides accepted: powers of two (what mip-mapping and block compression want), within what GPUs load.
TEXTURE_SIZES = tuple(2**k for k in range(6, 14))


class ConfigValueError(InputError):
    """A config value its stage cannot use: ``key`` (a field, or ``section.field`` once a section adds itself),
    the value, and what to do instead."""

    def __init__(self, key: str, value: Any, fix: str) -> None:
        self.key, self.value, self.fix = key, value, fix
        super().__init__(f"Config key {key!r} is {value!r}; {fix}.")


def check(ok: bool, key: str, value: Any, fix: str) -> None:
    """Raise :class:`ConfigValueError` unless ``ok``."""
    if not ok:
        raise ConfigValueError(key, value, fix)


def check_range(key: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    """``value`` within ``[lo, hi]`` (either end open when None)."""
    if lo is not None and hi is not None:
        check(lo <= value <= hi, key, value, f"use a value from {lo} to {hi}")
    elif lo is not None:
        check(value >= lo, key, value, f"use at least {lo}")
    elif hi is not None:
        check(value <= hi, key, value, f"use at most {hi}")


@dataclass
class ViewsConfig:
    """How a grid (or six view files) becomes posed views."""

    poses: Literal["v1.2", "v1.1"] = "v1.2"
    """Which Zero123++ pose table the views follow (v1.2: elevations +20/-10, fov 30; v1.1: +30/-20, fov 49.1)."""
    radius: float = DEFAULT_RADIUS
    """Camera distance from the origin (the object is assumed inside [-1, 1]^3)."""
    mask: Literal["auto", "background", "rembg", "normals"] = "auto"
    """How view masks are made when the views carry no alpha: "background", "rembg", "normals" or "auto".
    "background" separates the object from the flat background colour with no model; "rembg" runs rembg (its model
    file must already be on disk); "normals" takes the alpha of the normal ControlNet's maps; "auto" is "normals"
    when those maps exist, else "background"."""
    mask_threshold: float = 0.01
    """Smallest colour distance from the background that counts as object, raised when it is noisy.
    RGB in [0, 1], Euclidean."""
    mask_holes: bool = True
    """Also cut out enclosed regions of exactly the background colour (a mug handle's opening).
    Otherwise only background connected to the view's border is cut."""
    mask_min_area: float = 0.0005
    """Object specks and enclosed holes smaller than this share of the view's area are dropped / filled."""
    rembg_model: str = "u2net"
    """Model of the "rembg" mask method: a rembg model name whose file is already in rembg's model folder."""

    def validate(self) -> None:
        """Raise :class:`ConfigValueError` for the first value out of range."""
        check_range("radius", self.radius, 1.5, 100.0)
        check_range("mask_threshold", self.mask_threshold, 0.0, 1.0)
        check_range("mask_min_area", self.mask_min_area, 0.0, 0.5)


@dataclass
class ReconConfig:
    """Field optimisation."""

    image_size: int = 320
    """Side in pixels at which the views are fitted (they are area-resampled to it)."""
    bound: float = 1.1
    """Half-side of the world cube searched for the object (the views frame [-1, 1]³ at distance 4)."""
    hull_resolution: int = 128
    """Points per side of the visual-hull grid over the cube."""
    hull_min_views: int = 5
    """A point belongs to the hull when this many views see it inside their masks (5 of 6 forgives one bad mask)."""
    hull_dilation: float = 0.0
    """Pixels (at the views' size) every mask is grown by before the hull vote.
    So that a hull carved from views that are all slightly misregistered keeps their thin parts (the vote forgives
    only whole bad views); the fit carves what the dilation adds."""
    resolutions: tuple[int, ...] = (64, 128)
    """SDF grid points along the longest side of the hull's box, one entry per coarse-to-fine stage."""
    iterations: tuple[int, ...] = (250, 350)
    """Optimisation steps of each stage."""
    colour_resolution: int = 96
    """Colour grid points along the longest side (capped by the stage's SDF resolution): low, to average views."""
    rays: int = 8192
    """Rays per step."""
    samples: int = 96
    """Samples per ray within its hull interval."""
    colour_per_sample: bool = True
    """Read colour at every sample (full volume rendering) rather than once per ray at the surface.
    Full volume rendering's photo-consistency carves concavities; once per ray is cheaper, but the surface then
    barely moves away from the hull."""
    learning_rate: float = 0.01
    """Adam step of the SDF grid (world units per step) at the first stage, halved at each later stage."""
    colour_learning_rate: float = 0.05
    """Adam step of the colour logits."""
    sharpness: tuple[float, float] = (2.0, 4.0)
    """NeuS inverse width s at the start and the end, in units of 1/voxel of the first and of the last stage.
    The start sets how opaque a thin plate (a table top is about one voxel at 64³) renders at first; too low, and
    the fit keeps hull under it to reach the masks' full opacity."""
    mask_weight: float = 0.5
    """Weight of the opacity-vs-mask binary cross-entropy."""
    eikonal_weight: float = 0.05
    """Weight of the eikonal term (|∇f| = 1) near the surface."""
    smoothness_weight: float = 0.02
    """Weight of the squared-Laplacian term near the surface (falls to a tenth over each stage)."""
    colour_smoothness_weight: float = 0.01
    """Weight of the colour grid's total variation."""
    shading: Literal["lambertian", "none"] = "lambertian"
    """Colour model. "lambertian": the colour grid is albedo, shaded by one directional light (direction and ambient
    share learnt with the fields) through the SDF's normals, so shading is a cue for the shape; "none": a free,
    view-independent colour per point, which absorbs shading and leaves the shape to silhouettes and texture."""
    light_learning_rate: float = 0.01
    """Adam step of the light's direction and ambient share ("lambertian" shading)."""
    volume_weight: float = 0.05
    """Weight of the enclosed volume, a pressure that empties hull space the views leave undecided.
    As a share of the visual hull's volume; it targets the wedges under table tops and seats, seen only at grazing
    angles, and falls linearly to zero over the fit, since held to the end it thins flat plates until they tear."""
    area_weight: float = 0.05
    """Weight of the surface area, the minimal-surface prior that keeps what the pressure opens flat.
    As a share of the hull's area, falling to zero like ``volume_weight``; much more thins legs and rods."""
    normal_weight: float = 0.3
    """Weight of the normal term (1 − cos to the views' normal maps), used only when the views carry them.
    Bounded per ray, so that the generated maps' errors pull gently rather than dominate the photometric and mask
    terms."""
    camera_refinement: bool = False
    """Learn a small rotation and translation per view, held near its given pose; the texture is baked through them.
    Views misregistered against the fixed cameras are then pulled back rather than averaged into blur."""
    camera_stages: int = 0
    """Stages, from the first, in which the camera corrections are learnt; later ones keep them fixed (0: all).
    Learning them sends the gradient through every sample's position (more time per step); held fixed after a coarse
    first stage, views that were right keep its small spurious corrections (benchmarks/RESULTS.md)."""
    camera_warmup: float = 0.05
    """Share of all steps before the camera corrections unlock (first a rough shape to fit to)."""
    camera_learning_rate: float = 0.1
    """Adam step of the camera corrections, in pixels of the fitted image, falling to a tenth over the fit."""
    camera_weight: float = 0.0001
    """Weight of the mean squared camera correction (pixels²) that holds each view near its given pose."""
    registration: bool = True
    """Learn a smooth displacement field per view through which its pixels are read (a registration onto the fit).
    Views shifted, rotated, scaled or locally distorted by a few pixels then agree; the texture is baked through it."""
    registration_warmup: float = 0.3
    """Share of all steps before the displacement fields unlock. Unlocked early, they also bend clean views towards
    a shape that is still wrong (thin and recessed parts); the length penalty pulls those moves back."""
    registration_cells: int = 2
    """Nodes of each view's displacement field along a side (2 follows shift, rotation, scale and shear; more bend)."""
    registration_bend_cells: int = 3
    """Nodes along a side of a finer field added to each view's once the fields show that the views disagree
    (``registration_bend_above``); no more than ``registration_cells``: none. Such a field bends, and so follows the
    local inconsistency of generated views; on views that agree it would only bend them towards a shape still wrong."""
    registration_bend_above: float = 0.4
    """Root-mean-square displacement of the fields' nodes (pixels of the fitted image, the joint move excluded) from
    which the views count as disagreeing. Views that agree stay below 0.35 px (most near 0.03: the length penalty
    holds them at zero); views off by half the benchmark's mild imperfections move 0.45 px and more (RESULTS.md)."""
    registration_bend_delay: float = 0.1
    """Share of all steps, after the fields unlock, at which their displacement decides on the bend."""
    registration_blur: float = 2.0
    """Gaussian sigma (pixels of the fitted image) of the blurred views whose slopes steer the fields; 0: the sharp
    views'. A sharp edge pulls only within a pixel of it; the blur reaches as far as the views are off."""
    registration_learning_rate: float = 0.2
    """Adam step of the displacement fields, pixels of the fitted image, falling to a tenth over the fit. Smaller
    steps leave the fields behind the shape, which meanwhile takes up part of each view's error (RESULTS.md)."""
    registration_weight: float = 0.001
    """Weight of the fields' penalty (``registration_penalty``) that holds each view near where it was given."""
    registration_penalty: Literal["squared", "length"] = "length"
    """The fields' penalty: each node's squared displacement (pixels²) or its length (pixels), averaged. The length
    pulls a small displacement back as hard as a large one: the small moves that fields learn on views that were
    right go back to zero, while a view that is really off still moves."""
    colour_compensation: bool = False
    """Learn an affine colour transform per view (exposure, white balance), undone on the views before baking.
    It is applied to what the fit renders for the view, so the colour field holds what the views agree on."""
    colour_compensation_learning_rate: float = 0.02
    """Adam step of the colour transforms, falling to a tenth over the fit."""
    colour_compensation_weight: float = 0.1
    """Weight of the transforms' Charbonnier distance from identity.
    Robust, so that the views that agree set the colour and an outlier view takes its own transform."""
    device: str = "auto"
    """Device of the optimisation ("auto", "cuda", "cpu")."""
    cuda_graphs: bool = True
    """On CUDA, replay each optimisation step as one CUDA graph (several times faster).
    The step is ~100 small kernels that Python launches far slower than the GPU runs them; off runs it eagerly."""

    def validate(self) -> None:
        """Raise :class:`ConfigValueError` for the first value out of range."""
        check_range("image_size", self.image_size, 32, 2048)
        check_range("bound", self.bound, 0.1, 10.0)
        check_range("hull_resolution", self.hull_resolution, 16, 1024)
        check_range("hull_min_views", self.hull_min_views, 1, 6)
        check(len(self.resolutions) >= 1, "resolutions", list(self.resolutions), "give at least one stage, e.g. [64]")
        for resolution in self.resolutions:
            check_range("resolutions", resolution, 8, 1024)
        check(
            len(self.iterations) == len(self.resolutions),
            "iterations",
            list(self.iterations),
            f"give one count per stage of resolutions ({len(self.resolutions)})",
        )
        for steps in self.iterations:
            check_range("iterations", steps, 1)
        check_range("colour_resolution", self.colour_resolution, 4, 1024)
        check_range("rays", self.rays, 16)
        check_range("samples", self.samples, 4, 4096)
        for name in ("learning_rate", "colour_learning_rate", "light_learning_rate"):
            check(getattr(self, name) > 0, name, getattr(self, name), "use a positive step")
        check(len(self.sharpness) == 2, "sharpness", list(self.sharpness), "give a start and an end value, e.g. [2, 4]")
        for value in self.sharpness:
            check(value > 0, "sharpness", value, "use positive values")
        for name in (
            "mask_weight",
            "eikonal_weight",
            "smoothness_weight",
            "colour_smoothness_weight",
            "volume_weight",
            "area_weight",
            "normal_weight",
            "camera_weight",
            "colour_compensation_weight",
            "registration_weight",
            "registration_blur",
            "hull_dilation",
        ):
            check_range(name, getattr(self, name), 0.0)
        check_range("camera_warmup", self.camera_warmup, 0.0, 1.0)
        check_range("registration_warmup", self.registration_warmup, 0.0, 1.0)
        check_range("camera_stages", self.camera_stages, 0)
        check_range("registration_cells", self.registration_cells, 2, 64)
        check_range("registration_bend_cells", self.registration_bend_cells, 0, 64)
        check_range("registration_bend_above", self.registration_bend_above, 0.0)
        check_range("registration_bend_delay", self.registration_bend_delay, 0.0, 1.0)
        for name in ("camera_learning_rate", "colour_compensation_learning_rate", "registration_learning_rate"):
            check(getattr(self, name) > 0, name, getattr(self, name), "use a positive step")
        check(
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
            "device",
            self.device,
            "use auto, cuda, cuda:N or cpu",
        )


@dataclass
class MeshConfig:
    """Mesh extraction and clean-up."""

    faces: int = 20000
    """Target face count after decimation (meshes with fewer faces are kept as they are)."""
    smoothing: Literal["taubin", "laplacian", "none"] = "taubin"
    """Surface smoothing after marching cubes: Taubin keeps the volume, Laplacian shrinks a little."""
    smoothing_iterations: int = 10
    """Smoothing passes."""
    min_part_share: float = 0.02
    """Connected parts with less than this share of the largest part's area are dropped as floaters."""

    def validate(self) -> None:
        """Raise :class:`ConfigValueError` for the first value out of range."""
        check_range("faces", self.faces, MIN_FACES)
        check_range("smoothing_iterations", self.smoothing_iterations, 0, 1000)
        check_range("min_part_share", self.min_part_share, 0.0, 1.0)


@dataclass
class TextureConfig:
    """UV unwrap and baking."""

    size: int = 1024
    """Side of the square base-colour texture in pixels."""
    padding: int = 4
    """Texels of margin xatlas packs around each UV chart, so seams survive filtering and mip-mapping."""
    angle_power: float = 4.0
    """Exponent of the cosine view-angle weight: higher favours the most frontal view (sharper, more seams)."""
    depth_tolerance: float = 0.02
    """A texel counts as visible in a view when its depth is within this (world units) of the mesh's depth map."""
    mask_erosion: int = 2
    """Pixels the views' masks are shrunk by before baking, so silhouette pixels (mixed with background) are unused."""
    frontal_softness: float = 0.0
    """> 0: a texel takes its most frontal view, blended with views within about this much cosine; 0: an average.
    Inconsistent views then do not average into ghosts, and seams between views still blend."""
    gain_cells: int = 2
    """> 1: before blending, each view's colours are matched to the other views' where they overlap, by a smooth gain
    per colour channel on a grid of this many nodes a side over the view (generated views differ in exposure, white
    balance and shading, view by view; 2 nodes: a gain and a gradient across the view); 0: the views as they are."""
    unwrap_pieces: int = 16
    """Compact pieces of equal face count the mesh is cut into before xatlas charts it (1: whole).
    Chart growing costs superlinearly in a piece's faces, and xatlas charts pieces on parallel threads."""

    def validate(self) -> None:
        """Raise :class:`ConfigValueError` for the first value out of range."""
        check(self.size in TEXTURE_SIZES, "size", self.size, "use a power of two from 64 to 8192, e.g. 1024")
        check_range("padding", self.padding, 0, 64)
        check_range("angle_power", self.angle_power, 0.0)
        check(self.depth_tolerance > 0, "depth_tolerance", self.depth_tolerance, "use a positive distance")
        check_range("mask_erosion", self.mask_erosion, 0, 64)
        check_range("frontal_softness", self.frontal_softness, 0.0, 2.0)
        check(self.gain_cells == 0 or 2 <= self.gain_cells <= 16, "gain_cells", self.gain_cells, "use 0 or 2 to 16")
        check_range("unwrap_pieces", self.unwrap_pieces, 1, 1024)


@dataclass
class ExportConfig:
    """Mesh files written."""

    format: Format = "glb"
    """File format of the exported mesh (used when the output path has no known extension)."""
    height: float = 1.0
    """Height of the exported object in metres (its extent along glTF +Y); its origin is the centre of its base."""
    lods: tuple[int, ...] = ()
    """Face counts of levels of detail, finest first, each its own file (``mesh_lod0.glb``, ...) with its own UVs and
    texture (the texture side shrinks with the square root of the face count, to a power of two); empty: one mesh of
    ``mesh.faces`` faces."""
    normal_map: bool = False
    """Bake a tangent-space normal map of the fitted surface onto the mesh (glTF ``normalTexture``), which keeps the
    detail that decimation flattens as lighting detail."""
    normal_map_faces: int = 20000
    """Faces of the high-poly mesh the normal map is baked from: the fitted surface, smoothed as ``mesh`` says,
    decimated to this count (20000: the default preset's mesh size). More faces carry more of the fit's fine surface,
    its noise included."""
    colour: Literal["views", "albedo"] = "views"
    """Base colour texture: "views" (baked from the views, their lighting included: looks right unlit) or "albedo"
    (the same with the fit's learnt shading divided out: for an engine that lights the asset itself)."""

    def validate(self) -> None:
        """Raise :class:`ConfigValueError` for the first value out of range."""
        check(self.height > 0, "height", self.height, "use a positive height in metres, e.g. 1.5")
        check_range("normal_map_faces", self.normal_map_faces, MIN_FACES)
        for faces in self.lods:
            check_range("lods", faces, MIN_FACES)
        decreasing = all(a > b for a, b in zip(self.lods, self.lods[1:], strict=False))
        check(
            decreasing,
            "lods",
            list(self.lods),
            "list face counts finest first, strictly decreasing, e.g. 20000,5000,1000",
        )
