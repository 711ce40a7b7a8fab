"""`maskdpo train`: the tiny-cpu recipe end to end, kill and resume, and config errors."""

import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
from train_helpers import ROOT, comparable, metrics, same_weights, train, wait_for_steps  # noqa: F401


@pytest.mark.slow
def test_tiny_cpu_recipe_trains_end_to_end(uninterrupted):
    run_dir, result = uninterrupted
    records = metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, len(records) + 1)) and len(records) >= 6
    assert abs(records[0]["loss"] - 0.6931) < 1e-3
    assert records[-1]["loss"] < 0.8 * records[0]["loss"]
    assert records[-1]["rewards/accuracy"] > records[0]["rewards/accuracy"]
    assert (run_dir / "metrics.png").stat().st_size > 1000 and (run_dir / "config.yaml").exists()
    # Each record's lr is its own step's: the recipe's 9 steps, warmup int(0.1 * 9) = 0, cosine from 1e-3.
    assert [r["lr"] for r in records] == pytest.approx(
        [1e-3 * 0.5 * (1 + math.cos(math.pi * i / len(records))) for i in range(len(records))])
    assert "exported the policy" in result.stdout
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())
    assert len(checkpoints) == 2 and (run_dir / "checkpoints" / "latest").read_text() == checkpoints[-1]


@pytest.mark.slow
def test_hf_export_matches_the_trained_pipeline(uninterrupted):
    from maskdpo.model.pipeline import hf_name

    run_dir, _ = uninterrupted
    exported = transformers.AutoModelForCausalLM.from_pretrained(str(run_dir / "hf"))
    state = exported.state_dict()
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text()
    compared = 0
    for layer_file in latest.glob("layer_*-model_states.pt"):
        index = int(layer_file.name.split("_")[1].split("-")[0])
        for name, tensor in torch.load(layer_file).items():
            hf = hf_name(f"{index}.{name}", exported.config.num_hidden_layers)
            assert torch.equal(state[hf], tensor), hf
            compared += 1
    assert compared == len(state)


@pytest.mark.slow
def test_hf_export_is_what_serving_stacks_expect(uninterrupted, tmp_path):
    """A random init with the bundled tokenizer: tokenizer files as shipped, generation stops at the chat
    template's end of turn, the dtype label is the weights' own, files readable as umask allows; the same
    from `maskdpo export`."""
    import json
    import stat

    from safetensors import safe_open

    from maskdpo.assets import TOKENIZER
    from maskdpo.cli import main as cli_main

    run_dir, _ = uninterrupted
    assert cli_main(["export", str(run_dir), "-o", str(tmp_path / "export")]) == 0
    umask = os.umask(0)
    os.umask(umask)
    for hf in (run_dir / "hf", tmp_path / "export"):
        for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
            assert (hf / name).read_bytes() == (TOKENIZER / name).read_bytes(), name
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf))
        eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
        generation = transformers.GenerationConfig.from_pretrained(str(hf))
        assert eot in ([generation.eos_token_id] if isinstance(generation.eos_token_id, int) else generation.eos_token_id)
        assert generation.bos_token_id == tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
        config = json.loads((hf / "config.json").read_text())
        assert config["eos_token_id"] == generation.eos_token_id and config["bos_token_id"] == generation.bos_token_id
        dtypes = set()
        for file in hf.glob("*.safetensors"):
            with safe_open(str(file), "pt") as f:
                dtypes |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}
        assert dtypes == {"F32"} and config["dtype"] == config["torch_dtype"] == "float32"
        for file in hf.iterdir():
            assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file.name
        model = transformers.AutoModelForCausalLM.from_pretrained(str(hf))
        assert model.generation_config.eos_token_id == generation.eos_token_id


NOISE = ("[WARNING]", "[INFO]", "built successfully", "SEED_LAYERS", "Using topology", "stage=", "UserWarning",
         "autograd kernel was not registered", "Traceback")


