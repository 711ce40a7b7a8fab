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
    """The tiny-cpu recipe trained once, start to end: what interrupted runs must reproduce."""
    from train_helpers import train

    root = tmp_path_factory.mktemp("train")
    result = train(root / "run", root / "cache")
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


# Groups whose shared fixture costs minutes: collected first, so that under xdist a worker starts on
# each of them at once while the other workers take the many short tests.
LONG_GROUPS = ("pipeline-interpreted", "pipeline-pytorch", "pipeline-four")


def xdist_group(item):
    marker = item.get_closest_marker("xdist_group")
    return None if marker is None else (marker.args[0] if marker.args else marker.kwargs.get("name"))


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """With pytest-xdist's `--dist loadgroup` (scripts/test.sh), tests that share one of a file's
    module fixtures (tiny models, a built wheel, a measured layout) run on one worker, so the fixture
    is built once. Tests of one pipeline launch carry their group themselves (pipeline_launch.py);
    session fixtures that take seconds (the trained tiny-cpu run) are rather built once per worker
    than make one worker run all their tests."""
    for item in items:
        if xdist_group(item) is not None:
            continue
        shared = []
        for name in item.fixturenames:
            definitions = item._fixtureinfo.name2fixturedefs.get(name) or ()
            for definition in definitions[-1:]:
                if definition.scope in ("package", "module") and definition.baseid:  # ours, not pytest's
                    shared.append((definition.baseid, name))
        if shared:
            baseid, name = min(shared)
            item.add_marker(pytest.mark.xdist_group(f"{baseid}::{name}"))
    rank = {group: i for i, group in enumerate(LONG_GROUPS)}
    items.sort(key=lambda item: rank.get(xdist_group(item), len(rank)))  # stable: the rest keep their order
