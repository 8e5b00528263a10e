"""The words of the shapes world (shapes.py): how prompts, questions, edits and draw requests are
phrased, the answers the model learns, and reading an answer back into attributes.

Every task has TRAIN phrasings (at least six) and EVAL phrasings that no training record uses:
ShapesEval asks with the latter, so a model that only memorised its sentences fails there. The
eval phrasings reorder words the training text uses, so a miss means the model did not learn the
structure, not that it never saw a word.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .shapes import COLORS, POSITIONS, SHAPES, SIZES, Object, Scene

WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "center": "in the center"}  # fmt: skip
RELATION = {("left", "right"): "to the left of", ("right", "left"): "to the right of", ("top", "bottom"): "above",
            ("bottom", "top"): "below"}  # fmt: skip
NO_SHAPE = "There is no shape in this image."
UNSIZED = 0.15  # share of one-object training prompts that leave the size out (the model then picks one)


def noun(o: Object) -> str:
    """ "small red circle"."""
    return f"{o.size} {o.color} {o.shape}"


def describe(scene: Scene) -> str:
    """The canonical description: "a small red circle on the left", "a small red circle to the left
    of a large blue square"."""
    if len(scene.objects) == 1:
        o = scene.object
        return f"a {noun(o)} {WHERE[o.position]}"
    a, b = scene.objects
    return f"a {noun(a)} {RELATION[a.position, b.position]} a {noun(b)}"


def reading_order(scene: Scene) -> Scene:
    """Two objects named left or top one first, as a page is read: an answer then has one wording
    per image (a prompt may name either first; a describing answer learned both and split its bets)."""
    if len(scene.objects) == 2 and scene.objects[0].position in ("right", "bottom"):
        return Scene(scene.objects[::-1])
    return scene


def sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def articles(text: str) -> str:
    """ "a orange star" -> "an orange star" (templates write "a"; only "orange" starts with a vowel)."""
    return re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)


# ---------------------------------------------------------------- phrasings
# {d}: the description; for one object also {n} (the noun), {w} (where), {c} {s} {z} (colour, shape, size)


@dataclass(frozen=True)
class Phrasings:
    train: tuple[str, ...]
    eval: tuple[str, ...]

    def pick(self, rng: random.Random, split: str) -> str:
        return rng.choice(self.train if split == "train" else self.eval)


