"""The shapes world v2: one or two coloured shapes on a white 64×64 image, and a pixel judge that
reads them back.

An object is a shape (circle, square, triangle, star) of a colour (six hues far apart), a size
(small, large) at one of five places (left, right, top, bottom, center). A scene holds one object
anywhere, or two objects side by side (left/right) or one above the other (top/bottom). A fixed,
seeded ~20% of the single-object combinations and of the two-object colour/shape pairings are
held out: the embedded default model never trains on them and ShapesEval scores them apart
(docs/default-model.md). The words about scenes (prompts, questions, answers) live in
shapes_language.py; this module is pixels and attributes only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import cache
from itertools import combinations, product

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

SHAPES = ("circle", "square", "triangle", "star")
# Hues far apart in RGB, so a blurred or slightly shifted shade still has one nearest colour.
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 200, 0),
    "purple": (140, 40, 180),
    "orange": (250, 120, 0),
}
PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # the judge's reference colours, in COLORS order
POSITIONS = ("left", "right", "top", "bottom", "center")
SIZES = ("small", "large")
ATTRIBUTES = ("color", "shape", "position", "size")

# where each place's object is centred, as fractions of the side (x, y): on the 8-pixel grid of an
# 8×8-code VQ at 64 px, so an object draws the same codes wherever it is
ANCHORS = {"left": (0.25, 0.5), "right": (0.75, 0.5), "top": (0.5, 0.25), "bottom": (0.5, 0.75), "center": (0.5, 0.5)}
SIDE = {"small": 12 / 64, "large": 24 / 64}  # the shape's bounding box side, as a fraction of the image side
PAIRS = (("left", "right"), ("right", "left"), ("top", "bottom"), ("bottom", "top"))  # two objects' places
HELD_OUT_SHARE = 0.2
WORLD_SEED = 1234  # fixes which combinations are held out; changing it changes the world

# the judge: a pixel is ink when some channel is this far below white
INK_THRESHOLD = 60
MIN_OBJECT_SHARE = 0.006  # an object covers at least this share of the image (a small star: ~0.016)
MAX_STRAY_INK = 0.25  # ink outside the objects, as a share of the objects' ink, above which nothing is read
SMALL_LARGE_SIDE = 0.28  # bounding box side between the sizes (small 0.19, large 0.375)
MAX_OBJECT_SIDE = 0.5
SOLID_DISTANCE = 60  # RGB distance within which a pixel is a world colour rather than a blend with the page
MIN_SOLID = 0.45  # a blob's share of such pixels: VQ decodes ~1.0, renders blurred by radius 4 <= 0.4
MIN_SYMMETRY = 0.5  # overlap of a blob with its mirror image (intersection / union): scribbles have less
MIN_DOMINANCE = 0.6  # the main colour's share of the blob's solid pixels
MIN_FILL = 0.3  # pixels / bounding box; below this an ink blob is a smear, not a shape


@dataclass(frozen=True)
class Object:
    """One shape of one colour and size at one place."""

    color: str
    shape: str
    size: str
    position: str


@dataclass(frozen=True)
class Scene:
    """One object, or two at opposite places (left/right or top/bottom); the first is the one a
    prompt names first ("a red circle to the left of a blue square": the circle)."""

    objects: tuple[Object, ...]

    def __post_init__(self) -> None:
        check_scene(self)

    @classmethod
    def single(cls, color: str, shape: str, size: str, position: str) -> Scene:
        return cls((Object(color, shape, size, position),))

    @property
    def object(self) -> Object:
        """The object of a one-object scene."""
        if len(self.objects) != 1:
            raise ValueError(f"this scene has {len(self.objects)} objects, not one")
        return self.objects[0]

    def combination(self) -> tuple:
        """What the held-out split is drawn over: (colour, shape, size, position) for one object,
        the unordered pair of (colour, shape) for two."""
        if len(self.objects) == 1:
            o = self.objects[0]
            return (o.color, o.shape, o.size, o.position)
        return pairing(self.objects[0], self.objects[1])


def check_scene(scene: Scene) -> None:
    """A scene of this world: one object, or two distinct ones at one of PAIRS; attributes known."""
    if len(scene.objects) not in (1, 2):
        raise ValueError(f"a scene has 1 or 2 objects, got {len(scene.objects)}")
    for o in scene.objects:
        for name, value, options in (
            ("color", o.color, COLORS),
            ("shape", o.shape, SHAPES),
            ("size", o.size, SIZES),
            ("position", o.position, POSITIONS),
        ):
            if value not in options:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(options)}")
    if len(scene.objects) == 2:
        a, b = scene.objects
        if (a.position, b.position) not in PAIRS:
            raise ValueError(f"two objects stand left/right or top/bottom of each other, not {a.position}/{b.position}")
        if (a.color, a.shape) == (b.color, b.shape):
            raise ValueError("the two objects of a scene differ in colour or shape")


def pairing(a: Object, b: Object) -> tuple:
    """The unordered colour/shape pairing of two objects."""
    return tuple(sorted([(a.color, a.shape), (b.color, b.shape)]))


# ---------------------------------------------------------------- the split


@cache
def held_out() -> frozenset:
    """The held-out combinations: a seeded HELD_OUT_SHARE of the single-object (colour, shape,
    size, position) combinations and of the two-object colour/shape pairings."""
    rng = random.Random(WORLD_SEED)
    singles = list(product(COLORS, SHAPES, SIZES, POSITIONS))
    kinds = list(product(COLORS, SHAPES))
    pairs = [tuple(sorted(p)) for p in combinations(kinds, 2)]
    out = set()
    for items in (singles, pairs):
        rng.shuffle(items)
        out.update(items[: round(HELD_OUT_SHARE * len(items))])
    return frozenset(out)


def is_held_out(scene: Scene) -> bool:
    """Whether a scene is off limits to training: its combination is held out, or (two objects)
    one of its objects alone is a held-out single-object combination."""
    if scene.combination() in held_out():
        return True
    return len(scene.objects) == 2 and any(Scene((o,)).combination() in held_out() for o in scene.objects)


def single_scenes() -> list[Scene]:
    """Every one-object scene (240), in a fixed order."""
    return [Scene.single(*c) for c in product(COLORS, SHAPES, SIZES, POSITIONS)]


def random_scene(rng: random.Random, objects: int, held: bool | None = False) -> Scene:
    """A random scene of `objects` objects; `held` False: a training scene, True: a held-out one
    (for two objects: its pairing is held out), None: either."""
    while True:
        if objects == 1:
            scene = Scene.single(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(SIZES), rng.choice(POSITIONS))
        else:
            places = rng.choice(PAIRS)
            a, b = (Object(rng.choice(list(COLORS)), rng.choice(SHAPES), rng.choice(SIZES), place) for place in places)
            if (a.color, a.shape) == (b.color, b.shape):
                continue
            scene = Scene((a, b))
        if held is None:
            return scene
        if held and objects == 2:
            if scene.combination() in held_out():
                return scene
        elif is_held_out(scene) == held:
            return scene


def edits(scene: Scene) -> list[tuple[str, str, Scene]]:
    """Every single-attribute edit of a one-object scene as (attribute, new value, edited scene):
    recolour, change shape, resize, move."""
    o = scene.object
    options = {"color": COLORS, "shape": SHAPES, "size": SIZES, "position": POSITIONS}
    return [
        (attribute, value, Scene((replace(o, **{attribute: value}),)))
        for attribute, values in options.items()
        for value in values
        if value != getattr(o, attribute)
    ]


# ---------------------------------------------------------------- rendering


def _polygon(shape: str, cx: float, cy: float, side: float) -> list[tuple[float, float]] | None:
    """The outline of a triangle (apex up) or a five-pointed star filling a side×side box."""
    if shape == "triangle":
        h = side / 2
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "star":
        outer = side / (2 * np.sin(np.radians(72)))  # the star's width is 2·R·sin 72°
        inner = 0.45 * outer
        shift = outer * (1 - np.cos(np.radians(36))) / 2  # centre its box: it reaches R up, R·cos 36° down
        return [
            (
                cx + (outer if k % 2 == 0 else inner) * np.sin(np.radians(36 * k)),
                cy + shift - (outer if k % 2 == 0 else inner) * np.cos(np.radians(36 * k)),
            )
            for k in range(10)
        ]
    return None


def draw_object(draw: ImageDraw.ImageDraw, o: Object, size: int, fill=None, scale: float = 1.0, offset=(0.0, 0.0)):
    """Draw one object on a `size`² canvas (`scale` and `offset`, in pixels, let other renderers vary it)."""
    fx, fy = ANCHORS[o.position]
    cx, cy = fx * size + offset[0], fy * size + offset[1]
    side = SIDE[o.size] * size * scale
    fill = COLORS[o.color] if fill is None else fill
    points = _polygon(o.shape, cx, cy, side)
    if points is not None:
        draw.polygon(points, fill=fill)
        return
    box = (round(cx - side / 2), round(cy - side / 2), round(cx + side / 2) - 1, round(cy + side / 2) - 1)
    (draw.ellipse if o.shape == "circle" else draw.rectangle)(box, fill=fill)


def render(scene: Scene, size: int = 64) -> Image.Image:
    """The scene as a `size`² RGB image: the world's own renderer (exact colours, no anti-aliasing)."""
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        draw_object(draw, o, size)
    return img


