"""Procedural face renderer behind the synthetic benchmark.

An `Identity` is a fixed set of facial parameters (geometry of face, eyes, brows, nose,
mouth and ears, colours, hair, beard, and a fine per-identity mark field). A `Nuisance`
is what changes from one photo of that person to the next (pose, scale, shift,
expression, glasses, occlusion, illumination, blur, noise, background). `render_face`
draws one image and returns it with the true projected 5-point landmarks.

All geometry lives in a 112-unit canonical frame whose neutral, frontal, unscaled face
puts its eyes, nose tip and mouth corners near the ArcFace template; the image-level
similarity transform (roll, scale, shift, output size) is applied to every point before
drawing, so the returned landmarks are exactly where the features were drawn.
Yaw is approximated on a head-shaped depth field: a surface point moves horizontally
by `(x - c)(cos yaw - 1) + z sin yaw`, the silhouette only widens or narrows.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from facekd.data.align import ARCFACE_DST

CANONICAL_SIZE = 112.0
CENTRE_X = 56.0
# The neutral frontal face puts its features on the ArcFace template (formats.md 3.3).
TEMPLATE_EYE_Y = float(ARCFACE_DST[:2, 1].mean())
TEMPLATE_EYE_HALF_GAP = float(ARCFACE_DST[1, 0] - ARCFACE_DST[0, 0]) / 2.0
TEMPLATE_NOSE_Y = float(ARCFACE_DST[2, 1])
TEMPLATE_MOUTH_Y = float(ARCFACE_DST[3:, 1].mean())
TEMPLATE_MOUTH_HALF_WIDTH = float(ARCFACE_DST[4, 0] - ARCFACE_DST[3, 0]) / 2.0
# Where the similarity transform pivots: midway between the eyes and the mouth.
PIVOT = np.array([56.0, 72.0])
# Fixed-point bits for sub-pixel polygon vertices in cv2 drawing calls.
SUBPIXEL_BITS = 4
SUBPIXEL_SCALE = float(1 << SUBPIXEL_BITS)

HAIR_COLOURS = {
    "black": (30.0, 25.0, 22.0),
    "brown": (95.0, 60.0, 35.0),
    "blond": (215.0, 180.0, 115.0),
    "gray": (165.0, 163.0, 160.0),
    "red": (160.0, 70.0, 35.0),
}
HAIR_COLOUR_PROBABILITIES = (0.35, 0.3, 0.15, 0.1, 0.1)
EYE_COLOURS = {
    "brown": (90.0, 55.0, 30.0),
    "blue": (70.0, 120.0, 175.0),
    "green": (80.0, 120.0, 70.0),
    "gray": (120.0, 125.0, 130.0),
}
EYE_COLOUR_PROBABILITIES = (0.55, 0.2, 0.15, 0.1)
HAIR_STYLES = ("bald", "short", "long")
HAIR_STYLE_PROBABILITIES = (0.12, 0.5, 0.38)

IDENTITY_ATTRIBUTES = (
    "Male", "Pale_Skin", "Dark_Skin", "Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair",
    "Red_Hair", "Bald", "Bangs", "Long_Hair", "Receding_Hairline", "Big_Nose", "Pointy_Nose",
    "Big_Lips", "Narrow_Eyes", "Wide_Set_Eyes", "Blue_Eyes", "Bushy_Eyebrows",
    "Arched_Eyebrows", "Oval_Face", "Wide_Jaw", "Beard", "Mustache",
)  # fmt: skip
NUISANCE_ATTRIBUTES = (
    "Smiling", "Mouth_Slightly_Open", "Eyes_Half_Closed", "Eyeglasses", "Sunglasses",
    "Occluded", "Blurry", "Noisy", "Turned_Left", "Turned_Right", "Head_Tilted",
    "Dim_Lighting", "Bright_Lighting", "Side_Lit", "Colour_Cast", "Cluttered_Background",
)  # fmt: skip
ATTRIBUTE_NAMES = IDENTITY_ATTRIBUTES + NUISANCE_ATTRIBUTES


@dataclass(frozen=True)
class Identity:
    """One synthetic person; lengths are in canonical 112-frame units, colours RGB 0..255."""

    male: bool
    face_half_width: float
    forehead_height: float
    face_centre_y: float
    chin_y: float
    jaw_width: float  # jaw half-width at the chin as a fraction of the cheek half-width
    eye_half_gap: float
    eye_y: float
    eye_half_width: float
    eye_half_height: float
    eye_tilt: float  # radians, outer corner up when positive
    iris_radius: float
    brow_gap: float
    brow_thickness: float
    brow_arch: float
    brow_length: float
    nose_tip_y: float
    nose_half_width: float
    nose_protrusion: float
    mouth_y: float
    mouth_half_width: float
    upper_lip: float
    lower_lip: float
    ear_size: float
    skin: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    lips: np.ndarray
    hair_style: str
    hair_colour: str
    eye_colour: str
    bangs: bool
    hairline_y: float
    beard: float  # density in [0, 1]; 0 means no beard
    mustache: float
    marks: np.ndarray  # (K, 4): u, v (face-relative position), radius, darkness
    blush: float


@dataclass(frozen=True)
class Nuisance:
    """What varies between two images of one identity."""

    yaw: float  # radians; positive turns the features towards +x
    roll: float  # radians
    scale: float
    shift: np.ndarray  # canonical units
    smile: float  # 0..1
    mouth_open: float  # 0..1
    eye_open: float  # 0..1 of the identity's eye height
    gaze: np.ndarray  # iris offset in eye half-widths
    glasses: str  # "none" | "clear" | "dark"
    glasses_colour: np.ndarray
    occluder: bool
    light_angle: float
    light_strength: float
    gain: float
    cast: np.ndarray  # per-channel multipliers
    blur_sigma: float  # canonical units; 0 means no blur
    noise_std: float
    clutter: int  # number of background shapes
    background: np.ndarray
    clothing: np.ndarray


def _choice(rng: np.random.Generator, options: dict | tuple, probabilities: tuple) -> str:
    keys = tuple(options)
    return keys[int(rng.choice(len(keys), p=probabilities))]


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity's parameters."""
    male = bool(rng.random() < 0.5)
    u = rng.uniform(-1.0, 1.0, size=24)
    face_half_width = 38.0 + 3.5 * u[0] + (1.5 if male else -1.0)
    eye_y = TEMPLATE_EYE_Y + 2.5 * u[1]
    eye_half_gap = TEMPLATE_EYE_HALF_GAP + 1.8 * u[2]
    nose_tip_y = TEMPLATE_NOSE_Y + 2.8 * u[3]
    mouth_y = TEMPLATE_MOUTH_Y + 2.8 * u[4]
    skin_tone = rng.uniform(0.0, 1.0)  # 0 = darkest, 1 = palest
    skin = np.array([95.0, 60.0, 40.0]) + skin_tone * np.array([150.0, 150.0, 140.0])
    skin = skin + rng.uniform(-12.0, 12.0, size=3)
    hair_colour = _choice(rng, HAIR_COLOURS, HAIR_COLOUR_PROBABILITIES)
    eye_colour = _choice(rng, EYE_COLOURS, EYE_COLOUR_PROBABILITIES)
    hair_style = _choice(rng, HAIR_STYLES, HAIR_STYLE_PROBABILITIES)
    if not male and hair_style == "bald":
        hair_style = "long"
    freckled = rng.random() < 0.25
    n_marks = int(rng.integers(25, 55) if freckled else rng.integers(4, 14))
    marks = np.column_stack(
        [
            rng.uniform(-0.85, 0.85, n_marks),
            rng.uniform(-0.75, 0.95, n_marks),
            rng.uniform(0.5, 1.1, n_marks) if freckled else rng.uniform(0.6, 1.8, n_marks),
            rng.uniform(0.15, 0.5, n_marks),
        ]
    )
    beard = float(rng.uniform(0.35, 1.0)) if male and rng.random() < 0.35 else 0.0
    mustache = float(rng.uniform(0.4, 1.0)) if male and rng.random() < 0.35 else 0.0
    lips = skin * np.array([0.85, 0.55, 0.55]) + rng.uniform(-10.0, 10.0, 3)
    if not male and rng.random() < 0.4:
        lips = np.array([175.0, 40.0, 60.0]) + rng.uniform(-25.0, 25.0, 3)
    return Identity(
        male=male,
        face_half_width=float(face_half_width),
        forehead_height=float(46.0 + 4.0 * u[5]),
        face_centre_y=float(eye_y + 14.0),
        chin_y=float(mouth_y + 17.0 + 3.5 * u[6] + (1.5 if male else 0.0)),
        jaw_width=float(0.62 + 0.12 * u[7] + (0.06 if male else -0.04)),
        eye_half_gap=float(eye_half_gap),
        eye_y=float(eye_y),
        eye_half_width=float(6.8 + 1.2 * u[8]),
        eye_half_height=float(3.2 + 0.9 * u[9]),
        eye_tilt=float(0.12 * u[10]),
        iris_radius=float(2.9 + 0.5 * u[11]),
        brow_gap=float(8.5 + 2.0 * u[12]),
        brow_thickness=float(2.2 + 0.9 * u[13] + (0.5 if male else -0.3)),
        brow_arch=float(1.8 + 1.6 * u[14]),
        brow_length=float(9.5 + 1.8 * u[15]),
        nose_tip_y=float(nose_tip_y),
        nose_half_width=float(6.0 + 1.6 * u[16]),
        nose_protrusion=float(9.0 + 3.0 * u[17]),
        mouth_y=float(mouth_y),
        mouth_half_width=float(TEMPLATE_MOUTH_HALF_WIDTH + 2.2 * u[18]),
        upper_lip=float(2.6 + 0.9 * u[19]),
        lower_lip=float(3.4 + 1.1 * u[20]),
        ear_size=float(8.0 + 1.5 * u[21]),
        skin=np.clip(skin, 0.0, 255.0),
        hair=np.clip(np.array(HAIR_COLOURS[hair_colour]) + rng.uniform(-15.0, 15.0, 3), 0.0, 255.0),
        iris=np.clip(np.array(EYE_COLOURS[eye_colour]) + rng.uniform(-15.0, 15.0, 3), 0.0, 255.0),
        lips=np.clip(lips, 0.0, 255.0),
        hair_style=hair_style,
        hair_colour=hair_colour,
        eye_colour=eye_colour,
        bangs=bool(hair_style != "bald" and rng.random() < 0.25),
        hairline_y=float(eye_y - 24.0 + 4.0 * u[22] - (6.0 if male and rng.random() < 0.3 else 0.0)),
        beard=beard,
        mustache=mustache,
        marks=marks,
        blush=float(max(0.0, u[23]) * 0.25),
    )


