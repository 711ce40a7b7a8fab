"""mask_dpo_loss against the DPO formulas written out in float64."""

import math

import pytest
import torch

from maskdpo.dpo.loss import mask_dpo_loss


def sums(seed, p=6):
    gen = torch.Generator().manual_seed(seed)
    return [(-50 * torch.rand(p, generator=gen, dtype=torch.float64)).requires_grad_(True) for _ in range(4)]


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_sigmoid_with_label_smoothing(eps):
    pc, pr, rc, rr = sums(0)
    loss, metrics = mask_dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=eps)
    expected = 0.0
    for i in range(6):
        z = 0.1 * ((pc[i] - rc[i]) - (pr[i] - rr[i])).item()
        expected += -(1 - eps) * math.log(1 / (1 + math.exp(-z))) - eps * math.log(1 / (1 + math.exp(z)))
    assert loss.item() == pytest.approx(expected / 6, rel=1e-6)
    loss.backward()
    assert rc.grad is not None and torch.allclose(pc.grad, -rc.grad.to(pc.grad.dtype), atol=1e-7)


def test_equal_policy_and_reference_give_ln2():
    pc, pr, _, _ = sums(1)
    loss, metrics = mask_dpo_loss(pc, pr, pc.detach(), pr.detach())
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert metrics["rewards/margin"].item() == 0 and metrics["rewards/accuracy"].item() == 0


def test_ipo_hinge_and_metrics():
    pc, pr, rc, rr = sums(2)
    kept_c, kept_r = torch.tensor([3.0, 5, 1, 2, 8, 4]), torch.tensor([2.0, 1, 6, 3, 2, 5])
    loss, _ = mask_dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo", chosen_kept=kept_c, rejected_kept=kept_r)
    z = (pc - rc).detach() / kept_c - (pr - rr).detach() / kept_r
    assert loss.item() == pytest.approx(((z - 1.0) ** 2).mean().item(), rel=1e-6)
    loss, metrics = mask_dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="hinge",
                                  chosen_kept=kept_c, rejected_kept=kept_r,
                                  chosen_tokens=kept_c * 2, rejected_tokens=kept_r * 4)
    margin = 0.5 * ((pc - rc) - (pr - rr)).detach()
    assert loss.item() == pytest.approx(torch.relu(1 - margin).mean().item(), rel=1e-6)
    assert metrics["rewards/margin"].item() == pytest.approx(margin.mean().item(), rel=1e-6)
    assert metrics["rewards/accuracy"].item() == pytest.approx((margin > 0).double().mean().item())
    assert metrics["kept_fraction/chosen"].item() == pytest.approx(0.5)
    assert metrics["kept_fraction/rejected"].item() == pytest.approx(0.25)
    assert all(v.dim() == 0 for v in metrics.values())


def test_bad_arguments():
    pc, pr, rc, rr = sums(3)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        mask_dpo_loss(pc, pr, rc, rr, loss_type="kto")
    with pytest.raises(ValueError, match="needs chosen_kept"):
        mask_dpo_loss(pc, pr, rc, rr, loss_type="ipo")
    with pytest.raises(ValueError, match="label_smoothing"):
        mask_dpo_loss(pc, pr, rc, rr, label_smoothing=0.7)
