#!/usr/bin/env python3
"""Generate a captioned image set of coloured shapes in spatial relations.

Every image holds two objects (a colour + a shape each) placed in one relation, and a
caption that says so: "a red circle left of a blue square". The point of the set is
binding: the test split comes in *twin families* of four images whose captions use the
very same words in a different binding --

    original         a red circle left of a blue square
    colours swapped  a blue circle left of a red square
    shapes swapped   a red square left of a blue circle
    places swapped   a blue square left of a red circle

-- so a model that treats a caption as a bag of words cannot tell them apart. Some
colour–shape combinations are held out of training entirely. A second test split,
``test_plain``, holds ordinary scenes with no twins beside them.

A family shares one phrasing (from the first thing or, flipped, from the second), so its
four captions hold the very same words. No test scene occurs twice or in training, so
every test caption has exactly one right image in an index built from all splits.

Training scenes may repeat (drawn again), so each training image is listed under *both*
phrasings: every image of a scene is then a right answer to every caption of it. With
one phrasing per image, another image of the same scene said the other way round would
count as a wrong answer to the reranker's training, and stage 1 ranks exactly those
images highest (see the README).

``--layout cells`` puts each thing inside one cell of a 4 x 4 grid of 16-pixel cells
(the demo CLIP's patches), instead of anywhere in its half of the image: each patch then
sees a whole shape, and the small CLIP learns shapes sooner (see the README).

A second data set, not tuned to: ``--style varied`` draws six shapes (a hexagon too),
holds out seven of the 48 colour–shape combinations, places things anywhere in their
half (they straddle patch cells), and says each scene in one of several phrasings ("a
red circle to the left of a blue square", "there is a red circle under ..."); train it
with ``train_clip.py --patch-size 8`` for an 8 x 8 region grid. A twin family still
shares one phrasing, so its four captions hold the very same words.

Output (DIR):
    images/{train,test_twins,test_plain}/NNNNN.png
    train.jsonl, test_twins.jsonl, test_plain.jsonl   {"image": "images/...", "caption": ...}
                                                       (train: two lines per image)
    meta.json                                          vocabulary, held-out combos, counts
"""

from __future__ import annotations

import argparse
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 80, 230),
    "yellow": (235, 215, 40), "purple": (140, 60, 190), "orange": (245, 140, 30),
    "white": (245, 245, 245), "black": (20, 20, 20),
}
SHAPES = ["circle", "square", "triangle", "cross", "diamond"]
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
HELD_OUT = [("purple", "triangle"), ("orange", "circle"), ("white", "cross")]
IMAGE_SIZE = 64
LAYOUT = ["free"]  # --layout

# --style varied: one more shape, more held-out combinations, several phrasings
VARIED_SHAPES = ["circle", "square", "triangle", "cross", "diamond", "hexagon"]
VARIED_HELD_OUT = [("purple", "triangle"), ("orange", "circle"), ("white", "cross"), ("green", "hexagon"),
                   ("red", "diamond"), ("yellow", "square"), ("black", "circle")]
WORDINGS = {  # how each relation may be said
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}
FRAMES = ("{a} {rel} {b}", "{a} is {rel} {b}", "there is {a} {rel} {b}", "{a} sits {rel} {b}")
PHRASINGS = ["one"]  # --style: "one" (the demo's) or "several"


