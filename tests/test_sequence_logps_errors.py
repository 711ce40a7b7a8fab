"""Every bad input raises a ValueError that names the argument and what is wrong."""

import pytest
import torch

from maskdpo.kernels import masked_logps, reference, sequence_logps

N, V = 6, 11


def good():
    return dict(
        logits=torch.randn(N, V),
        labels=torch.randint(0, V, (N,)),
        weights=torch.ones(N),
        seq_ids=torch.zeros(N, dtype=torch.long),
        num_seqs=2,
    )


def with_value(name, index, value):
    def change(args):
        args[name] = args[name].clone()
        args[name][index] = value
    return change


CASES = {
    "logits not a tensor": (lambda a: a.update(logits=[[0.0] * V] * N), "logits must be a torch.Tensor"),
    "logits 1-D": (lambda a: a.update(logits=torch.randn(V)), "logits must have 2 dimensions"),
    "logits integer": (lambda a: a.update(logits=torch.zeros(N, V, dtype=torch.long)), "logits must be bfloat16"),
    "empty vocabulary": (lambda a: a.update(logits=torch.randn(N, 0)), "logits have an empty vocabulary"),
    "labels shape": (lambda a: a.update(labels=torch.zeros(N - 1, dtype=torch.long)), "labels must have shape (6,)"),
    "labels float": (lambda a: a.update(labels=torch.zeros(N)), "labels must be an integer tensor"),
    "labels bool": (lambda a: a.update(labels=torch.zeros(N, dtype=torch.bool)), "labels must be an integer tensor"),
    "labels device": (lambda a: a.update(labels=torch.zeros(N, dtype=torch.long, device="meta")),
                      "labels is on meta but logits are on cpu"),
    "weights integer": (lambda a: a.update(weights=torch.ones(N, dtype=torch.long)),
                        "weights must be a floating-point tensor"),
    "weights shape": (lambda a: a.update(weights=torch.ones(N, 1)), "weights must have shape (6,)"),
    "seq_ids float": (lambda a: a.update(seq_ids=torch.zeros(N)), "seq_ids must be an integer tensor"),
    "seq_ids device": (lambda a: a.update(seq_ids=torch.zeros(N, dtype=torch.long, device="meta")),
                       "seq_ids is on meta"),
    "label == V": (with_value("labels", 2, V), "labels[2] = 11 is outside [0, 11)"),
    "label negative": (with_value("labels", 4, -1), "labels[4] = -1 is outside [0, 11)"),
    "seq_id -2": (with_value("seq_ids", 1, -2), "seq_ids[1] = -2 is outside [-1, num_seqs=2)"),
    "seq_id == num_seqs": (with_value("seq_ids", 5, 2), "seq_ids[5] = 2 is outside [-1, num_seqs=2)"),
    "num_seqs negative": (lambda a: a.update(num_seqs=-1), "num_seqs must be a non-negative int"),
    "num_seqs float": (lambda a: a.update(num_seqs=2.0), "num_seqs must be a non-negative int"),
    "num_seqs tensor": (lambda a: a.update(num_seqs=torch.tensor(2)), "num_seqs must be a non-negative int"),
}


@pytest.mark.parametrize("implementation", [sequence_logps, reference.sequence_logps], ids=["kernel", "reference"])
@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_raises_value_error(implementation, case):
    change, message = CASES[case]
    args = good()
    change(args)
    with pytest.raises(ValueError, match="^sequence_logps: " + message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        implementation(**args)


def test_ignore_index_must_be_an_int():
    with pytest.raises(ValueError, match="ignore_index must be an int"):
        sequence_logps(**good(), ignore_index=None)


def test_ignored_labels_may_lie_outside_the_vocabulary():
    args = good()
    args["labels"][0] = -100
    assert torch.isfinite(sequence_logps(**args)).all()


def test_masked_logps_shape_errors():
    logits = torch.randn(2, 3, V)
    with pytest.raises(ValueError, match=r"masked_logps: logits must have 3 dimensions"):
        masked_logps(torch.randn(6, V), torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"masked_logps: labels must have shape \(2, 3\)"):
        masked_logps(logits, torch.zeros(6, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match=r"masked_logps: weights must have shape \(2, 3\)"):
        masked_logps(logits, torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"masked_logps: labels\[1\] = 11 is outside \[0, 11\)"):
        masked_logps(logits, torch.zeros(2, 3, dtype=torch.long).index_fill_(1, torch.tensor([1]), V), torch.ones(2, 3))
