"""Negatives for training the fusion scorer, mined from the index itself.

Caption → image: each caption's stage-1 neighbours (top ``depth``) that are not one of
its images are its hard negatives (``mine_examples``); each batch draws its candidates
from them (``sample_candidates``). Image → text: each caption's image gets wrong texts,
half of them the caption with two content words swapped (``swapped_variants``: the same
words in another binding, exactly what one vector per text cannot tell apart), half its
image's stage-1 nearest captions that are not its own (``mine_text_negatives``). The
caption objective's swaps (``train-reranker --swaps``) trade only words of one kind, as
the captions themselves tell them apart (``WordKinds``): "a red cube left of a blue ball"
→ "a blue cube left of a red ball", never "a cube red ...".
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from ..errors import VtsearchError
from ..progress import Progress
from .pairs import ResolvedPairs

if TYPE_CHECKING:
    from ..encoder import Encoder
    from ..index import Index

ENCODE_BATCH = 256  # texts per encoder call
SEARCH_BATCH = 1024  # captions per stage-1 search

STOPWORDS = frozenset("a an the of and or to in on at with by is are its it this that".split())


@dataclass(frozen=True, eq=False)
class Examples:
    """Per caption: its token states, its stage-1 neighbours that are wrong answers, and
    what is needed to score any candidate at stage 1."""

    tokens: list[torch.Tensor]  # N × (T, Dt) the caption's token states
    ids: list[torch.Tensor]  # N × (T,) their token ids
    positives: np.ndarray  # (N,) the caption's image
    neighbours: list[np.ndarray]  # N × stage-1 ranked wrong answers
    right: list[set[int]]  # N × the caption's right answers (``right_answers``)
    caption_vectors: np.ndarray  # (N, D)
    image_ids: np.ndarray  # (M,) sorted ids of every indexed image
    image_vectors: np.ndarray  # (M, D) their stage-1 vectors

    def stage1(self, rows: Sequence[int], candidates: np.ndarray) -> np.ndarray:
        """(B, C) stage-1 similarities of candidate ids for caption rows."""
        vectors = self.image_vectors[np.searchsorted(self.image_ids, candidates)]  # (B, C, D)
        return np.einsum("bd,bcd->bc", self.caption_vectors[list(rows)], vectors).astype(np.float32)

    def positive_vectors(self) -> np.ndarray:
        """(N, D) the stage-1 vector of each caption's image."""
        return self.image_vectors[np.searchsorted(self.image_ids, self.positives)]


def mine_examples(index: "Index", resolved: ResolvedPairs, depth: int, progress: Progress,
                  rows: Sequence[int] | None = None) -> Examples:
    """Each caption's token states, and the stage-1 neighbours (top ``depth``) that are
    not a right answer of the captions in ``rows`` (all when None; the others get none)."""
    right = right_answers(resolved.captions, resolved.image_ids)
    chunks = list(index.embeddings())
    image_ids = np.concatenate([ids for ids, _ in chunks])
    image_vectors = np.concatenate([vectors for _, vectors in chunks])
    tokens, ids, caption_vectors = _encode_captions(index.encoder, resolved.captions, progress)
    wrong = [right[caption] for caption in resolved.captions]
    order = np.argsort(image_ids)
    rows = range(len(wrong)) if rows is None else rows
    neighbours = [np.empty(0, dtype=np.int64)] * len(wrong)
    for row, found in zip(rows, _wrong_neighbours(index, caption_vectors[list(rows)], [wrong[r] for r in rows],
                                                  depth)):
        neighbours[row] = found
    return Examples(tokens, ids, np.asarray(resolved.image_ids, dtype=np.int64), neighbours, wrong,
                    caption_vectors, image_ids[order], image_vectors[order])


def right_answers(captions: Sequence[str], image_ids: Sequence[int]) -> dict[str, set[int]]:
    """Caption → its right answers, which are never its negatives: the images it
    describes, and those that share another caption with one of them. Two images
    one caption describes show one scene, so the other phrasings of either describe both
    (a generator's repeated scenes, a photo set's duplicates): ranking them below the
    caption's own image would teach the scorer, and its fitted w, to tell apart what
    cannot be told apart."""
    described: dict[str, set[int]] = defaultdict(set)  # caption → the images it is written for
    phrasings: dict[int, set[str]] = defaultdict(set)  # image → its captions
    for caption, image_id in zip(captions, image_ids):
        described[caption].add(image_id)
        phrasings[image_id].add(caption)
    return {caption: set().union(*(described[other] for image in images for other in phrasings[image]))
            for caption, images in described.items()}


