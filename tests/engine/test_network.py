"""The factored network (model.py) against a plain concatenation MLP written here.
The fused kernel's loss and gradients are tested in test_kernel.py."""
import pytest
import torch

from _plain_mlp import make, plain_concat_mlp


@pytest.mark.parametrize("hidden", [(16, 8, 8), (5,), (9, 4)])
def test_decode_equals_plain_forward(hidden):
    net = make(torch.float64, hidden)
    idx = torch.tensor([0, 3, 11])
    ref = plain_concat_mlp(net, idx)
    out = net.decode(net.sample_embedding[idx], gene_chunk=50)
    assert torch.allclose(out, ref, rtol=0, atol=1e-12)


def test_penalty_is_sum_of_squares():
    net = make(torch.float64)
    expected = sum(float((p.detach() ** 2).sum()) for p in net.parameters())
    assert net.penalty().item() == pytest.approx(expected, rel=1e-12)
