"""The trainer's components alone: step loader (epoch order, data-parallel shares), metrics log trim,
checkpointer bookkeeping."""

import json
from pathlib import Path

import pytest
from test_packing import pairs

from maskdpo.data import pack_pairs
from maskdpo.train.loader import StepLoader, data_parallel_share
from maskdpo.train.metrics import MetricsLogger


@pytest.fixture(scope="module")
def micro_batches():
    return pack_pairs(pairs([(5, 6)] * 11), budget=32, pad_id=0, max_pairs=1).micro_batches


def test_each_epoch_is_a_reproducible_shuffle_cut_into_steps(micro_batches):
    loader = StepLoader(micro_batches, micro_batches_per_step=4, seed=3)
    assert loader.steps_per_epoch == 2 and loader.left_out_per_epoch == 3
    ids = [[int(mb.pair_index[0]) for mb in loader.step(s).micro_batches] for s in range(6)]
    assert ids == [[int(mb.pair_index[0]) for mb in StepLoader(micro_batches, 4, 3).step(s).micro_batches]
                   for s in range(6)]
    for epoch in range(3):
        seen = ids[2 * epoch] + ids[2 * epoch + 1]
        assert len(set(seen)) == 8  # no micro-batch twice in an epoch
    assert ids[0:2] != ids[2:4]  # another order in the next epoch
    assert loader.step(5).epoch == 2 and loader.step(0).pairs == 4


def test_a_step_larger_than_the_data_is_refused(micro_batches):
    with pytest.raises(ValueError, match="11 micro-batches cannot fill one step of 12"):
        StepLoader(micro_batches, 12, 0)


def test_data_parallel_shares_partition_the_step_and_pad_with_empty_micro_batches(micro_batches):
    step = list(micro_batches[:5])
    shares = [data_parallel_share(step, 2, r) for r in range(2)]
    assert [len(s) for s in shares] == [3, 3]
    real = sorted(int(mb.pair_index[0]) for share in shares for mb in share if mb.num_pairs)
    assert real == sorted(int(mb.pair_index[0]) for mb in step)
    assert shares[1][-1].num_pairs == 0 and shares[1][-1].input_ids.shape == step[0].input_ids.shape