def _encode_captions(encoder: "Encoder", captions: list[str],
                     progress: Progress) -> tuple[list[torch.Tensor], list[torch.Tensor], np.ndarray]:
    """Token states (kept as fp16: 100,000 captions of ViT-B-32 are about 2.7 GB so), token
    ids and (N, D) unit vectors of ``captions``, each distinct caption encoded once."""
    unique = list(dict.fromkeys(captions))
    states: dict[str, tuple[torch.Tensor, torch.Tensor, np.ndarray]] = {}
    for start in range(0, len(unique), ENCODE_BATCH):
        chunk = unique[start:start + ENCODE_BATCH]
        features = encoder.encode_text_features(chunk)
        states.update(zip(chunk, zip([row.half() for row in features.tokens], features.ids, features.vectors)))
        progress.advance(len(chunk))
    progress.advance(len(captions) - len(unique))
    rows = [states[caption] for caption in captions]
    return [row[0] for row in rows], [row[1] for row in rows], np.stack([row[2] for row in rows])


def _wrong_neighbours(index: "Index", caption_vectors: np.ndarray, right: list[set[int]],
                      depth: int) -> list[np.ndarray]:
    """Per caption: its top ``depth`` stage-1 hits, in order, less its right answers."""
    neighbours = []
    for start in range(0, len(caption_vectors), SEARCH_BATCH):
        hits = index.neighbours(caption_vectors[start:start + SEARCH_BATCH], depth)
        for offset, row in enumerate(hits):
            wrong = right[start + offset]
            neighbours.append(np.array([i for i, _ in row if i not in wrong], dtype=np.int64))
    return neighbours


def sample_candidates(examples: Examples, rows: Sequence[int], negatives: int,
                      rng: np.random.Generator | None) -> np.ndarray:
    """(B, 1 + K) candidate ids, the positive first.

    With ``rng`` (training) the negatives mix three kinds: the hardest stage-1 neighbours
    (same words, other binding: they teach binding), neighbours drawn from deeper in the
    shortlist, and random images of the index (other colours and things: they teach the
    grounding that binding is built on). Half are the hardest: with hard negatives alone
    the scorer learns nothing (the same words give no signal for which word goes with
    which region), measured with scripts/probe_binding.py. Without ``rng`` (validation)
    they are the top stage-1 neighbours in order: with enough of them, a realistic
    shortlist.
    """
    candidates = np.empty((len(rows), negatives + 1), dtype=np.int64)
    for slot, row in enumerate(rows):
        pool = examples.neighbours[row]
        if rng is None:
            picks = list(pool[:negatives])
        else:
            hardest = (negatives + 1) // 2
            deeper = (negatives - hardest) // 2
            picks = list(pool[:hardest])
            rest = pool[hardest:]
            if len(rest):
                picks += rng.choice(rest, size=min(deeper, len(rest)), replace=False).tolist()
        _fill_with_random_images(examples, row, picks, negatives, rng)
        candidates[slot] = [examples.positives[row], *picks]
    return candidates


def _fill_with_random_images(examples: Examples, row: int, picks: list[int], negatives: int,
                             rng: np.random.Generator | None) -> None:
    """Top ``picks`` up to ``negatives`` with random wrong images; they may repeat on an index
    of at most ``negatives`` images, or once distinct ones are hard to find.

    Without ``rng`` (validation) the draws come from a generator seeded by the row, so each
    row's candidates depend on nothing else.
    """
    draw = rng or np.random.default_rng(row)
    count = len(examples.image_ids)
    for attempt in range(100 * (count + negatives)):
        if len(picks) == negatives:
            return
        pick = int(examples.image_ids[draw.integers(count)])
        repeats = count <= negatives or attempt >= 10 * (count + negatives)
        if pick not in examples.right[row] and (repeats or pick not in picks):
            picks.append(pick)
    raise VtsearchError(f"found no wrong image to rank against caption {row}: every image in the "
                        "index is one of its own")