GENERATE = Phrasings(
    train=("{d}", "draw {d}", "a picture of {d}", "an image of {d}", "please draw {d}", "show me {d}",
           "make a picture of {d}", "{D}"),
    eval=("please make an image of {d}", "show a picture of {d}", "please show me an image of {d}", "draw me {d}"),
)  # fmt: skip
GENERATE_ONE = Phrasings(  # one object only: attributes reordered
    train=("{W}, a {n}", "a {c} {s}, {z}, {w}", "a {z} {s} in {c} {w}"),
    eval=("{w}: a {n}", "a {n}, {w}", "{W} draw a {z} {c} {s}"),
)
DESCRIBE = Phrasings(  # many forms ("Tell me …", "… in the picture"), so that no form cues another answer
    train=("What is in this image?", "Describe the image.", "What do you see?", "What is this?",
           "Describe the picture.", "What does the picture show?", "Tell me what you see.",
           "Tell me what is in the picture.", "Tell me about the image.", "What is in the picture?",
           "What can you see in this image?", "Describe what you see in the image.",
           "What is shown in the picture?", "Please describe this image.", "Can you describe this image?",
           "Can you tell me what is in the picture?"),
    eval=("What does this image show?", "What do you see in the picture?", "Tell me what the image shows."),
)  # fmt: skip
COLOR_Q = Phrasings(
    train=("What colour is it?", "What colour is the shape?", "Which colour does it have?", "What color is it?",
           "Tell me the colour.", "What colour do you see?"),
    eval=("Which colour is the shape?", "What is the colour of the shape?"),
)  # fmt: skip
SHAPE_Q = Phrasings(
    train=("What shape is it?", "Which shape is this?", "What shape do you see?", "Tell me the shape.",
           "What kind of shape is it?", "Which shape is in the image?"),
    eval=("What shape is in the picture?", "What is the shape?"),
)  # fmt: skip
WHERE_Q = Phrasings(
    train=("Where is it?", "Where is the shape?", "Where is the shape in the image?", "Tell me where it is.",
           "In which part of the image is it?", "Where do you see it?"),
    eval=("Where is it in the picture?", "Which part of the image is it in?"),
)  # fmt: skip
SIZE_Q = Phrasings(
    train=("Is it small or large?", "How big is it?", "What size is it?", "Is the shape small or large?",
           "Tell me the size.", "Which size is the shape?"),
    eval=("What size is the shape?", "Is it large or small?"),
)  # fmt: skip
COUNT_Q = Phrasings(
    train=("How many shapes are there?", "How many shapes do you see?", "How many shapes are in the image?",
           "Count the shapes.", "How many objects are there?", "How many shapes does the picture show?"),
    eval=("How many shapes can you see?", "How many objects are in the picture?"),
)  # fmt: skip
EXISTS_Q = Phrasings(  # {n}: a noun phrase asked about
    train=("Is there a {n}?", "Do you see a {n}?", "Is there a {n} in the image?", "Does the picture show a {n}?",
           "Can you see a {n}?", "Is a {n} in the image?"),
    eval=("Is there a {n} in the picture?", "Do you see a {n} in the image?"),
)  # fmt: skip
FOLLOW_UP = {  # asked after a first answer about the same one-object image
    "color": Phrasings(("And what colour is it?", "And its colour?", "What colour is it then?",
                        "And which colour does it have?", "And the colour?", "Also, what colour is it?"),
                       ("And what is its colour?", "What about the colour?")),
    "shape": Phrasings(("And what shape is it?", "And its shape?", "What shape is it then?",
                        "And which shape is it?", "And the shape?", "Also, what shape is it?"),
                       ("And what is its shape?", "What about the shape?")),
    "position": Phrasings(("And where is it?", "And its place?", "Where is it then?",
                           "And where is the shape?", "And the place?", "Also, where is it?"),
                          ("And where is it in the image?", "What about the place?")),
    "size": Phrasings(("And how big is it?", "And its size?", "What size is it then?",
                       "And is it small or large?", "And the size?", "Also, how big is it?"),
                      ("And what is its size?", "What about the size?")),
}  # fmt: skip
QUESTIONS = {"color": COLOR_Q, "shape": SHAPE_Q, "position": WHERE_Q, "size": SIZE_Q}
EDIT = {  # {v}: the new value
    "color": Phrasings(("make it {v}", "change the colour to {v}", "paint it {v}", "make the shape {v}",
                        "colour it {v}", "now make it {v}"),
                       ("change its colour to {v}", "give it the colour {v}")),
    "shape": Phrasings(("make it a {v}", "turn it into a {v}", "change it to a {v}", "make the shape a {v}",
                        "now make it a {v}", "change the shape to a {v}"),
                       ("turn the shape into a {v}", "change its shape to a {v}")),
    "size": Phrasings(("make it {v}", "change the size to {v}", "make the shape {v}", "now make it {v}",
                       "resize it to {v}", "make it a {v} one"),
                      ("change its size to {v}", "resize the shape to {v}")),
    "position": Phrasings(("move it {w}", "put it {w}", "move the shape {w}", "now move it {w}",
                           "place it {w}", "move it over {w}", "move it to the {v}", "shift it to the {v}"),
                          ("put the shape {w}", "place the shape {w}")),
}  # fmt: skip
DRAW_ONE = Phrasings(  # {d}: the scene
    train=("Draw {d}, then describe it.", "Draw {d} and describe it.", "Show me {d}, then describe it.",
           "Please draw {d}, then tell me what it shows.", "Draw {d}. Then describe the picture.",
           "Make a picture of {d} and describe it."),
    eval=("Can you draw {d} and then describe it?", "Show me a picture of {d}, then tell me what it shows."),
)  # fmt: skip
DRAW_TWO = Phrasings(  # {d1}, {d2}: the scenes, drawn in turn
    train=("Draw {d1}, then {d2}.", "Draw {d1}, then draw {d2}.", "First draw {d1}, then {d2}.",
           "Draw two pictures: {d1} and {d2}.", "Show me {d1}, then {d2}.", "Please draw {d1} and then {d2}."),
    eval=("Can you draw {d1} and then {d2}?", "Make two pictures, first {d1}, then {d2}."),
)  # fmt: skip


def generation_prompt(scene: Scene, rng: random.Random, split: str = "train") -> str:
    """A text-to-image prompt for the scene in one of the split's phrasings."""
    d = describe(scene)
    phrasings = GENERATE
    if len(scene.objects) == 1 and rng.random() < 0.3:
        phrasings = GENERATE_ONE
    o = scene.objects[0]
    if split == "train" and len(scene.objects) == 1 and phrasings is GENERATE and rng.random() < UNSIZED:
        d = f"a {o.color} {o.shape} {WHERE[o.position]}"  # "a red circle on the left": either size is right
    w = WHERE[o.position]
    return articles(
        phrasings.pick(rng, split).format(
            d=d, D=sentence(d), n=noun(o), w=w, W=w[0].upper() + w[1:], c=o.color, s=o.shape, z=o.size
        )
    )


def exists_question(asked: Object, rng: random.Random, split: str = "train") -> str:
    """ "Is there a red star?" about an object named by some of its size, colour and shape (None: not named)."""
    words = " ".join(w for w in (asked.size, asked.color, asked.shape) if w)
    return articles(EXISTS_Q.pick(rng, split).format(n=words))