# downsampling filters of smoothed training views (not Lanczos: render_other's), and the factors
# their side is drawn at before downsampling
SMOOTHING_FILTERS = (Image.Resampling.BOX, Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)
SMOOTHING_FACTORS = (2, 3)


def render_varied(
    scene: Scene,
    size: int,
    rng: random.Random,
    jitter: float = 0.04,
    shade: int = 30,
    scale: float = 0.2,
    factors: tuple[int, ...] = SMOOTHING_FACTORS,
) -> Image.Image:
    """A training view: each object moved by up to `jitter` of the side, its size ±`scale` and its
    colour ±`shade` per channel, on a white or light-toned page, drawn sharp or (half the time)
    smoothed: drawn at one of `factors` times the side and downsampled with a box, bilinear or
    bicubic filter; so that reading survives other renderers (render_other's Lanczos filter is never
    used in training)."""
    factor = rng.choice(factors) if rng.random() < 0.5 else 1
    side = factor * size
    page = tuple(rng.randint(226, 255) for _ in range(3)) if rng.random() < 0.5 else (255, 255, 255)
    img = Image.new("RGB", (side, side), page)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        fill = tuple(int(np.clip(v + rng.randint(-shade, shade), 0, 255)) for v in COLORS[o.color])
        offset = (rng.uniform(-jitter, jitter) * side, rng.uniform(-jitter, jitter) * side)
        draw_object(draw, o, side, fill=fill, scale=rng.uniform(1 - scale, 1 + scale), offset=offset)
    if factor == 1:
        return img
    return img.resize((size, size), rng.choice(SMOOTHING_FILTERS))