def identity_attributes(identity: Identity) -> np.ndarray:
    """The identity-related binary attributes, in `IDENTITY_ATTRIBUTES` order."""
    i = identity
    skin_brightness = float(i.skin.mean())
    values = (
        i.male,
        skin_brightness > 190.0,
        skin_brightness < 115.0,
        i.hair_colour == "black",
        i.hair_colour == "brown",
        i.hair_colour == "blond",
        i.hair_colour == "gray",
        i.hair_colour == "red",
        i.hair_style == "bald",
        i.bangs,
        i.hair_style == "long",
        i.hair_style != "bald" and i.hairline_y < i.eye_y - 26.0,
        i.nose_half_width > 6.8,
        i.nose_protrusion > 10.5 and i.nose_half_width < 6.0,
        i.upper_lip + i.lower_lip > 6.8,
        i.eye_half_height < 2.8,
        i.eye_half_gap > 18.5,
        i.eye_colour == "blue",
        i.brow_thickness > 2.8,
        i.brow_arch > 2.6,
        (i.chin_y - i.eye_y) / i.face_half_width > 1.55,
        i.jaw_width > 0.7,
        i.beard > 0.0,
        i.mustache > 0.0,
    )
    return np.array(values, dtype=bool)


def sample_nuisance(rng: np.random.Generator, difficulty: float) -> Nuisance:
    """Draw one image's nuisance; `difficulty` in [0, 1] scales every nuisance range."""
    d = difficulty
    r = rng.uniform(-1.0, 1.0, size=8)
    glasses_draw = rng.random()
    glasses_p = 0.08 + 0.15 * d
    glasses = "clear" if glasses_draw < glasses_p else "dark" if glasses_draw < glasses_p * 1.4 else "none"
    blurred = rng.random() < 0.15 + 0.35 * d
    return Nuisance(
        yaw=float(np.deg2rad(rng.normal(0.0, 6.0 + 16.0 * d))),
        roll=float(np.deg2rad(rng.normal(0.0, 2.0 + 7.0 * d))),
        scale=float(np.exp(r[0] * (0.03 + 0.1 * d))),
        shift=r[1:3] * (1.0 + 5.0 * d),
        smile=float(rng.random() ** 1.5 if rng.random() < 0.5 else 0.0),
        mouth_open=float(rng.random() if rng.random() < 0.3 else 0.0),
        eye_open=float(1.0 - (rng.random() * 0.7 if rng.random() < 0.2 else 0.0)),
        gaze=r[3:5] * np.array([0.25, 0.1]),
        glasses=glasses,
        glasses_colour=rng.uniform(0.0, 120.0, 3),
        occluder=bool(rng.random() < 0.05 + 0.25 * d),
        light_angle=float(rng.uniform(0.0, 2.0 * np.pi)),
        light_strength=float(rng.uniform(0.0, 0.15 + 0.45 * d)),
        gain=float(np.exp(r[5] * (0.1 + 0.35 * d))),
        cast=np.exp(rng.uniform(-1.0, 1.0, 3) * (0.03 + 0.12 * d)),
        blur_sigma=float(rng.uniform(0.4, 0.6 + 1.8 * d)) if blurred else 0.0,
        noise_std=float(rng.uniform(1.0, 2.0 + 10.0 * d)),
        clutter=int(rng.integers(0, 4 + int(12 * d))),
        background=rng.uniform(20.0, 235.0, 3),
        clothing=rng.uniform(10.0, 245.0, 3),
    )


