"""The CUDA paths: FAISS's GPU binary index and AMP + channels_last encoding.

They need CUDA FAISS (``GpuIndexBinaryFlat``) and a GPU, or a CUDA torch, and skip
without them (saying which is missing); the oracles are the brute-force search of
test_hamming_index.py and the float32 CPU encoding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_hamming_index import brute, codes

from retrieval_bio.datasets import TensorSplit
from retrieval_bio.eval.encode import encode
from retrieval_bio.index import GPU_MAX_K, HammingIndex, gpu_available
from retrieval_bio.models import create_model

needs_faiss_gpu = pytest.mark.skipif(
    not gpu_available(), reason="needs CUDA FAISS (GpuIndexBinaryFlat) and a GPU")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_faiss_gpu
@pytest.mark.parametrize("bits", [16, 64])
@pytest.mark.parametrize("k", [1, 100, GPU_MAX_K, GPU_MAX_K + 500])  # the last: merged shards
def test_gpu_flat_search_equals_brute_force(bits, k):
    rng = np.random.default_rng(bits)
    db, q = codes(rng, 6000, bits), codes(rng, 50, bits)
    index = HammingIndex(bits, device="cuda").add(db)
    assert index.device == "cuda"
    d, i = index.search(q, k)
    want_d, want_i = brute(q, db, k)
    np.testing.assert_array_equal(d, want_d)
    np.testing.assert_array_equal(i, want_i)  # ties by id, as on CPU


@needs_faiss_gpu
def test_gpu_index_saves_and_loads_on_either_device(tmp_path):
    rng = np.random.default_rng(1)
    db, q = codes(rng, 3000, 32), codes(rng, 20, 32)
    HammingIndex(32, device="cuda").add(db).save(tmp_path / "db.index")
    on_cpu = HammingIndex.load(tmp_path / "db.index", device="cpu")
    on_gpu = HammingIndex.load(tmp_path / "db.index", device="auto")
    assert on_gpu.device == "cuda"
    for a, b in zip(on_cpu.search(q, 300), on_gpu.search(q, 300), strict=True):
        np.testing.assert_array_equal(a, b)


@needs_cuda
def test_amp_channels_last_encoding_matches_float32_on_cpu():
    """float16 moves h by rounding only: outputs within fp16 tolerance, the codes of all
    but near-zero outputs agree, and items keep dataset order."""
    torch.manual_seed(0)
    model = create_model("small-cnn", "hash", num_classes=10, bits=32, image_size=32).eval()
    g = torch.Generator().manual_seed(0)
    data = TensorSplit(torch.rand(300, 3, 32, 32, generator=g),
                       torch.eye(10)[torch.randint(0, 10, (300,), generator=g)])
    ref, ref_labels, ref_ids = encode(model, data, batch_size=64, device="cpu")
    out, labels, ids = encode(model.cuda(), data, batch_size=64, device="cuda", amp=True)
    assert next(p for p in model.parameters() if p.ndim == 4).is_contiguous(
        memory_format=torch.channels_last)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(labels, ref_labels)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(out, ref, atol=5e-3 * scale)
    clear = np.abs(ref) > 1e-2 * scale
    assert np.array_equal(np.sign(out[clear]), np.sign(ref[clear]))