@pytest.mark.slow
def test_the_output_is_rank_0_lines_without_deepspeed_chatter(uninterrupted):
    _, result = uninterrupted
    for noise in NOISE:
        assert noise not in result.stdout + result.stderr, noise
    layout = [line for line in result.stdout.splitlines() if line.startswith("2 processes:")]
    assert layout == ["2 processes: 1 tensor x 2 pipeline x 1 data-parallel; stage 0: embedding, decoder 0; "
                      "stage 1: decoder 1, norm, head"]
    # The summary follows the closed progress bar, on a line of its own.
    assert any(line.startswith("trained to step 9 in") for line in result.stdout.splitlines())


def test_deepspeed_op_is_kept_in_the_environment_with_its_own_ninja(monkeypatch):
    """Without TORCH_EXTENSIONS_DIR, every entry point keeps the op where the launch scripts do
    (launch/env.sh, run here for real), never in the per-user default folder that environments with other
    versions share; the environment's ninja comes first on PATH (the test below shows why)."""
    from maskdpo.train.distributed import keep_extensions_in_environment

    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    launch_scripts = subprocess.run(
        ["bash", "-c", f'PYTHON="{sys.executable}" source "{ROOT}/launch/env.sh" && echo "$TORCH_EXTENSIONS_DIR"'],
        env=env, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    monkeypatch.setenv("PATH", os.pathsep.join(["/usr/bin", "/bin", str(Path(sys.executable).parent)]))
    keep_extensions_in_environment()
    assert Path(os.environ["TORCH_EXTENSIONS_DIR"]) == Path(launch_scripts)
    if (Path(sys.executable).parent / "ninja").is_file():
        assert os.environ["PATH"].split(os.pathsep)[:3] == [str(Path(sys.executable).parent), "/usr/bin", "/bin"]
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/elsewhere")
    keep_extensions_in_environment()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == "/elsewhere"  # a choice made is kept


@pytest.mark.slow
def test_deepspeed_op_is_built_once_announced_whichever_ninja_path_finds(tmp_path):
    """A fresh extensions folder: the first run says it builds the op there and builds it; a second run
    from a shell where PATH finds another ninja first (the system's, as without an activated
    environment) neither says so nor rebuilds it."""
    bin_dir = Path(sys.executable).parent
    system_first = os.pathsep.join(p for p in ["/usr/bin", "/bin", *os.environ["PATH"].split(os.pathsep)]
                                   if p and Path(p) != bin_dir)
    op = tmp_path / "extensions" / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    outputs, stamps = [], []
    for i, path in enumerate([f"{bin_dir}{os.pathsep}{system_first}", system_first]):
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions"), "PATH": path,
               "TRITON_INTERPRET": "0"}
        result = subprocess.run(
            [sys.executable, "-m", "maskdpo.cli", "train", "--config",
             str(ROOT / "launch" / "configs" / "tiny-cpu.yaml"), "--logging.run_dir", str(tmp_path / f"run{i}"),
             "--data.cache_dir", str(tmp_path / "cache"), "--train.max_steps", "1"],
            env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        outputs.append([line for line in result.stdout.splitlines() if line.startswith("building DeepSpeed")])
        stamps.append(op.stat().st_mtime_ns)
    assert len(outputs[0]) == 1 and str(op.parent) in outputs[0][0]
    assert outputs[1] == [] and stamps[1] == stamps[0]


@pytest.mark.slow
def test_without_a_cxx_compiler_deepspeed_runs_on_gloo_and_says_so(tmp_path):
    """No C++ compiler for DeepSpeed's CPU op (a fresh extensions folder, CXX naming nothing): one note,
    the run trains and finishes. Tied embeddings across the 2 stages: no autograd warning at backward."""
    architecture = ("{vocab_size: 4096, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, "
                    "num_attention_heads: 4, num_key_value_heads: 2, tie_word_embeddings: true}")
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "extensions"), "CXX": "no-such-cxx-compiler",
           "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "maskdpo.cli", "train", "--config", str(ROOT / "launch" / "configs" / "tiny-cpu.yaml"),
         "--logging.run_dir", str(tmp_path / "run"), "--data.cache_dir", str(tmp_path / "cache"),
         "--train.max_steps", "2", "--model.architecture", architecture],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    notes = [line for line in result.stdout.splitlines() if "no-such-cxx-compiler" in line]
    assert len(notes) == 1 and notes[0].startswith("note: a C++ compiler (no-such-cxx-compiler)"), result.stdout
    assert not any((tmp_path / "extensions").rglob("*.so"))  # nothing was built
    assert ("2 processes: 1 tensor x 2 pipeline x 1 data-parallel; stage 0: embedding, decoder 0; "
            "stage 1: decoder 1, norm, head (tied embedding)") in result.stdout.splitlines()
    for noise in NOISE:
        assert noise not in result.stdout + result.stderr, noise
    assert len(metrics(tmp_path / "run")) == 2


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_end(uninterrupted, tmp_path):
    run_dir, _ = uninterrupted
    total = len(metrics(run_dir))
    kill_after = random.Random(os.getpid()).randint(2, total - 2)
    process = train(tmp_path / "run", tmp_path / "cache", "--checkpoint.every", "1", popen=True)
    metrics_file = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if metrics_file.exists() and len(metrics_file.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "run" / "hf").exists()  # really killed before the end
    resumed = train(tmp_path / "run", tmp_path / "cache", "--checkpoint.every", "1")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resumed from" in resumed.stdout
    assert [comparable(r) for r in metrics(tmp_path / "run")] == [comparable(r) for r in metrics(run_dir)]
    ours = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "hf")).state_dict()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(run_dir / "hf")).state_dict()
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs)


