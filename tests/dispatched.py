"""What a piece of code really calls, recorded on the way through (every call still runs):
  Dispatched   the aten ops it dispatches (a TorchDispatchMode): to show it reads no device value
               on the host;
  Collectives  the torch.distributed collectives it calls (the functions wrapped while inside):
               which exchanges a step takes. (A TorchDispatchMode or torch.profiler sees c10d ops
               too, but with either active around gloo collectives the spawned workers were seen to
               abort at exit: "terminate called without an active exception".)"""

import contextlib

import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

# The ops that read a device value on the host: on CUDA each is a synchronisation.
HOST_READS = {"nonzero", "_local_scalar_dense", "is_nonzero", "item", "equal"}


class Dispatched(TorchDispatchMode):
    """with Dispatched() as seen: ...; seen.names lists every op's name (e.g. "mm") in call order."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def ops_dispatched(fn) -> set[str]:
    """The names of the ops fn dispatches."""
    with Dispatched() as seen:
        fn()
    return set(seen.names)


COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
               "broadcast_object_list", "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "barrier")


@contextlib.contextmanager
def collectives():
    """with collectives() as called: ...; called lists the torch.distributed collectives made inside
    (by name, in call order) by code that calls them as torch.distributed.NAME."""
    called, real = [], {name: getattr(dist, name) for name in COLLECTIVES}

    def counting(name):
        def call(*args, **kwargs):
            called.append(name)
            return real[name](*args, **kwargs)
        return call

    for name in COLLECTIVES:
        setattr(dist, name, counting(name))
    try:
        yield called
    finally:
        for name, function in real.items():
            setattr(dist, name, function)