def swapped_variants(caption: str, count: int, rng: np.random.Generator) -> list[str]:
    """Up to ``count`` captions made by swapping two different content words of ``caption``."""
    words = caption.split()
    slots = [i for i, word in enumerate(words) if word.lower().strip(".,") not in STOPWORDS]
    pairs = [(i, j) for n, i in enumerate(slots) for j in slots[n + 1:] if words[i].lower() != words[j].lower()]
    return _swapped(caption, [[pair] for pair in pairs], count, rng)


def _swapped(caption: str, choices: list[list[tuple[int, int]]], count: int, rng: np.random.Generator) -> list[str]:
    """Up to ``count`` distinct captions, each ``caption`` with one of the ``choices`` of
    word swaps (pairs of word positions) made, picked in random order."""
    words = caption.split()
    variants: list[str] = []
    for pick in rng.permutation(len(choices)):
        swapped = list(words)
        for i, j in choices[pick]:
            swapped[i], swapped[j] = swapped[j], swapped[i]
        text = " ".join(swapped)
        if text != caption and text not in variants:
            variants.append(text)
        if len(variants) == count:
            break
    return variants


TextTokens = tuple[torch.Tensor, torch.Tensor]  # a text's token states (T, Dt) and ids (T,)


class WordKinds:
    """Which content words of a set of captions are of one kind (colour names, object
    names, relation words): those found between the same neighbours, judged by the cosine
    of their counts of the word just before, and that of the word just after, both at
    least ``threshold`` (any stopword counts as one neighbour: "a red", "an orange"). No
    word list and no tagger: the captions alone say that "red" and "blue" fill the same
    slot, and so do "dog" and "couch"."""

    def __init__(self, captions: Sequence[str], min_count: int = 5, threshold: float = 0.5):
        self.threshold = threshold
        sides: tuple[dict[str, Counter[str]], dict[str, Counter[str]]] = (defaultdict(Counter), defaultdict(Counter))
        for caption in captions:
            words = ["<start>", *(_word(word) for word in caption.split()), "<end>"]
            slots = ["·" if word in STOPWORDS else word for word in words]
            for before, word, after in zip(slots, words[1:], slots[2:]):
                sides[0][word][before] += 1
                sides[1][word][after] += 1
        kept = [word for word, counts in sides[0].items()
                if word and word not in STOPWORDS and sum(counts.values()) >= min_count]
        self.contexts = {word: tuple(_unit(side[word]) for side in sides) for word in kept}
        self._same: dict[tuple[str, str], bool] = {}

    def same_kind(self, first: str, second: str) -> bool:
        """Whether two (different) words fill the same slots often enough to be swapped."""
        first, second = sorted((_word(first), _word(second)))
        if first == second or first not in self.contexts or second not in self.contexts:
            return False
        key = (first, second)
        if key not in self._same:
            self._same[key] = all(_dot(one, other) >= self.threshold
                                  for one, other in zip(self.contexts[first], self.contexts[second]))
        return self._same[key]

    def swaps(self, caption: str, count: int, rng: np.random.Generator) -> list[str]:
        """Up to ``count`` captions made by swapping two words of one kind (red ↔ blue), or
        two such pairs at once (red ↔ blue and cube ↔ ball: the two things trade places):
        the same words in another binding."""
        words = caption.split()
        pairs = [(i, j) for i in range(len(words)) for j in range(i + 2, len(words))  # neighbours: word salad
                 if self.same_kind(words[i], words[j])]
        choices = [[pair] for pair in pairs]
        choices += [[first, second] for n, first in enumerate(pairs) for second in pairs[n + 1:]
                    if not set(first) & set(second)]
        return _swapped(caption, choices, count, rng)


def _word(word: str) -> str:
    return word.lower().strip(".,;:!?\"'()")


def _unit(counts: Counter[str]) -> dict[str, float]:
    norm = math.sqrt(sum(n * n for n in counts.values()))
    return {key: n / norm for key, n in counts.items()}


def _dot(first: dict[str, float], second: dict[str, float]) -> float:
    small, large = sorted((first, second), key=len)
    return sum(value * large.get(key, 0.0) for key, value in small.items())