def render_other(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    """Another renderer, never used in training: anti-aliased (drawn at 4× and downsampled), an
    off-white page, objects 15% smaller or larger, shifted by up to 3% of the side and in shades
    up to 24 per channel away from the world's colours."""
    big = 4 * size
    page = tuple(rng.randint(236, 250) for _ in range(3))
    img = Image.new("RGB", (big, big), page)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        fill = tuple(int(np.clip(v + rng.randint(-24, 24), 0, 255)) for v in COLORS[o.color])
        offset = (rng.uniform(-0.03, 0.03) * big, rng.uniform(-0.03, 0.03) * big)
        draw_object(draw, o, big, fill=fill, scale=rng.choice([0.85, 1.15]), offset=offset)
    return img.resize((size, size), Image.Resampling.LANCZOS)


def no_shape_image(kind: str, size: int, rng: random.Random) -> Image.Image:
    """An image that holds no object of the world: "blank" (a plain page), "noise" (random pixels)
    or "photo" (smooth colour gradients and many soft blobs, like a photograph's clutter)."""
    if kind == "blank":
        return Image.new("RGB", (size, size), tuple([rng.randint(200, 255)] * 3))
    np_rng = np.random.default_rng(rng.randrange(2**32))
    if kind == "noise":
        return Image.fromarray(np_rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    if kind == "photo":
        y, x = np.mgrid[0:size, 0:size] / size
        corners = np_rng.integers(0, 256, (4, 3))
        base = (
            corners[0] * ((1 - x) * (1 - y))[..., None]
            + corners[1] * (x * (1 - y))[..., None]
            + corners[2] * ((1 - x) * y)[..., None]
            + corners[3] * (x * y)[..., None]
        )
        img = Image.fromarray(base.astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(rng.randint(8, 20)):
            x0, y0 = rng.uniform(-0.2, 1) * size, rng.uniform(-0.2, 1) * size
            w, h = rng.uniform(0.1, 0.6) * size, rng.uniform(0.1, 0.6) * size
            draw.ellipse((x0, y0, x0 + w, y0 + h), fill=tuple(rng.randint(0, 255) for _ in range(3)))
        return img
    raise ValueError(f"kind {kind!r} is not one of blank, noise, photo")


NO_SHAPE_KINDS = ("blank", "noise", "photo")


# ---------------------------------------------------------------- the judge


@dataclass(frozen=True)
class Reading:
    """What the judge reads in an image: its objects (empty where it finds no scene of the world)."""

    objects: tuple[Object, ...]
    note: str = ""  # why nothing was read, when nothing was

    @property
    def count(self) -> int:
        return len(self.objects)


def classify(image: Image.Image) -> Reading:
    """Read the objects of an image: ink (pixels far from white) split into connected blobs; every
    blob of at least MIN_OBJECT_SHARE of the image is an object whose colour is the main world colour
    of its solid pixels (near a world colour, not blended with the page), position the anchor nearest
    its centroid, size its bounding box side, and shape its fill (pixels / box: square ~1, circle
    ~0.8) or, for the thin ones, whether its box's bottom row is filled (a triangle's base) or not (a
    star's two points). Nothing is read (no objects) from more than two blobs, much stray ink, a
    blob too big, too thin, too sparse, too blurred or lopsided (every shape is mirror-symmetric):
    noise, smears and scribbles."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    height, width = rgb.shape[:2]
    side = max(height, width)
    ink = (255 - rgb).max(axis=-1) > INK_THRESHOLD
    if not ink.any():
        return Reading((), "no ink")
    labels, n = ndimage.label(ink, structure=np.ones((3, 3)))  # objects never touch: a blob is one object
    sizes = ndimage.sum_labels(ink, labels, range(1, n + 1))
    blobs = [labels == i + 1 for i in np.flatnonzero(sizes >= MIN_OBJECT_SHARE * height * width)]
    if not blobs:
        return Reading((), "no blob of an object's size")
    if len(blobs) > 2:
        return Reading((), f"{len(blobs)} blobs")
    stray = ink.sum() - sum(mask.sum() for mask in blobs)
    if stray > MAX_STRAY_INK * (ink.sum() - stray):
        return Reading((), "stray ink")
    objects = []
    for mask in blobs:
        found = _read_blob(mask, rgb[mask], side)
        if isinstance(found, str):
            return Reading((), found)
        objects.append(found)
    if len(objects) == 2 and objects[0].position == objects[1].position:
        return Reading((), "two blobs at one place")
    return Reading(tuple(objects))


def _read_blob(mask: np.ndarray, pixels: np.ndarray, side: int) -> Object | str:
    """One blob (its mask and its RGB pixels) as an object, or why it is not one."""
    distances = ((pixels[:, None, :] - PALETTE[None]) ** 2).sum(-1)
    solid = distances.min(-1) < SOLID_DISTANCE**2  # a world colour, not a blend of it with the page
    if solid.mean() < MIN_SOLID:
        return "a blurred blob"
    votes = np.bincount(distances[solid].argmin(-1), minlength=len(PALETTE))
    if votes.max() < MIN_DOMINANCE * solid.sum():
        return "a blob of mixed colours"
    color = list(COLORS)[votes.argmax()]
    ys, xs = np.nonzero(mask)
    w, h = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    extent = max(w, h) / side
    if extent > MAX_OBJECT_SIDE:
        return "a blob too big"
    if not 0.7 <= w / h <= 1.4:
        return "a blob too thin"
    fill = mask.sum() / (w * h)
    if fill < MIN_FILL:
        return "a sparse blob"
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    if (box & box[:, ::-1]).sum() < MIN_SYMMETRY * (box | box[:, ::-1]).sum():
        return "a lopsided blob"  # every shape of the world is mirror-symmetric left to right
    if fill > 0.88:
        shape = "square"
    elif fill > 0.66:
        shape = "circle"
    else:
        bottom = mask[ys.max() - max(1, h // 12) + 1 : ys.max() + 1, xs.min() : xs.max() + 1].any(axis=0).mean()
        shape = "triangle" if bottom > 0.6 else "star"
    cx, cy = (xs.mean() + 0.5) / mask.shape[1], (ys.mean() + 0.5) / mask.shape[0]
    position = min(ANCHORS, key=lambda p: (ANCHORS[p][0] - cx) ** 2 + (ANCHORS[p][1] - cy) ** 2)
    return Object(color, shape, "small" if extent < SMALL_LARGE_SIDE else "large", position)


def reads_as(reading: Reading, scene: Scene) -> bool:
    """Whether the judge read exactly the scene's objects (in any order)."""
    return same_objects(reading.objects, scene.objects)


def same_objects(a: tuple[Object, ...], b: tuple[Object, ...]) -> bool:
    """The same objects, in any order (a scene read from pixels or from words against the truth)."""
    return sorted(map(_key, a)) == sorted(map(_key, b))


def attributes_right(reading: Reading, scene: Scene) -> dict[str, bool]:
    """For a one-object scene: per attribute, whether the image's one object has it."""
    o = scene.object
    if reading.count != 1:
        return dict.fromkeys(ATTRIBUTES, False)
    return {a: getattr(reading.objects[0], a) == getattr(o, a) for a in ATTRIBUTES}


def _key(o: Object) -> tuple:
    return (o.color, o.shape, o.size, o.position)
