"""A run directory is never corrupted, mixed with another configuration, or shared by two runs:
real processes and signals on the tiny-cpu recipe, against the uninterrupted run (conftest)."""

import json
import os
import signal
import subprocess

import pytest
from model_helpers import FP32_FIRST_LOSS_ATOL
from train_helpers import comparable, kill_job, metrics, processes_of, same_weights, train, wait_for_steps, wait_until_gone


def equal_to_uninterrupted(run_dir, uninterrupted_dir):
    assert [comparable(r) for r in metrics(run_dir)] == [comparable(r) for r in metrics(uninterrupted_dir)]
    assert same_weights(run_dir, uninterrupted_dir)


@pytest.mark.slow
def test_a_kill_before_the_first_checkpoint_restarts_with_clean_metrics(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    process = train(run_dir, tmp_path / "cache", "--checkpoint.every", "100", popen=True)
    wait_for_steps(run_dir, 3, process)
    kill_job(process)
    assert not (run_dir / "checkpoints" / "latest").exists()
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a line cut short by the kill
    rerun = train(run_dir, tmp_path / "cache", "--checkpoint.every", "100")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "resumed from" not in rerun.stdout
    equal_to_uninterrupted(run_dir, uninterrupted[0])


@pytest.mark.slow
def test_killing_the_launcher_alone_ends_its_workers(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    process = train(run_dir, tmp_path / "cache", "--checkpoint.every", "100", "--train.epochs", "50", popen=True)
    wait_for_steps(run_dir, 2, process)
    workers = [pid for pid in processes_of(run_dir) if pid != process.pid]
    assert len(workers) == 2
    process.kill()  # the launcher only: its workers are in the same session, not signalled
    process.wait()
    assert wait_until_gone(run_dir), "workers outlived their launcher"
    # They stopped the way Ctrl-C stops them: with a checkpoint, which a rerun resumes.
    assert (run_dir / "checkpoints" / "latest").exists()


@pytest.mark.slow
def test_killing_one_worker_stops_the_job_and_a_rerun_resumes(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    process = train(run_dir, tmp_path / "cache", "--checkpoint.every", "2", popen=True)
    wait_for_steps(run_dir, 3, process)
    worker = max(pid for pid in processes_of(run_dir) if pid != process.pid)
    os.kill(worker, signal.SIGKILL)
    process.communicate(timeout=120)
    assert process.returncode not in (0, 3)  # a failure, not a finish or a clean stop
    assert wait_until_gone(run_dir, timeout=60)
    rerun = train(run_dir, tmp_path / "cache", "--checkpoint.every", "2")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    equal_to_uninterrupted(run_dir, uninterrupted[0])


@pytest.mark.slow
def test_killing_torchrun_ends_its_workers(tmp_path):
    import sys

    from train_helpers import RECIPE, ROOT

    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHON": sys.executable, "TRITON_INTERPRET": "0"}
    process = subprocess.Popen(["bash", str(ROOT / "launch" / "torchrun.sh"), "2", "--config", str(RECIPE),
                                "--logging.run_dir", str(run_dir), "--data.cache_dir", str(tmp_path / "cache"),
                                "--train.epochs", "50", "--checkpoint.every", "100"], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_steps(run_dir, 2, process)
    assert len([pid for pid in processes_of(run_dir) if pid != process.pid]) == 2
    process.kill()  # torchrun's agent (the script execs it); its workers are not signalled
    process.wait()
    assert wait_until_gone(run_dir), "workers outlived torchrun"


@pytest.mark.slow
def test_a_damaged_checkpoint_is_named_and_the_previous_one_is_used(uninterrupted, tmp_path):
    run_dir = tmp_path / "run"
    process = train(run_dir, tmp_path / "cache", "--checkpoint.every", "1", popen=True)
    wait_for_steps(run_dir, 5, process)
    kill_job(process)
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text()
    damaged = next(latest.glob("layer_01-*.pt"))
    damaged.write_bytes(damaged.read_bytes()[:1000])
    rerun = train(run_dir, tmp_path / "cache", "--checkpoint.every", "1")
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"checkpoint {latest.name} is damaged: {damaged} has 1000 bytes" in rerun.stdout
    assert "the newest intact checkpoint" in rerun.stdout
    assert (run_dir / "checkpoints" / f"damaged-{latest.name}").is_dir()
    equal_to_uninterrupted(run_dir, uninterrupted[0])


@pytest.fixture(scope="module")
def other_inputs(tmp_path_factory):
    """Another pairs file and an HF model directory, for changed configurations."""
    from maskdpo.data import pair_to_json
    from maskdpo.data.bundled import bundled_pairs
    from maskdpo.data.jsonl import write_jsonl

    root = tmp_path_factory.mktemp("other")
    write_jsonl(root / "pairs.jsonl", (pair_to_json(p) for p in bundled_pairs()[:-1]))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("change,expected", [
    (["--optim.lr", "0.05"], "optim.lr: 0.001 -> 0.05"),
    (["--train.epochs", "4"], "train.epochs: 3 -> 4"),
    (["--data.pairs", "{other}/pairs.jsonl"], "data.pairs: bundled -> {other}/pairs.jsonl"),
    (["--model.architecture", "{vocab_size: 4096, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, "
      "num_attention_heads: 4, num_key_value_heads: 2}"], "model.architecture: "),
    (["--model.path", "{run}/hf"], "model.path: None -> {run}/hf"),
])
def test_a_changed_configuration_is_refused_listing_what_changed(uninterrupted, other_inputs, change, expected):
    run_dir = uninterrupted[0]
    before = {f: (run_dir / f).read_bytes() for f in ("config.yaml", "metrics.jsonl", "run.json")}
    change = [c.replace("{other}", str(other_inputs)).replace("{run}", str(run_dir)) for c in change]
    result = train(run_dir, run_dir.parent / "cache", *change)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    expected = expected.replace("{other}", str(other_inputs)).replace("{run}", str(run_dir))
    assert "holds a run with another configuration" in result.stderr and expected in result.stderr, result.stderr
    assert f"--model.path {run_dir / 'hf'}" in result.stderr
    assert {f: (run_dir / f).read_bytes() for f in before} == before  # nothing rewritten


@pytest.mark.slow
def test_a_finished_run_rerun_is_already_complete(uninterrupted):
    run_dir = uninterrupted[0]
    hf_time = (run_dir / "hf" / "config.json").stat().st_mtime_ns
    result = train(run_dir, run_dir.parent / "cache", "--checkpoint.every", "5", "--logging.tensorboard", "false")
    assert result.returncode == 0 and "already complete (9 steps)" in result.stdout, result.stdout + result.stderr
    assert (run_dir / "hf" / "config.json").stat().st_mtime_ns == hf_time


@pytest.mark.slow
def test_a_non_finite_starting_model_is_named(tmp_path):
    import torch
    from model_helpers import tiny_hf_llama

    model = tiny_hf_llama(tmp_path / "hf", vocab_size=4096)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    model.save_pretrained(str(tmp_path / "hf"))
    result = train(tmp_path / "run", tmp_path / "cache", "--model.path", str(tmp_path / "hf"))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "has non-finite parameters: model.layers.1.mlp.up_proj.weight" in result.stdout


def _mount_tmpfs(path, options):
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


@pytest.mark.slow
def test_a_full_disk_is_named_in_one_line(tmp_path):
    run_dir = tmp_path / "small" / "run"
    _mount_tmpfs(tmp_path / "small", "size=4m")
    try:
        result = train(run_dir, tmp_path / "cache", "--checkpoint.every", "2")
        assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
        errors = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("error")]
        assert len(errors) == 1 and "no space left on the device holding" in errors[0], result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        assert not (run_dir / "checkpoints" / "latest").exists()
    finally:
        subprocess.run(["umount", str(tmp_path / "small")])


@pytest.mark.slow
def test_a_read_only_run_directory_is_refused_before_start(tmp_path):
    _mount_tmpfs(tmp_path / "ro", "ro,size=1m")
    try:
        result = train(tmp_path / "ro" / "run", tmp_path / "cache")
        assert result.returncode == 2
        assert "is not writable (read-only file system or permissions)" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        subprocess.run(["umount", str(tmp_path / "ro")])


def test_a_stale_lock_is_recognised_and_a_live_one_names_its_holder(tmp_path):
    from maskdpo.train.run_lock import RunDirectoryBusy, RunLock

    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirectoryBusy, match=rf"in use by another run: pid {os.getpid()} on "):
        RunLock(tmp_path).acquire()
    # A holder that died without releasing: the flock went with it, the file still names it.
    dead = json.dumps({"pid": 1234567, "host": "h", "started": 0})
    holder = subprocess.run(["python3", "-c", f"import os; fd = os.open({str(tmp_path / '.lock')!r}, os.O_RDWR); "
                             f"os.ftruncate(fd, 0); os.pwrite(fd, {dead!r}.encode(), 0)"])
    assert holder.returncode == 0
    first.release()
    again = RunLock(tmp_path).acquire()
    assert again.previous["pid"] == 1234567  # left by a dead run: taken over
    again.release()


@pytest.mark.slow
def test_bad_data_met_after_start_is_one_line_not_a_traceback_per_rank(tmp_path, other_inputs):
    lines = (other_inputs / "pairs.jsonl").read_text().splitlines()
    record = json.loads(lines[1])
    record["chosen"]["sentences"][0]["label"] = "great"
    (tmp_path / "pairs.jsonl").write_text("\n".join([lines[0], json.dumps(record), *lines[2:]]) + "\n")
    result = train(tmp_path / "run", tmp_path / "cache", "--data.pairs", str(tmp_path / "pairs.jsonl"))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.replace("\r", "\n").splitlines() if line.startswith("error")]
    assert len(errors) == 1 and f"{tmp_path / 'pairs.jsonl'}:2: chosen.sentences[0].label" in errors[0], errors
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.slow
def test_per_token_reference_cache_serves_another_label_mapping_exactly(tmp_path):
    """Run 1 computes the reference log-probs per token; run 2, with nofact counted as hallucinated,
    sums them under its own weights instead of a new pass, and gets what a fresh pass gives (run 3)."""
    from model_helpers import tiny_hf_llama

    tiny_hf_llama(tmp_path / "hf", vocab_size=4096)  # one starting model for the three runs
    model = ["--model.path", str(tmp_path / "hf"), "--train.max_steps", "2"]
    other = ["--data.correct_labels", "ok,no_hallucination", "--data.hallucinated_labels",
             "nofact,contradictory,unverifiable,hallucination", *model]
    first = train(tmp_path / "run1", tmp_path / "cache", *model)
    assert first.returncode == 0 and "reference log-probs: computed" in first.stdout, first.stderr[-2000:]
    second = train(tmp_path / "run2", tmp_path / "cache", *other)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "reference log-probs: loaded from cache (per token" in second.stdout
    fresh = train(tmp_path / "run3", tmp_path / "fresh-cache", *other)
    assert fresh.returncode == 0 and "reference log-probs: computed" in fresh.stdout
    cached, computed = metrics(tmp_path / "run2"), metrics(tmp_path / "run3")
    assert cached[0]["loss"] == pytest.approx(0.6931471805599453, abs=FP32_FIRST_LOSS_ATOL)  # reference = policy at step 0
    for a, b in zip(cached, computed):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margin", "kept_fraction/chosen"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    assert metrics(tmp_path / "run1")[0]["kept_fraction/chosen"] != cached[0]["kept_fraction/chosen"]
