"""Sign packing, compression, and the 1-bit compressed allreduce on 2 gloo ranks."""

from __future__ import annotations

import pytest
import torch
from onebit_harness import run_ranks

from zero_optim.onebit import (
    CommGroup,
    CompressedAllreduce,
    _signs,
    compress,
    decompress,
    pack_signs,
    unpack_signs,
)
from zero_optim.onebit._signs import subtract_decompressed


def reference_pack(positive: list[bool]) -> list[int]:
    """Byte j holds element 8j + k in bit k."""
    return [sum(1 << k for k in range(8) if positive[8 * j + k]) for j in range(len(positive) // 8)]


def reference_compress(values: list[float]) -> list[float]:
    """scale * sign, scale = sqrt(mean x^2), sign(0) = +1."""
    scale = (sum(v * v for v in values) / len(values)) ** 0.5
    return [scale if v >= 0 else -scale for v in values]


def reference_allreduce(inputs: list[list[float]], world: int) -> list[float]:
    """The documented two-hop result of one call with zero error buffers, with one scale
    per chunk (block size = chunk size)."""
    n = len(inputs[0])
    chunk = -(-n // (8 * world)) * 8
    padded = [x + [0.0] * (world * chunk - n) for x in inputs]
    decoded = []
    for x in padded:
        decoded.append([])
        for j in range(world):
            decoded[-1] += reference_compress(x[j * chunk : (j + 1) * chunk])
    out = []
    for j in range(world):
        mean = [sum(decoded[r][j * chunk + i] for r in range(world)) / world for i in range(chunk)]
        out += reference_compress(mean)
    return out[:n]


@pytest.mark.parametrize("n", [8, 64, 4096])
def test_pack_signs_matches_the_bit_layout_and_round_trips(n):
    gen = torch.Generator().manual_seed(n)
    positive = torch.rand(n, generator=gen) < 0.5
    packed = pack_signs(positive)
    assert packed.dtype == torch.uint8 and packed.numel() == n // 8
    assert packed.tolist() == reference_pack(positive.tolist())
    assert torch.equal(unpack_signs(packed), positive)


def test_pack_signs_of_an_unaligned_view_matches_the_reference():
    # A view starting 3 bools into its storage cannot be read as int64 words in place.
    positive = (torch.rand(1 + 3 + 64, generator=torch.Generator().manual_seed(1)) < 0.5)[3:-1]
    assert positive.storage_offset() % 8
    assert pack_signs(positive).tolist() == reference_pack(positive.tolist())


def test_big_endian_fold_reverses_to_the_reference():
    # On a big-endian host element 0 of a word is its high byte: emulate that memory order by
    # swapping each word's bytes, then check the fold plus the reversal table.
    positive = torch.rand(256, generator=torch.Generator().manual_seed(2)) < 0.5
    swapped = positive.view(torch.uint8).view(-1, 8).flip(1).contiguous().view(torch.int64)
    folded = _signs._fold_words(swapped.view(-1))
    restored = _signs._table("reverse", torch.device("cpu"))[folded.int()]
    assert restored.tolist() == reference_pack(positive.tolist())


@pytest.mark.parametrize("n", [8, 2048])
def test_decompress_matches_the_reference_with_and_without_a_buffer(n):
    gen = torch.Generator().manual_seed(n)
    rows = torch.randn(4, n, generator=gen)
    rows[0, :3] = 0.0  # sign(0) = +1, also for -0.0
    rows[1, :2] = -0.0
    packed, scales = compress(rows)
    expected = torch.tensor([reference_compress(r) for r in rows.tolist()])
    decoded = decompress(packed, scales)
    assert torch.equal(decoded.sign(), expected.sign())  # the signs exactly
    torch.testing.assert_close(decoded, expected, rtol=1e-6, atol=0)  # fp32 vs float64 scale
    buffer = torch.full((4 * n,), float("nan"))
    assert torch.equal(decompress(packed, scales, out=buffer), decoded)
    assert torch.equal(buffer.view(4, n), decoded)  # decoded in place, nothing left over


def test_subtracting_the_decoded_signs_in_place_equals_subtracting_decompress():
    x = torch.randn(4 * 256, generator=torch.Generator().manual_seed(3))
    packed, scales = compress(x.view(-1, 256))
    expected = x - decompress(packed, scales).view(-1)
    scratch = torch.empty_like(x)
    assert torch.equal(subtract_decompressed(x, packed, scales, scratch), expected)
    assert torch.equal(x, expected)  # in place


@pytest.mark.parametrize(
    "bad", [torch.zeros(7, dtype=torch.bool), torch.zeros(8), torch.zeros(2, 8, dtype=torch.bool)]
)
def test_pack_signs_refuses_bad_input(bad):
    with pytest.raises(ValueError, match="pack_signs takes a 1D bool tensor"):
        pack_signs(bad)


def test_compress_is_sign_times_rms_per_chunk():
    x = torch.tensor([[0.0, 4.0, -3.0, 2.0, -1.0, 1.0, -1.0, 0.0], [0.5] * 8])
    packed, scales = compress(x)
    assert scales.tolist() == [2.0, 0.5]  # sqrt(32 / 8), sqrt(2 / 8)
    assert decompress(packed, scales).tolist() == [
        [2.0, 2.0, -2.0, 2.0, -2.0, 2.0, -2.0, 2.0],  # sign(0) = +1
        [0.5] * 8,
    ]
    assert decompress(packed, scales).tolist() == [reference_compress(r) for r in x.tolist()]


def test_compressed_allreduce_needs_two_ranks():
    with pytest.raises(ValueError, match="at least 2 ranks"):
        CompressedAllreduce(10, CommGroup("gloo", False))


def test_comm_group_refuses_unknown_backend():
    with pytest.raises(ValueError, match="comm_backend_name must be one of"):
        CommGroup("tcp", False)


def _collective_checks(rank: int) -> dict:
    torch.manual_seed(100 + rank)
    comm = CommGroup("gloo", False)
    out = {}
    # 1. Known vectors, one call (13 elements: padded to 2 chunks of one 8-float block).
    x = torch.randn(13)
    allreduce = CompressedAllreduce(13, comm, block_size=8)
    out["inputs"] = x
    out["first"] = allreduce(x)
    out["bytes_in"] = comm.counter.bytes_in
    # 2. Constant magnitude within each block, equal on both ranks: compression is exact.
    exact = torch.tensor([2.0, -2.0] * 8 + [-0.5] * 16)
    ar_exact = CompressedAllreduce(32, comm, block_size=16)
    out["exact"] = ar_exact(exact)
    out["exact_errors"] = (ar_exact.worker_error.abs().max(), ar_exact.server_error.abs().max())
    # 3. The same input again and again: the running mean of the outputs converges.
    y = torch.randn(1000) * (1 + rank)
    ar = CompressedAllreduce(1000, comm)
    total = torch.zeros(1000)
    out["running"] = {}
    for t in range(1, 401):
        total += ar(y)
        if t in (1, 10, 40, 400):
            out["running"][t] = total / t
    out["y"] = y
    # 4. Pieces of a tensor, given one after the other, are averaged as the whole tensor is.
    z = torch.randn(1000)
    whole, pieces = CompressedAllreduce(1000, comm), CompressedAllreduce(1000, comm)
    out["whole"] = [whole(z) for _ in range(3)]
    out["pieces"] = [pieces([z[:1], z[1:300], z[300:]]) for _ in range(3)]
    return out


def test_compressed_allreduce_on_two_ranks():
    r0, r1 = run_ranks(_collective_checks)
    # Documented result of one call: sign x scale at the worker, then at the server.
    expected = reference_allreduce([r0["inputs"].tolist(), r1["inputs"].tolist()], 2)
    assert torch.allclose(r0["first"], torch.tensor(expected), rtol=1e-6, atol=1e-7)
    assert torch.equal(r0["first"], r1["first"])  # every rank decodes the same result
    # Bytes handed to collectives: 2 bytes of worker signs + 2 scales, 1 byte + 1 scale.
    assert r0["bytes_in"] == 2 + 2 * 4 + 1 + 4
    assert torch.equal(r0["exact"], torch.tensor([2.0, -2.0] * 8 + [-0.5] * 16))
    assert all(e.item() == 0 for e in r0["exact_errors"])
    # Error feedback: the running mean of the outputs approaches the true mean like 1/t.
    true_mean = (r0["y"] + r1["y"]) / 2
    rel = {
        t: ((r0["running"][t] - true_mean).norm() / true_mean.norm()).item() for t in r0["running"]
    }
    assert torch.equal(r0["running"][400], r1["running"][400])
    assert rel[1] > 0.3  # one call alone is a coarse (1-bit) estimate ...
    assert rel[40] < rel[10] / 3 < rel[1] / 6  # ... which error feedback refines (about 1/t)
    assert rel[400] < rel[40] / 5 and rel[400] < 0.02, rel
    assert all(torch.equal(a, b) for a, b in zip(r0["whole"], r0["pieces"]))
