"""Test setup: the Triton kernels run under the interpreter on the CPU.

TRITON_INTERPRET must be set before any @triton.jit kernel is defined, i.e. before maskdpo.kernels
is first imported; pytest imports this file first.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """The tiny-cpu recipe trained once, start to end: what interrupted runs must reproduce. Trained
    once per session, not once per xdist worker: the first worker to ask trains it in the folder the
    workers share, under a file lock; the others wait and read it (a run costs 20-40 s on 2 cores)."""
    import json
    import subprocess

    from filelock import FileLock
    from train_helpers import train

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # every worker's basetemp lies in the session's one folder
    root = shared / "uninterrupted"
    record = root / "result.json"
    with FileLock(str(shared / "uninterrupted.lock")):
        if not record.exists():
            root.mkdir(exist_ok=True)
            result = train(root / "run", root / "cache")
            record.write_text(json.dumps({"returncode": result.returncode, "stdout": result.stdout,
                                          "stderr": result.stderr}))
    result = subprocess.CompletedProcess(args="maskdpo train", **json.loads(record.read_text()))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "run", result


@pytest.fixture(scope="session")
def pipeline_models(tmp_path_factory):
    """The tiny HF checkpoints the pipeline and tensor-parallel tests train (tests/pipeline_launch.py)."""
    from pipeline_launch import build_models

    return build_models(tmp_path_factory.mktemp("pipeline-models"))


@pytest.fixture(scope="session")
def pipeline_launch(pipeline_models, tmp_path_factory):
    """pipeline_launch(group): one torchrun launch per group of scenarios for the whole session."""
    from pipeline_launch import launcher

    return launcher(pipeline_models, tmp_path_factory)


# The kernel test files: each test must run the kernels on the device under test
# (MASKDPO_TEST_DEVICE; benchmarks/gpu_check.py sets cuda), which the fixture below records.
KERNEL_TEST_FILES = ("test_sequence_logps.py", "test_linear_sequence_logps.py")


@pytest.fixture(autouse=True)
def kernel_devices(request, monkeypatch):
    """In the kernel test files, the device of every tensor the public kernel functions were given
    (their logits or hidden states, as each checks them first); with MASKDPO_KERNEL_DEVICES=FILE,
    one JSON line per test (its id and those devices) is appended to FILE
    (tests/test_kernel_devices.py reads it)."""
    if request.path.name not in KERNEL_TEST_FILES:
        yield None
        return
    import importlib
    import json

    seen = []
    for name in ("maskdpo.kernels.sequence_logps", "maskdpo.kernels.linear_sequence_logps"):
        module = importlib.import_module(name)
        check = module.check_logits

        def recording(api, logits, ndim, check=check):
            if hasattr(logits, "device"):
                seen.append(logits.device.type)
            return check(api, logits, ndim)

        monkeypatch.setattr(module, "check_logits", recording)
    yield seen
    out = os.environ.get("MASKDPO_KERNEL_DEVICES")
    if out:
        with open(out, "a") as f:
            f.write(json.dumps({"test": request.node.nodeid, "devices": sorted(set(seen))}) + "\n")


def pytest_configure(config):
    """Under xdist, build DeepSpeed's CPU collectives op once, in the controller, before any worker
    starts: on a fresh environment two workers would otherwise build it in the same folder at once,
    and one links while the other rewrites its objects (seen: ld "No such file or directory")."""
    if not getattr(config.option, "numprocesses", None) or hasattr(config, "workerinput"):
        return
    from maskdpo.accelerator import name_cpu_accelerator
    from maskdpo.train.distributed import keep_extensions_in_environment

    name_cpu_accelerator()
    keep_extensions_in_environment()
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is not None and deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        builder.load(verbose=False)  # a no-op when it is built


# Files that take minutes (launches, real training runs), collected first: under xdist's
# --dist loadfile (scripts/test.sh) a worker starts on each at once while the others take the many
# short files. Each file runs on one worker, so its module fixtures are built once.
LONG_FILES = ("test_pipeline.py", "test_run_state.py", "test_train_command.py", "test_tensor_parallel.py",
              "test_sequence_logps.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
