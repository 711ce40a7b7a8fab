"""A DeepSpeed hostfile, read before `launch/deepspeed.sh` starts anything.

    node1 slots=8        # one line per host: its name and the processes (GPUs) it runs
    node2 slots=8

DeepSpeed's runner reads the same format; this reads it first so that a bad file is one line naming
the file and line, not a traceback from the runner (or, for a missing file, a warning that it
trains on this machine alone). A hostfile that names only this machine (`localhost slots=2`, a
scheduler's single-node file) launches locally, as DeepSpeed does, without its ssh round trips to
this machine (a check that passwordless ssh works, then `hostname -I` for the address), which
fail where no ssh server runs: the rendezvous is on 127.0.0.1.

    python -m maskdpo.train.hostfile HOSTFILE PROCESSES_PER_NODE   # prints the runner's arguments
"""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


class HostfileError(ValueError):
    pass


def read_hostfile(path: str | Path) -> list[tuple[str, int, int]]:
    """(host, slots, line number) per host line; comments (#) and blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise HostfileError(f"HOSTFILE={path}: no such file")
    hosts, seen = [], {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = LINE.match(line)
        if not match:
            raise HostfileError(f"{path}:{number}: {raw.strip()!r} is not 'HOST slots=N'")
        host, slots = match.group(1), int(match.group(2))
        if host in seen:
            raise HostfileError(f"{path}:{number}: {host} is already on line {seen[host]}")
        if slots < 1:
            raise HostfileError(f"{path}:{number}: {host} has slots=0")
        seen[host] = number
        hosts.append((host, slots, number))
    if not hosts:
        raise HostfileError(f"{path}: no 'HOST slots=N' line")
    return hosts


def is_this_machine(host: str) -> bool:
    names = {"localhost", "::1", socket.gethostname(), socket.getfqdn()}
    return host in names or host.startswith("127.")


def runner_arguments(path: str | Path, processes_per_node: int) -> list[str]:
    """The arguments for deepspeed.launcher.runner that launch on the hosts of `path`."""
    hosts = read_hostfile(path)
    for host, slots, number in hosts:
        if slots < processes_per_node:  # DeepSpeed would start them anyway (--num_gpus overrides slots)
            raise HostfileError(f"{path}:{number}: {host} has slots={slots}, fewer than the {processes_per_node} "
                                f"processes per node asked for")
    arguments = ["--hostfile", str(path)]
    if len(hosts) == 1 and is_this_machine(hosts[0][0]):
        arguments += ["--no_ssh_check", "--master_addr", "127.0.0.1"]
    return arguments


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m maskdpo.train.hostfile HOSTFILE PROCESSES_PER_NODE", file=sys.stderr)
        return 2
    try:
        print(" ".join(runner_arguments(argv[0], int(argv[1]))))
    except HostfileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
