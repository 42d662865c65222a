"""Near-duplicate removal keeps, in rank order, each result not within the threshold of a
kept one above it: the blocked matrix products decide exactly as one comparison per pair."""

import numpy as np

from vtsearch.query.search import first_of_near_duplicates


def one_pair_at_a_time(vectors, threshold):
    kept = []
    for position in range(len(vectors)):
        if not kept or float(np.max(vectors[kept] @ vectors[position])) < threshold:
            kept.append(position)
    return kept


def test_blocks_decide_as_pairs_do():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 32)).astype(np.float32)
    copies = base[rng.integers(0, 300, 200)] + 0.05 * rng.standard_normal((200, 32)).astype(np.float32)
    vectors = np.concatenate([base, copies])[rng.permutation(500)]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    expected = one_pair_at_a_time(vectors, 0.94)
    assert 300 <= len(expected) < 500  # some copies are dropped, no original is
    for block in (1, 7, 64, 1024):
        assert first_of_near_duplicates(vectors, 0.94, block) == expected


def test_the_best_ranked_of_a_burst_is_kept():
    shot = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    other = np.array([0.0, 1.0, 0.0], dtype=np.float32)
    vectors = np.stack([other, shot, shot, other, shot])
    assert first_of_near_duplicates(vectors, 0.94) == [0, 1]