def test_trim_keeps_the_steps_a_resume_will_not_redo(tmp_path):
    lines = [json.dumps({"step": s, "loss": 0.5}) for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"step": 6, "lo')  # cut short by a kill
    assert MetricsLogger.trim(tmp_path, 3) == 3
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert MetricsLogger.trim(tmp_path, 0) == 3 and (tmp_path / "metrics.jsonl").read_text() == ""
    assert MetricsLogger.trim(tmp_path / "missing", 0) == 0


def test_rotation_keeps_the_newest_complete_checkpoints_and_never_the_current_one(tmp_path):
    from maskdpo.train.checkpointer import MANIFEST, Checkpointer

    checkpointer = Checkpointer(tmp_path, every=1, keep_last=2)
    for step, complete in [(1, True), (2, False), (3, True), (4, True), (5, False), (6, True)]:
        folder = checkpointer.directory / f"step-{step:08d}"
        folder.mkdir(parents=True)
        if complete:
            (folder / MANIFEST).write_text('{"files": {}}')
    (checkpointer.directory / "damaged-step-00000007").mkdir()
    checkpointer._rotate(checkpointer.directory / "step-00000006")
    left = sorted(p.name for p in checkpointer.directory.iterdir())
    # step 2 and 5 were incomplete (a crash mid-save), 1 and 3 beyond keep_last; damaged ones are kept.
    assert left == ["damaged-step-00000007", "step-00000004", "step-00000006"]


def test_a_checkpoint_is_checked_against_its_manifest(tmp_path):
    from maskdpo.digests import file_digest
    from maskdpo.train.checkpointer import MANIFEST, Checkpointer

    (tmp_path / "a.pt").write_bytes(b"x" * 100)
    (tmp_path / MANIFEST).write_text(json.dumps({"files": {"a.pt": {"size": 100, "sha256": file_digest(tmp_path / "a.pt")}}}))
    assert Checkpointer.problem(tmp_path) is None
    (tmp_path / "a.pt").write_bytes(b"y" * 100)
    assert "does not match its checksum" in Checkpointer.problem(tmp_path)
    (tmp_path / "a.pt").write_bytes(b"y" * 10)
    assert "has 10 bytes, the manifest says 100" in Checkpointer.problem(tmp_path)
    (tmp_path / "a.pt").unlink()
    assert "a.pt is missing" in Checkpointer.problem(tmp_path)
    (tmp_path / MANIFEST).unlink()
    assert "manifest.json is missing or unreadable" in Checkpointer.problem(tmp_path)


def test_a_random_init_left_by_another_architecture_or_seed_is_made_again(tmp_path):
    import torch.distributed as dist

    from maskdpo.train.config import Config
    from maskdpo.train.launcher import free_port
    from maskdpo.train.prepare import starting_model

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        config = Config()
        config.model.architecture = {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
                                     "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1}
        said = []
        path = starting_model(config, tmp_path, said.append)
        first = json.loads((path / "config.json").read_text())
        assert starting_model(config, tmp_path, said.append) == path and len(said) == 1  # reused as it is
        config.model.architecture = {**config.model.architecture, "num_hidden_layers": 3}
        starting_model(config, tmp_path, said.append)
        assert json.loads((path / "config.json").read_text())["num_hidden_layers"] == 3 != first["num_hidden_layers"]
        weights = (path / "model.safetensors").read_bytes()
        config.train.seed = 5
        starting_model(config, tmp_path, said.append)
        assert (path / "model.safetensors").read_bytes() != weights and len(said) == 3
    finally:
        dist.destroy_process_group()


def _check_space_worker(rank, port, root, outcomes):
    """Rank 0's run directory holds a finished checkpoint whose manifest no disk could hold again; rank
    1's holds none (nodes that share no filesystem see just that)."""
    import types
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from maskdpo.train.checkpointer import MANIFEST, Checkpointer, CheckpointWriteError

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))  # a mismatched collective fails instead of hanging
    try:
        checkpointer = Checkpointer(Path(root) / f"rank{rank}", every=1, keep_last=2)
        trainer = types.SimpleNamespace(module=torch.nn.Linear(10, 10), layout=types.SimpleNamespace(data_parallel=1))
        first = checkpointer._check_space(trainer, checkpointer.directory / "step-00000001")  # none seen anywhere
        if rank == 0:
            folder = checkpointer.directory / "step-00000001"
            folder.mkdir(parents=True)
            (folder / MANIFEST).write_text(json.dumps({"step": 1, "files": {"a.pt": {"size": 10**18, "sha256": ""}}}))
        try:
            checkpointer._check_space(trainer, checkpointer.directory / "step-00000002")
            second = "saved"
        except CheckpointWriteError as e:
            second = str(e)
        outcomes[rank] = (first, second)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes
def test_the_space_check_takes_the_same_collectives_on_every_rank_whatever_each_sees(tmp_path):
    """Each rank counts its share (110 parameters x (4 + 12) bytes) when no rank sees a checkpoint; when
    only rank 0 sees one, both refuse the save from its size instead of pairing different collectives."""
    import torch.multiprocessing as mp

    from maskdpo.train.launcher import free_port

    with mp.Manager() as manager:
        outcomes = manager.dict()
        mp.spawn(_check_space_worker, args=(free_port(), str(tmp_path), outcomes), nprocs=2, join=True)
        outcomes = dict(outcomes)
    assert [outcomes[r][0] for r in (0, 1)] == [2 * 110 * 16] * 2
    for rank in (0, 1):
        assert outcomes[rank][1].startswith("checkpoint step-00000002 not saved: no space left on the device "
                                            f"holding {tmp_path / f'rank{rank}' / 'checkpoints'}: it needs about "
                                            "1000000000000.0 MB"), outcomes[rank][1]