@dataclass(frozen=True)
class Thing:
    colour: str
    shape: str

    def words(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """``first`` stands ``relation`` ``second`` (first is left of / above second)."""

    first: Thing
    relation: str  # "left of" or "above": the canonical direction
    second: Thing

    def caption(self, flip: bool = False, wording: int = 0) -> str:
        """Say it from the first thing ("left of", "above") or, flipped, from the second;
        ``wording`` picks a frame and a way to say the relation (``--style varied``)."""
        a, b, relation = (self.second, self.first, INVERSE[self.relation]) if flip else (
            self.first, self.second, self.relation)
        if PHRASINGS[0] == "one":
            return f"{a.words()} {relation} {b.words()}"
        frame = FRAMES[wording % len(FRAMES)]
        said = WORDINGS[relation][(wording // len(FRAMES)) % len(WORDINGS[relation])]
        return frame.format(a=a.words(), rel=said, b=b.words())

    def things(self) -> tuple[Thing, Thing]:
        return self.first, self.second


WORDING_COUNT = len(FRAMES) * 3


def draw_wording(rng: random.Random) -> int:
    """A wording for ``Scene.caption``; with one phrasing, 0 and no draw (so the demo's
    data stay as they were)."""
    return 0 if PHRASINGS[0] == "one" else rng.randrange(WORDING_COUNT)


def random_scene(rng: random.Random) -> Scene:
    while True:
        first = Thing(rng.choice(list(COLOURS)), rng.choice(SHAPES))
        second = Thing(rng.choice(list(COLOURS)), rng.choice(SHAPES))
        if first.colour != second.colour and first.shape != second.shape:
            return Scene(first, rng.choice(("left of", "above")), second)


def twins(scene: Scene) -> list[Scene]:
    """The scene and its three rebindings: colours, shapes, places swapped."""
    a, b = scene.first, scene.second
    return [
        scene,
        Scene(Thing(b.colour, a.shape), scene.relation, Thing(a.colour, b.shape)),
        Scene(Thing(a.colour, b.shape), scene.relation, Thing(b.colour, a.shape)),
        Scene(b, scene.relation, a),
    ]


def has_held_out(scene: Scene) -> bool:
    return any((t.colour, t.shape) in HELD_OUT for t in scene.things())


def draw_thing(draw: ImageDraw.ImageDraw, thing: Thing, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, y1 = box
    fill = COLOURS[thing.colour]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if thing.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif thing.shape == "square":
        draw.rectangle(box, fill=fill)
    elif thing.shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif thing.shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif thing.shape == "hexagon":
        rx, ry = (x1 - x0) / 2, (y1 - y0) / 2
        draw.polygon([(cx + rx * math.cos(math.pi / 3 * k), cy + ry * math.sin(math.pi / 3 * k)) for k in range(6)],
                     fill=fill)
    elif thing.shape == "cross":
        third_w, third_h = (x1 - x0) / 3, (y1 - y0) / 3
        draw.rectangle((x0, y0 + third_h, x1, y1 - third_h), fill=fill)
        draw.rectangle((x0 + third_w, y0, x1 - third_w, y1), fill=fill)


CELL = 16  # --layout cells: a 4 x 4 grid of 16-pixel cells, one thing per cell


def render_in_cells(scene: Scene, rng: random.Random, draw: ImageDraw.ImageDraw) -> list[dict]:
    """Each thing inside one cell of a 4 x 4 grid (jittered size and place within it):
    the first in the first two columns (rows) and the second in the last two."""
    cells = IMAGE_SIZE // CELL
    near, far = rng.randrange(cells // 2), rng.randrange(cells // 2, cells)
    across = [rng.randrange(cells), rng.randrange(cells)]
    if scene.relation == "left of":
        places = [(near, across[0]), (far, across[1])]  # (column, row)
    else:  # above
        places = [(across[0], near), (across[1], far)]
    objects = []
    for thing, (column, row) in zip(scene.things(), places):
        size = rng.randint(11, 14)
        x = column * CELL + rng.randint(1, CELL - size - 1)
        y = row * CELL + rng.randint(1, CELL - size - 1)
        draw_thing(draw, thing, (x, y, x + size, y + size))
        objects.append({"colour": thing.colour, "shape": thing.shape, "cell": row * cells + column})
    return objects


def render(scene: Scene, rng: random.Random) -> tuple[Image.Image, list[dict] | None]:
    """Place the two things in the scene's relation, with jittered size and position.
    With ``--layout cells`` also returns each thing's colour, shape and cell (row-major)."""
    grey = rng.randint(90, 160)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    if LAYOUT[0] == "cells":
        return image, render_in_cells(scene, rng, draw)
    sizes = [rng.randint(14, 22), rng.randint(14, 22)]
    margin = 2
    if scene.relation == "left of":
        x_first = rng.randint(margin, IMAGE_SIZE // 2 - sizes[0])
        x_second = rng.randint(max(IMAGE_SIZE // 2 + 2, x_first + sizes[0] + 4), IMAGE_SIZE - sizes[1] - margin)
        y_first = rng.randint(margin, IMAGE_SIZE - sizes[0] - margin)
        y_second = rng.randint(margin, IMAGE_SIZE - sizes[1] - margin)
    else:  # above
        y_first = rng.randint(margin, IMAGE_SIZE // 2 - sizes[0])
        y_second = rng.randint(max(IMAGE_SIZE // 2 + 2, y_first + sizes[0] + 4), IMAGE_SIZE - sizes[1] - margin)
        x_first = rng.randint(margin, IMAGE_SIZE - sizes[0] - margin)
        x_second = rng.randint(margin, IMAGE_SIZE - sizes[1] - margin)
    draw_thing(draw, scene.first, (x_first, y_first, x_first + sizes[0], y_first + sizes[0]))
    draw_thing(draw, scene.second, (x_second, y_second, x_second + sizes[1], y_second + sizes[1]))
    return image, None


def generate(out: Path, train: int, twin_families: int, plain: int, seed: int) -> dict:
    rng = random.Random(seed)
    used: set[Scene] = set()  # test scenes: each appears once in the whole set
    # per split: (scene, flip, wording, family number or None)
    splits: dict[str, list[tuple[Scene, bool, int, int | None]]] = {"test_twins": [], "test_plain": [], "train": []}

    while len(splits["test_twins"]) < 4 * twin_families:
        family = twins(random_scene(rng))
        if len(set(family)) == 4 and not set(family) & used:
            flip, wording = rng.random() < 0.5, draw_wording(rng)
            number = len(splits["test_twins"]) // 4
            splits["test_twins"].extend((scene, flip, wording, number) for scene in family)
            used |= set(family)
    while len(splits["test_plain"]) < plain:
        scene = random_scene(rng)
        if scene not in used:
            splits["test_plain"].append((scene, rng.random() < 0.5, draw_wording(rng), None))
            used.add(scene)
    while len(splits["train"]) < train:
        # half of training comes in twin families too, so binding has hard negatives
        group = twins(random_scene(rng)) if rng.random() < 0.5 else [random_scene(rng)]
        group = [s for s in group if not has_held_out(s) and s not in used]
        flip, wording = rng.random() < 0.5, draw_wording(rng)
        splits["train"].extend((scene, flip, wording, None) for scene in group[: train - len(splits["train"])])

    counts = {}
    for split, scenes in splits.items():
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as pairs:
            for number, (scene, flip, wording, family) in enumerate(scenes):
                relative = f"images/{split}/{number:05d}.png"
                image, objects = render(scene, rng)
                image.save(out / relative)
                # training images are said both ways (the second in another wording)
                phrasings = [(flip, wording), (not flip, draw_wording(rng))] if split == "train" \
                    else [(flip, wording)]
                for phrasing, said in phrasings:
                    record: dict = {"image": relative, "caption": scene.caption(phrasing, said)}
                    if family is not None:
                        record["family"] = family
                        record["held_out"] = has_held_out(scene)
                    if objects is not None:
                        record["objects"] = objects
                    pairs.write(json.dumps(record) + "\n")
        counts[split] = len(scenes)
    meta = {
        "colours": list(COLOURS), "shapes": list(SHAPES), "relations": list(RELATIONS),
        "held_out": [" ".join(pair) for pair in HELD_OUT], "layout": LAYOUT[0], "counts": counts, "seed": seed,
        "image_size": IMAGE_SIZE, "phrasings": PHRASINGS[0],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--train", type=int, default=6000, help="training images")
    parser.add_argument("--twin-families", type=int, default=100, help="test families of 4 twins")
    parser.add_argument("--plain", type=int, default=200, help="test images without twins")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=("free", "cells"), default="free",
                        help="free: anywhere in their halves; cells: each thing inside one cell of a 4 x 4 grid")
    parser.add_argument("--style", choices=("demo", "varied"), default="demo",
                        help="varied: six shapes, seven held-out combinations, several phrasings (see above)")
    args = parser.parse_args()
    LAYOUT[0] = args.layout
    if args.style == "varied":
        SHAPES[:], HELD_OUT[:], PHRASINGS[0] = VARIED_SHAPES, VARIED_HELD_OUT, "several"
        if args.layout == "cells":
            parser.error("--style varied places things freely; leave out --layout cells")
    meta = generate(args.out, args.train, args.twin_families, args.plain, args.seed)
    print(json.dumps(meta["counts"]))


if __name__ == "__main__":
    main()