def nuisance_attributes(nuisance: Nuisance, difficulty: float) -> np.ndarray:
    """The identity-unrelated binary attributes, in `NUISANCE_ATTRIBUTES` order.

    Continuous nuisances are thresholded at a fixed fraction of their range at this
    difficulty, so every attribute keeps both classes at any difficulty.
    """
    n, d = nuisance, difficulty
    yaw_sd = np.deg2rad(6.0 + 16.0 * d)
    values = (
        n.smile > 0.3,
        n.mouth_open > 0.3,
        n.eye_open < 0.65,
        n.glasses == "clear",
        n.glasses == "dark",
        n.occluder,
        n.blur_sigma > 0.0,
        n.noise_std > 1.0 + 0.6 * (1.0 + 10.0 * d),
        n.yaw < -yaw_sd,
        n.yaw > yaw_sd,
        abs(n.roll) > np.deg2rad(2.0 + 7.0 * d),
        n.gain < np.exp(-0.5 * (0.1 + 0.35 * d)),
        n.gain > np.exp(0.5 * (0.1 + 0.35 * d)),
        n.light_strength > 0.6 * (0.15 + 0.45 * d),
        float(np.abs(np.log(n.cast)).max()) > 0.6 * (0.03 + 0.12 * d),
        n.clutter >= 3,
    )
    return np.array(values, dtype=bool)