@pytest.mark.slow  # a subprocess each
@pytest.mark.parametrize("extra,message", [
    (["--optim.lrr", "1e-3"], "unknown key 'optim.lrr'; did you mean optim.lr?"),
    (["--optim.lr", "fast"], "optim.lr must be float"),
    (["--parallel.zero_stage", "2"], "ZeRO stage 2 cannot be combined with a DeepSpeed pipeline"),
    (["--train.batch_pairs", "7"], "train.batch_pairs (7) must be a multiple of train.micro_batch_pairs (2)"),
    (["--trian.epochs", "1"], "unknown key 'trian.epochs'; did you mean 'train'?"),
    (["--resume"], "--resume is not needed: rerunning into the same logging.run_dir resumes"),
])
def test_config_errors_stop_before_any_process_starts(tmp_path, extra, message):
    started = time.perf_counter()
    result = train(tmp_path / "run", tmp_path / "cache", *extra)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists() and time.perf_counter() - started < 30


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_3_and_the_directory_is_held_meanwhile(tmp_path):
    process = train(tmp_path / "run", tmp_path / "cache", "--checkpoint.every", "100", "--train.epochs", "50",
                    popen=True)
    wait_for_steps(tmp_path / "run", 2, process)
    # A second run into the same directory is refused at once, naming the holder.
    started = time.perf_counter()
    second = train(tmp_path / "run", tmp_path / "cache2", "--checkpoint.every", "100", "--train.epochs", "50")
    assert second.returncode == 4, second.stdout[-2000:] + second.stderr[-2000:]
    assert f"is in use by another run: pid {process.pid} on " in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1 and time.perf_counter() - started < 30
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 3, output[-3000:]
    steps = len(metrics(tmp_path / "run"))
    assert f"stopped by signal after step {steps}" in output
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == f"step-{steps:08d}"
    assert not (tmp_path / "run" / "hf").exists()
    assert steps < 50 * 3  # really stopped early


@pytest.mark.slow
def test_non_finite_loss_stops_naming_step_pairs_and_checkpoint(tmp_path):
    result = train(tmp_path / "run", tmp_path / "cache", "--optim.lr", "1e30", "--optim.warmup_ratio", "0",
                   "--optim.gradient_clipping", "0", "--checkpoint.every", "1")
    assert result.returncode == 1
    line = next(l for l in result.stdout.replace("\r", "\n").splitlines() if "non-finite loss" in l)
    step = int(line.split("at step ")[1].split()[0])
    assert "for pairs ['" in line
    good = tmp_path / "run" / "checkpoints" / f"step-{step - 1:08d}"
    assert line.endswith(str(good))
    # The checkpoint it names is finite (checked before it was written).
    for layer in good.glob("layer_*-model_states.pt"):
        assert all(torch.isfinite(t).all() for t in torch.load(layer).values()), layer
