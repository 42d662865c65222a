"""GPU paths and their CPU twins.

Every GPU test has a twin that runs the same check on the CPU, so CI (no GPU) covers
the logic; the GPU ones are skipped cleanly where CUDA or faiss GPU support is absent.
"""

import numpy as np
import pytest
import torch

from conftest import make_images
from vtsearch import AnnConfig, Index, IngestOptions
from vtsearch.encoder import Encoder
from vtsearch.store.ann import AnnIndex, gpu_count

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
needs_faiss_gpu = pytest.mark.skipif(gpu_count() == 0, reason="faiss sees no GPU (faiss-cpu, or no GPU)")


def flat_index(use_gpu: bool) -> tuple[AnnIndex, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((500, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ann = AnnIndex.empty(32, AnnConfig(), use_gpu=use_gpu)
    ann.add(np.arange(10, 510), vectors)
    return ann, vectors


def check_flat_search(use_gpu: bool, tmp_path) -> None:
    ann, vectors = flat_index(use_gpu)
    hits = ann.search(vectors[:5], 3)
    assert [row[0][0] for row in hits] == [10, 11, 12, 13, 14]
    ann.save(tmp_path / "ann.faiss")  # always saved as a CPU index
    loaded = AnnIndex.load(tmp_path / "ann.faiss", AnnConfig(), use_gpu=use_gpu)
    assert [row[0][0] for row in loaded.search(vectors[:5], 3)] == [10, 11, 12, 13, 14]
    assert ann.remove([10]) == 1 and ann.search(vectors[:1], 1)[0][0][0] != 10


def test_flat_search_cpu(tmp_path):
    check_flat_search(False, tmp_path)


@pytest.mark.gpu
@needs_faiss_gpu
def test_flat_search_gpu(tmp_path):
    check_flat_search(True, tmp_path)


def check_encoding(tiny_spec, device: torch.device, tmp_path, reference=None) -> np.ndarray:
    encoder = Encoder.load(tiny_spec, device)
    make_images(tmp_path / "photos", 6)
    with Index.create(tmp_path / f"index-{device.type}", encoder=encoder) as index:
        index.add([tmp_path / "photos"], IngestOptions(workers=0))
        vectors = index.catalog.vectors(index.catalog.indexed_ids().tolist(), encoder.embed_dim)
    if reference is not None:  # fp16 autocast on the GPU stays close to fp32 on the CPU
        assert np.abs(vectors - reference).max() < 2e-2
    return vectors


def test_encoding_cpu(tiny_spec, tmp_path):
    vectors = check_encoding(tiny_spec, torch.device("cpu"), tmp_path)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_encoding_gpu_matches_cpu(tiny_spec, tmp_path):
    reference = check_encoding(tiny_spec, torch.device("cpu"), tmp_path / "cpu")
    check_encoding(tiny_spec, torch.device("cuda"), tmp_path / "gpu", reference)