_ARC = np.linspace(-1.0, 1.0, 13)
_ARC2 = _ARC**2
_BULGE = np.sqrt(1.0 - _ARC2)
_CIRCLE = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
_COS, _SIN = np.cos(_CIRCLE), np.sin(_CIRCLE)
# Sum of two uniform bytes minus 255 is triangular noise with this standard deviation.
_TRIANGULAR_STD = float(np.sqrt(2.0 * (256.0**2 - 1.0) / 12.0))

Points = tuple[np.ndarray, np.ndarray]  # canonical x and y coordinates of a polygon

# How a point moves with yaw (see the module docstring).
SURFACE = 0  # on the face: depth from the head shape plus an extra protrusion
SILHOUETTE = 1  # on the head's outline: scaled about the centre line only
FIXED_DEPTH = 2  # at a given absolute depth (ears, behind the silhouette plane)

FILL, LINE, CLOSED_LINE, DOTS = "fill", "line", "closed_line", "dots"


def _closed(top: Points, bottom: Points) -> Points:
    """The polygon that runs along `top` and back along `bottom`."""
    return np.concatenate([top[0], bottom[0][::-1]]), np.concatenate([top[1], bottom[1][::-1]])


def _ellipse(cx: float, cy: float, ax: float, ay: float) -> Points:
    return cx + ax * _COS, cy + ay * _SIN


def _lips(i: Identity, n: Nuisance) -> tuple[Points, Points, Points]:
    """Upper lip, lower lip and the open-mouth cavity as canonical polygons."""
    x = CENTRE_X + _ARC * i.mouth_half_width * (1.0 + 0.08 * n.smile)
    line = i.mouth_y - 3.0 * n.smile * _ARC2  # a smile lifts the corners, not the centre
    half_gap = 2.5 * n.mouth_open * _BULGE
    bow = 0.8 * np.exp(-((_ARC / 0.18) ** 2)) * _BULGE
    upper_bottom = line - half_gap
    lower_top = line + half_gap
    upper = _closed((x, upper_bottom - i.upper_lip * _BULGE + bow), (x, upper_bottom))
    lower = _closed((x, lower_top), (x, lower_top + i.lower_lip * _BULGE))
    cavity = _closed((x, upper_bottom), (x, lower_top))
    return upper, lower, cavity


class _Sketch:
    """Shapes in canonical coordinates, in painting order, projected together in one pass.

    Projecting every vertex of an image at once keeps the per-image numpy overhead small.
    """

    def __init__(self) -> None:
        self.xs: list[np.ndarray] = []
        self.ys: list[np.ndarray] = []
        self.depths: list[np.ndarray] = []
        self.modes: list[int] = []
        self.counts: list[int] = []
        self.strokes: list[tuple[str, object, object]] = []

    def add(self, kind: str, points: Points, colour: object, *, mode: int = SURFACE,
            depth: float | np.ndarray = 0.0, width: object = 0) -> None:  # fmt: skip
        x, y = points
        count = x.shape[0]
        self.xs.append(x)
        self.ys.append(y if isinstance(y, np.ndarray) else np.full(count, y))
        self.depths.append(depth if isinstance(depth, np.ndarray) else np.full(count, depth))
        self.modes.append(mode)
        self.counts.append(x.shape[0])
        self.strokes.append((kind, colour, width))