def swap_texts(resolved: ResolvedPairs, count: int, seed: int, rows: Sequence[int]) -> dict[int, list[str]]:
    """Per caption in ``rows``: up to ``count`` of its swaps (``WordKinds.swaps``) that are
    not a caption of its own image."""
    kinds = WordKinds(resolved.captions)
    rng = np.random.default_rng(seed)
    own: dict[int, set[str]] = defaultdict(set)  # image → its captions
    for caption, image_id in zip(resolved.captions, resolved.image_ids):
        own[image_id].add(caption)
    return {row: [text for text in kinds.swaps(resolved.captions[row], count, rng)
                  if text not in own[resolved.image_ids[row]]] for row in rows}


def encode_swaps(encoder: "Encoder", swapped: dict[int, list[str]], captions: int,
                 progress: Progress) -> list[list[TextTokens]]:
    """The token states and ids of ``swap_texts``, per caption (``captions`` of them; those
    not in ``swapped`` get none); each distinct text encoded once, advancing ``progress``."""
    distinct = list(dict.fromkeys(text for variants in swapped.values() for text in variants))
    states = _token_states(encoder, distinct, progress)
    variants: list[list[TextTokens]] = [[] for _ in range(captions)]
    for row, texts in swapped.items():
        variants[row] = [states[text] for text in texts]
    return variants


def mine_text_negatives(index: "Index", resolved: ResolvedPairs, examples: Examples, count: int,
                        seed: int, rows: Sequence[int] | None = None, swaps: bool = True) -> list[list[TextTokens]]:
    """Per caption in ``rows`` (all when None): token states and ids of ``count`` wrong
    texts for its image (see module doc); the others get none. Without ``swaps`` they are
    all nearest captions: real texts, where word swaps may be word salad."""
    rng = np.random.default_rng(seed)
    own: dict[int, set[str]] = defaultdict(set)  # image → its captions
    for caption, image_id in zip(resolved.captions, resolved.image_ids):
        own[image_id].add(caption)
    nearest = _NearestCaptions(resolved.captions, examples, depth=4 * count + 8)
    rows = range(len(resolved.captions)) if rows is None else rows
    swapped = {row: swapped_variants(resolved.captions[row], math.ceil(count / 2), rng) if swaps else []
               for row in rows}
    swap_tokens = _token_states(index.encoder,
                                list(dict.fromkeys(text for variants in swapped.values() for text in variants)))
    image_vectors = examples.positive_vectors()
    negatives: list[list[TextTokens]] = [[] for _ in resolved.captions]
    for row, variants in swapped.items():
        mine = own[examples.positives[row]]
        variants = [text for text in variants if text not in mine]  # a swap may still be true
        tokens = [swap_tokens[text] for text in variants]
        for text in nearest.ranked(image_vectors[row]):
            if len(tokens) >= count:
                break
            if text not in mine and text not in variants:
                tokens.append(nearest.tokens(text))
        negatives[row] = tokens
    return negatives


def _token_states(encoder: "Encoder", texts: list[str], progress: Progress | None = None) -> dict[str, TextTokens]:
    """Each text's token states and ids."""
    states: dict[str, TextTokens] = {}
    for start in range(0, len(texts), ENCODE_BATCH):
        chunk = texts[start:start + ENCODE_BATCH]
        features = encoder.encode_text_features(chunk)
        states.update(zip(chunk, zip([row.half() for row in features.tokens], features.ids)))
        if progress is not None:
            progress.advance(len(chunk))
    return states


class _NearestCaptions:
    """The distinct training captions, ranked by stage-1 similarity to an image."""

    def __init__(self, captions: list[str], examples: Examples, depth: int):
        self.unique = list(dict.fromkeys(captions))
        self.first_row = {caption: row for row, caption in reversed(list(enumerate(captions)))}
        self.vectors = examples.caption_vectors[[self.first_row[c] for c in self.unique]]  # (U, D)
        self.depth = min(len(self.unique), depth)
        self.examples = examples

    def ranked(self, image_vector: np.ndarray) -> Iterator[str]:
        """The top ``depth`` captions, nearest first (ties in caption order)."""
        scores = self.vectors @ image_vector  # (U,)
        if self.depth < len(self.unique):
            top = np.argpartition(-scores, self.depth - 1)[:self.depth]
        else:
            top = np.arange(len(self.unique))
        for position in top[np.argsort(-scores[top], kind="stable")]:
            yield self.unique[position]

    def tokens(self, caption: str) -> TextTokens:
        row = self.first_row[caption]
        return self.examples.tokens[row], self.examples.ids[row]