def edit_instruction(attribute: str, value: str, rng: random.Random, split: str = "train") -> str:
    """ "make it blue", "move it to the top"... in one of the split's phrasings."""
    return EDIT[attribute].pick(rng, split).format(v=value, w=WHERE.get(value, ""))


def draw_request(scenes: Sequence[Scene], rng: random.Random | None = None, split: str = "train") -> str:
    """An interleaved request: one scene drawn then described, or two drawn in turn (the first
    phrasing of the split without `rng`)."""
    if len(scenes) not in (1, 2):
        raise ValueError(f"a draw request names 1 or 2 scenes, got {len(scenes)}")
    phrasings = DRAW_ONE if len(scenes) == 1 else DRAW_TWO
    template = phrasings.pick(rng, split) if rng else (phrasings.train if split == "train" else phrasings.eval)[0]
    return template.format(d=describe(scenes[0]), d1=describe(scenes[0]), d2=describe(scenes[-1]))


def draw_answer(scenes: Sequence[Scene]) -> list[str | Scene]:
    """The answer to a draw request as text and scenes (the images) in order."""
    if len(scenes) == 1:
        return [" Here it is:", scenes[0], f"It shows {describe(scenes[0])}."]
    return [f" Here is {describe(scenes[0])}:", scenes[0], f"And here is {describe(scenes[1])}:", scenes[1]]


# ---------------------------------------------------------------- answers


def answer(kind: str, scene: Scene | None, asked: Object | None = None) -> str:
    """The answer the model learns to a question of `kind` ("describe", "count", "exists" about
    `asked`, or an attribute) about a scene (None: an image with no shape)."""
    if kind == "exists":
        # what is there first, then the verdict: the model reads the image in words it knows well
        # before it compares them with the question (a bare "Yes."/"No." was answered at chance)
        found = scene is not None and any(_matches(asked, o) for o in scene.objects)
        seen = "no shape" if scene is None else describe(reading_order(scene))
        return articles(f"I see {seen}, so {'yes' if found else 'no'}.")
    if scene is None:
        return "There are no shapes." if kind == "count" else NO_SHAPE
    if kind == "describe":
        return sentence(describe(reading_order(scene)))
    if kind == "count":
        return "There is one shape." if len(scene.objects) == 1 else "There are two shapes."
    o = scene.object
    return {
        "color": f"It is {o.color}.",
        "shape": f"It is a {o.shape}.",
        "position": f"It is {WHERE[o.position]}.",
        "size": f"It is {o.size}.",
    }[kind]


def verdict(answer: str) -> str | None:
    """The yes or no an answer to "is there a …" ends with ("I see a red circle, so yes.", "No."), else None."""
    words = re.findall(r"[a-z]+", answer.lower())
    return words[-1] if words and words[-1] in ("yes", "no") else None


def _matches(asked: Object, o: Object) -> bool:
    """An "is there a …" question names some of colour, shape and size (None: not named)."""
    return all(getattr(asked, a) in (None, getattr(o, a)) for a in ("color", "shape", "size"))


# ---------------------------------------------------------------- reading answers back

_MENTION = re.compile(
    rf"\b(?:({'|'.join(SIZES)})\s+)?({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})\b"
    rf"(?:\s+(to the left of|to the right of|above|below|{'|'.join(re.escape(w) for w in WHERE.values())}))?"
)
_RELATION_PLACES = {phrase: places for places, phrase in RELATION.items()}
_WHERE_PLACE = {phrase: place for place, phrase in WHERE.items()}
WORDS = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES, "position": POSITIONS}


def read_description(text: str) -> Scene | None:
    """The scene a description names ("A small red circle on the left.", "A large blue star above a
    small green square."), or None when it names none this world has."""
    mentions = list(_MENTION.finditer(text.lower()))
    try:
        if len(mentions) == 1:
            size, color, shape, where = mentions[0].groups()
            return Scene.single(color, shape, size, _WHERE_PLACE[where])
        if len(mentions) == 2:
            (size_a, color_a, shape_a, relation), (size_b, color_b, shape_b, _) = (m.groups() for m in mentions)
            place_a, place_b = _RELATION_PLACES[relation]
            return Scene((Object(color_a, shape_a, size_a, place_a), Object(color_b, shape_b, size_b, place_b)))
    except (KeyError, ValueError, TypeError):
        return None
    return None


def names_only(text: str, attribute: str, truth: str) -> bool:
    """Whether an answer names `truth` and no other value of the attribute."""
    words = set(re.findall(r"[a-z]+", text.lower()))
    return truth in words and not any(w in words for w in WORDS[attribute] if w != truth)