class FaceRenderer:
    """Draws identities under nuisances at one output size."""

    def __init__(self, size: int = 112) -> None:
        self.size = size
        self.unit = size / CANONICAL_SIZE
        grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
        self._grid_x = grid[None, :]
        self._grid_y = grid[:, None]

    # ----------------------------------------------------------------- projection
    def project(self, i: Identity, n: Nuisance, x: np.ndarray, y: np.ndarray, depth: np.ndarray,
                mode: np.ndarray) -> np.ndarray:  # fmt: skip
        """Canonical points to (N, 2) output pixels: yaw on the head, then roll, scale, shift, size."""
        cos_yaw, sin_yaw = np.cos(n.yaw), np.sin(n.yaw)
        head_half_width = i.face_half_width * 1.05
        head_depth = 0.8 * i.face_half_width
        silhouette = np.sqrt(cos_yaw**2 + (head_depth / head_half_width * sin_yaw) ** 2)
        dx = x - CENTRE_X
        surface_depth = head_depth * np.sqrt(np.maximum(1.0 - (dx / head_half_width) ** 2, 0.0)) + depth
        turned = dx * cos_yaw + np.where(mode == SURFACE, surface_depth, depth) * sin_yaw
        yawed_x = CENTRE_X + np.where(mode == SILHOUETTE, dx * silhouette, turned)
        k = n.scale * self.unit
        cos_r, sin_r = np.cos(n.roll) * k, np.sin(n.roll) * k
        px, py = PIVOT
        rel_x, rel_y = yawed_x - px, y - py
        out = np.empty((x.shape[0], 2))
        out[:, 0] = cos_r * rel_x - sin_r * rel_y + (px + n.shift[0]) * self.unit
        out[:, 1] = sin_r * rel_x + cos_r * rel_y + (py + n.shift[1]) * self.unit
        return out

    def landmarks(self, i: Identity, n: Nuisance) -> np.ndarray:
        """The five landmarks (eyes, nose tip, mouth corners) in output pixel coordinates, (5, 2)."""
        corner = i.mouth_half_width * (1.0 + 0.08 * n.smile)
        corner_y = i.mouth_y - 3.0 * n.smile
        x = CENTRE_X + np.array([-i.eye_half_gap, i.eye_half_gap, 0.0, -corner, corner])
        y = np.array([i.eye_y, i.eye_y, i.nose_tip_y, corner_y, corner_y])
        depth = np.array([0.0, 0.0, i.nose_protrusion, 0.0, 0.0])
        return self.project(i, n, x, y, depth, np.full(5, SURFACE)).astype(np.float32)

    # ----------------------------------------------------------------- face parts
    def _head_outline(self, i: Identity, grow: float = 0.0) -> Points:
        """Canonical face outline: an upper half-ellipse over a jaw that narrows to the chin."""
        upper = _SIN > 0
        below = np.clip(-_SIN, 0.0, 1.0)
        taper = np.where(upper, 1.0, 1.0 - (1.0 - i.jaw_width) * below**1.6)
        x = CENTRE_X + (i.face_half_width + grow) * _COS * taper
        height = np.where(upper, i.forehead_height + grow, i.chin_y - i.face_centre_y + grow)
        return x, i.face_centre_y - height * _SIN

    def _body(self, sketch: _Sketch, i: Identity, n: Nuisance) -> None:
        """Long hair behind the head, neck and shoulders, ears, and the face itself."""
        if i.hair_style == "long":
            x, y = self._head_outline(i, grow=5.0)
            lower = y > i.face_centre_y
            widened = np.clip(CENTRE_X + (x - CENTRE_X) * 1.25 / max(i.jaw_width, 0.5), CENTRE_X - 55.0, CENTRE_X + 55.0)
            sketch.add(FILL, (np.where(lower, widened, x), np.where(lower, i.chin_y + 25.0, y)), i.hair * 0.85,
                       mode=SILHOUETTE)  # fmt: skip
        neck_w = i.face_half_width * 0.55
        neck_x = CENTRE_X + np.array([-neck_w, neck_w, neck_w, -neck_w])
        neck_y = np.array([i.face_centre_y, i.face_centre_y, i.chin_y + 18.0, i.chin_y + 18.0])
        sketch.add(FILL, (neck_x, neck_y), i.skin * 0.8, mode=SILHOUETTE)
        shoulders_x = CENTRE_X + np.array([-70.0, -60.0, 60.0, 70.0])
        shoulders_y = np.array([160.0, i.chin_y + 16.0, i.chin_y + 16.0, 160.0])
        sketch.add(FILL, (shoulders_x, shoulders_y), n.clothing, mode=SILHOUETTE)
        ear_y = 0.5 * (i.eye_y + i.nose_tip_y)
        for side in (-1.0, 1.0):
            ear = _ellipse(CENTRE_X + side * (i.face_half_width + 1.0), ear_y, i.ear_size * 0.45, i.ear_size)
            sketch.add(FILL, ear, i.skin * 0.9, mode=FIXED_DEPTH, depth=-0.3 * i.face_half_width)
        sketch.add(FILL, self._head_outline(i), i.skin, mode=SILHOUETTE)

    def _skin_detail(self, sketch: _Sketch, i: Identity) -> None:
        """Cheek blush and the identity's fixed field of marks (freckles, moles)."""
        if i.blush > 0:
            blush_colour = i.skin * (1.0 - i.blush) + np.array([220.0, 90.0, 90.0]) * i.blush
            for side in (-1.0, 1.0):
                sketch.add(FILL, _ellipse(CENTRE_X + side * (i.eye_half_gap + 3.0), i.nose_tip_y - 1.0, 6.0, 4.0),
                           blush_colour)  # fmt: skip
        u, v, radius, darkness = i.marks.T
        lower_extent = (i.chin_y - i.face_centre_y) * 0.9
        centres = (CENTRE_X + u * i.face_half_width * 0.9,
                   i.face_centre_y + v * np.where(v < 0, i.forehead_height * 0.8, lower_extent))  # fmt: skip
        radii = np.rint(np.maximum(radius * self.unit, 0.75) * SUBPIXEL_SCALE).astype(int).tolist()
        colours = i.skin * (1.0 - darkness[:, None]) + np.array([70.0, 40.0, 25.0]) * darkness[:, None]
        sketch.add(DOTS, centres, colours.tolist(), width=radii)

    def _facial_hair(self, sketch: _Sketch, i: Identity, n: Nuisance) -> None:
        if i.beard > 0:
            jaw_x, jaw_y = self._head_outline(i, grow=0.5)
            keep = jaw_y > i.nose_tip_y + 2.0
            jaw_x, jaw_y = jaw_x[keep], jaw_y[keep]
            order = np.argsort(np.arctan2(jaw_y - i.face_centre_y, jaw_x - CENTRE_X))  # right to left
            inner_x = CENTRE_X + _ARC * (i.mouth_half_width + 2.0)
            inner_y = i.mouth_y + 2.0 + i.lower_lip + 2.0 * n.mouth_open * _BULGE - 3.0 * _ARC2
            beard = (np.concatenate([jaw_x[order], inner_x]), np.concatenate([jaw_y[order], inner_y]))
            sketch.add(FILL, beard, i.skin * (1.0 - i.beard) + i.hair * i.beard)
        if i.mustache > 0:
            x = CENTRE_X + _ARC * (i.mouth_half_width + 1.0)
            top = i.nose_tip_y + 4.0 + 2.0 * _ARC2
            bottom = i.mouth_y - i.upper_lip * _BULGE - 0.5 + 2.5 * _ARC2
            sketch.add(FILL, _closed((x, top), (x, bottom)), i.skin * (1.0 - i.mustache) + i.hair * i.mustache)

    def _hair_top(self, sketch: _Sketch, i: Identity) -> None:
        """The hair cap: the head outline above the face, down to the hairline or a fringe."""
        if i.hair_style == "bald":
            return
        x, y = self._head_outline(i, grow=3.5 if i.hair_style == "long" else 2.0)
        top = y < i.face_centre_y - 6.0
        order = np.argsort(x[top])
        hairline_x = CENTRE_X + _ARC[::-1] * (i.face_half_width + 1.0)
        if i.bangs:
            brow_top = i.eye_y - i.brow_gap
            hairline_y = np.minimum(brow_top - 3.0 + 1.5 * np.cos(_ARC * 9.0), brow_top - 2.0 + 20.0 * _ARC2**2)
        else:
            hairline_y = i.hairline_y + 10.0 * _ARC2
        # The cap's outer edge follows the silhouette, its hairline lies on the face.
        cap_x = np.concatenate([x[top][order], hairline_x])
        cap_y = np.concatenate([y[top][order], hairline_y])
        modes = np.concatenate([np.full(order.shape[0], SILHOUETTE), np.full(_ARC.shape[0], SURFACE)])
        sketch.add(FILL, (cap_x, cap_y), i.hair, mode=-1, depth=modes)

    def _brows(self, sketch: _Sketch, i: Identity) -> None:
        colour = i.hair * (0.6 if i.hair_colour == "gray" else 0.7)
        half = 0.5 * i.brow_thickness * (1.0 - 0.45 * _ARC2 - 0.2 * _ARC)
        for side in (-1.0, 1.0):
            x = CENTRE_X + side * (i.eye_half_gap + 1.0 + _ARC * i.brow_length)
            y = i.eye_y - i.brow_gap - i.brow_arch * (1.0 - _ARC2) - 1.2 * _ARC
            sketch.add(FILL, _closed((x, y - half), (x, y + half)), colour)

    def _eyes(self, sketch: _Sketch, i: Identity, n: Nuisance) -> None:
        w = i.eye_half_width
        h_up = i.eye_half_height * n.eye_open
        h_lo = i.eye_half_height * (0.55 + 0.45 * n.eye_open)
        u = _ARC * w
        upper_v = -h_up * _BULGE
        lower_v = h_lo * (1.0 - _ARC2)
        # The iris and pupil are clipped to the lids in the eye's own frame.
        iris_u = _COS * i.iris_radius + n.gaze[0] * w
        rel = np.clip(iris_u / w, -1.0, 1.0)
        iris_v = np.clip(_SIN * i.iris_radius + n.gaze[1] * w, -h_up * np.sqrt(1.0 - rel**2), h_lo * (1.0 - rel**2))
        pupil_u = _COS * i.iris_radius * 0.45 + n.gaze[0] * w
        pupil_v = np.clip(iris_v * 0.45, -h_up, h_lo)
        sclera = _closed((u, upper_v), (u, lower_v))
        parts = ((FILL, sclera, [235.0, 232.0, 225.0], 0), (FILL, (iris_u, iris_v), i.iris, 0),
                 (FILL, (pupil_u, pupil_v), [15.0, 12.0, 12.0], 0), (LINE, (u, upper_v), [40.0, 28.0, 25.0], 1.2))  # fmt: skip
        for side in (-1.0, 1.0):
            tilt = -side * i.eye_tilt  # the outer corner rises on both eyes
            cos_t, sin_t = np.cos(tilt), np.sin(tilt)
            cx, cy = CENTRE_X + side * i.eye_half_gap, i.eye_y
            for kind, (pu, pv), colour, width in parts:
                placed = (cx + cos_t * pu - sin_t * pv, cy + sin_t * pu + cos_t * pv)
                sketch.add(kind, placed, colour, width=width)

    def _nose(self, sketch: _Sketch, i: Identity) -> None:
        shadow = i.skin * 0.78
        tip, w, depth = i.nose_tip_y, i.nose_half_width, i.nose_protrusion
        bridge = (CENTRE_X - np.array([2.5, w * 0.55, w]), np.array([i.eye_y + 3.0, tip - 4.0, tip + 0.5]))
        sketch.add(LINE, bridge, shadow, depth=np.array([0.2, 0.6, 0.5]) * depth, width=1.0)
        base = (CENTRE_X + _ARC * w, tip + 1.5 + 1.2 * _ARC2)
        sketch.add(LINE, base, shadow, depth=depth * (1.0 - 0.6 * _ARC2), width=1.0)
        for side in (-1.0, 1.0):
            sketch.add(FILL, _ellipse(CENTRE_X + side * w * 0.5, tip + 1.8, w * 0.3, 1.1), i.skin * 0.45, depth=0.5 * depth)

    def _mouth(self, sketch: _Sketch, i: Identity, n: Nuisance) -> None:
        upper, lower, cavity = _lips(i, n)
        if n.mouth_open > 0.05:
            sketch.add(FILL, cavity, [60.0, 20.0, 25.0])
        sketch.add(FILL, upper, i.lips * 0.92)
        sketch.add(FILL, lower, i.lips)

    def _glasses(self, sketch: _Sketch, i: Identity, n: Nuisance) -> None:
        if n.glasses == "none":
            return
        for side in (-1.0, 1.0):
            lens = _ellipse(CENTRE_X + side * i.eye_half_gap, i.eye_y + 0.5, i.eye_half_width + 4.0, 7.5)
            if n.glasses == "dark":
                sketch.add(FILL, lens, n.glasses_colour * 0.3)
            sketch.add(CLOSED_LINE, lens, n.glasses_colour, width=1.3)
        inner = i.eye_half_gap - i.eye_half_width - 4.0
        bridge = (CENTRE_X + np.array([-inner, 0.0, inner]), i.eye_y - np.array([1.0, 2.5, 1.0]))
        sketch.add(LINE, bridge, n.glasses_colour, depth=2.0, width=1.3)

    # ----------------------------------------------------------------- pixels
    def _background(self, image: np.ndarray, n: Nuisance, rng: np.random.Generator) -> None:
        image[:] = n.background.astype(np.uint8)
        s = self.size
        kinds = rng.integers(3, size=n.clutter).tolist()
        ends = rng.uniform(-0.1 * s, 1.1 * s, (n.clutter, 4)).astype(int).tolist()
        colours = rng.uniform(0.0, 255.0, (n.clutter, 3)).tolist()
        extents = rng.uniform(0.0, 1.0, n.clutter).tolist()
        for kind, (x0, y0, x1, y1), colour, extent in zip(kinds, ends, colours, extents):
            if kind == 0:
                cv2.rectangle(image, (x0, y0), (x1, y1), colour, -1)
            elif kind == 1:
                cv2.circle(image, (x0, y0), int((0.03 + 0.22 * extent) * s), colour, -1)
            else:
                cv2.line(image, (x0, y0), (x1, y1), colour, max(1, int((0.01 + 0.04 * extent) * s)))

    def _paint(self, image: np.ndarray, sketch: _Sketch, i: Identity, n: Nuisance) -> None:
        """Project every vertex of the sketch at once, then draw its strokes in order."""
        counts = np.array(sketch.counts)
        modes = np.repeat(np.array(sketch.modes), counts)
        depths = np.concatenate(sketch.depths)
        mixed = modes < 0  # a stroke whose depth column carries per-vertex modes
        modes = np.where(mixed, depths, modes).astype(int)
        depths = np.where(mixed, 0.0, depths)
        points = self.project(i, n, np.concatenate(sketch.xs), np.concatenate(sketch.ys), depths, modes)
        fixed = np.rint(points * SUBPIXEL_SCALE).astype(np.int32)
        ends = np.cumsum(counts).tolist()
        start = 0
        for (kind, colour, width), end in zip(sketch.strokes, ends):
            vertices = fixed[start:end]
            start = end
            colour = colour.tolist() if isinstance(colour, np.ndarray) else colour
            if kind == FILL:
                cv2.fillPoly(image, [vertices], colour, cv2.LINE_AA, SUBPIXEL_BITS)
            elif kind == DOTS:
                for centre, radius, dot_colour in zip(vertices.tolist(), width, colour):
                    cv2.circle(image, centre, radius, dot_colour, -1, cv2.LINE_AA, SUBPIXEL_BITS)
            else:
                thickness = max(1, int(round(width * self.unit)))
                cv2.polylines(image, [vertices], kind == CLOSED_LINE, colour, thickness, cv2.LINE_AA, SUBPIXEL_BITS)

    def _draw_occluder(self, image: np.ndarray, rng: np.random.Generator) -> None:
        """A random rectangle or ellipse in front of the face (a hand, a cup, a sticker)."""
        s = self.size
        cx, cy = rng.uniform(0.2 * s, 0.8 * s, 2).tolist()
        ax, ay = rng.uniform(0.1 * s, 0.22 * s, 2).tolist()
        colour = rng.uniform(0.0, 255.0, 3).tolist()
        angle = float(rng.uniform(0.0, 180.0))
        if rng.random() < 0.5:
            box = cv2.boxPoints(((cx, cy), (2.0 * ax, ay), angle))
            cv2.fillPoly(image, [np.rint(box).astype(np.int32)], colour, cv2.LINE_AA)
        else:
            cv2.ellipse(image, (int(cx), int(cy)), (int(ax), int(ay)), angle, 0.0, 360.0, colour, -1, cv2.LINE_AA)

    def _photograph(self, image: np.ndarray, n: Nuisance, rng: np.random.Generator) -> np.ndarray:
        """Illumination (direction, gain, colour cast), blur and sensor noise."""
        ramp = np.cos(n.light_angle) * self._grid_x + np.sin(n.light_angle) * self._grid_y
        shading = ((1.0 + n.light_strength * ramp) * n.gain).astype(np.float32)
        light = shading[:, :, None] * n.cast.astype(np.float32)
        lit = cv2.multiply(image, light, dtype=cv2.CV_32F)
        if n.blur_sigma > 0:
            lit = cv2.GaussianBlur(lit, (0, 0), n.blur_sigma * self.unit)
        # Triangular noise from random bytes: close to Gaussian and several times cheaper to draw.
        pairs = np.frombuffer(rng.bytes(2 * image.size), dtype=np.uint8).reshape(2, *image.shape)
        scale = n.noise_std / _TRIANGULAR_STD
        lit = cv2.scaleAdd(cv2.add(pairs[0], pairs[1], dtype=cv2.CV_32F), scale, lit)
        lit -= np.float32(255.0 * scale)
        return np.clip(lit, 0.0, 255.0, out=lit).astype(np.uint8)

    def render(self, i: Identity, n: Nuisance, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw one image; returns (uint8 HxWx3 RGB, float32 (5, 2) landmarks in pixels)."""
        image = np.empty((self.size, self.size, 3), dtype=np.uint8)
        self._background(image, n, rng)
        sketch = _Sketch()
        self._body(sketch, i, n)
        self._skin_detail(sketch, i)
        self._facial_hair(sketch, i, n)
        self._hair_top(sketch, i)
        self._brows(sketch, i)
        self._eyes(sketch, i, n)
        self._nose(sketch, i)
        self._mouth(sketch, i, n)
        self._glasses(sketch, i, n)
        self._paint(image, sketch, i, n)
        if n.occluder:
            self._draw_occluder(image, rng)
        return self._photograph(image, n, rng), self.landmarks(i, n)
