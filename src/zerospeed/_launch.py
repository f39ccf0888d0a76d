"""``zerospeed launch``: torchrun, plus DeepSpeed's launcher options translated to its flags.

[Note: translation only]
Nothing here starts processes, picks ports or talks to other hosts: the command line is
rewritten into a torchrun command line and ``torch.distributed.run.main`` runs it in this
process. torchrun's options pass through unchanged (spelled out in full: abbreviations are
refused so that a DeepSpeed option is never mistaken for a torchrun one). A hostfile
(``HOST slots=N`` lines) becomes ``--nnodes`` = number of hosts, ``--nproc-per-node`` = slots
and a c10d rendezvous at the first host, with a rendezvous id derived from the command
itself: torchrun does not log into other hosts the way DeepSpeed's pdsh runner does, so the
same command is run on every host (by ssh, Slurm, a job scheduler) and all of them must
derive the same id.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LaunchError", "LaunchPlan", "main", "parse_host_filter", "parse_hostfile", "translate"]

#: The rendezvous port when neither --master_port nor the hostfile says otherwise (torchrun's
#: and DeepSpeed's default).
DEFAULT_PORT = 29500

#: Options zerospeed adds to torchrun's (dest names); they never reach torchrun.
_OURS = ("hostfile", "num_gpus", "num_nodes", "include", "exclude", "dry_run")


class LaunchError(ValueError):
    """A launcher option that cannot be translated: the message says which and how to fix it."""


@dataclass
class LaunchPlan:
    """The torchrun command one ``zerospeed launch`` command stands for."""

    argv: list[str]
    """torchrun's arguments (what follows ``torchrun``)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables set for torchrun and its workers (``CUDA_VISIBLE_DEVICES``)."""
    dry_run: bool = False
    """Print the command instead of running it."""

    def command(self) -> str:
        """The plan as one shell command line."""
        prefix = [f"{name}={value}" for name, value in self.env.items()]
        return shlex.join([*prefix, "torchrun", *self.argv])


def parse_hostfile(path: str | os.PathLike[str]) -> dict[str, int]:
    """Hosts and their slot counts, in file order, from DeepSpeed's hostfile format.

    Each line is ``HOSTNAME slots=N``; ``#`` starts a comment, blank lines are skipped.

    Raises:
        LaunchError: the file cannot be read, has no hosts, or a line is malformed or
            repeats a host; the message names the file and the line number.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise LaunchError(f"cannot read hostfile {path}: {exc.strerror}") from exc
    hosts: dict[str, int] = {}
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"hostfile {path}, line {number}"
        parts = line.split()
        slots = parts[1].removeprefix("slots=") if len(parts) == 2 else ""
        if len(parts) != 2 or not parts[1].startswith("slots=") or not slots.isdigit():
            raise LaunchError(
                f"{where}: expected 'HOSTNAME slots=N' (e.g. 'worker-1 slots=8'), "
                f"got {raw.strip()!r}"
            )
        if int(slots) < 1:
            raise LaunchError(f"{where}: {parts[0]} has slots={slots}; slots must be at least 1")
        if parts[0] in hosts:
            raise LaunchError(
                f"{where}: host {parts[0]} is already listed on line {first_line[parts[0]]}; "
                "list each host once"
            )
        hosts[parts[0]] = int(slots)
        first_line[parts[0]] = number
    if not hosts:
        raise LaunchError(f"hostfile {path} lists no hosts; add lines like 'worker-1 slots=8'")
    return hosts


def parse_host_filter(spec: str, flag: str) -> dict[str, list[int] | None]:
    """DeepSpeed's ``--include``/``--exclude`` value: ``HOST[:SLOT,SLOT...]`` joined by ``@``.

    Returns:
        Host -> the listed slot indices (sorted), or None when the host is named alone.

    Raises:
        LaunchError: an empty part, a repeated host or a slot that is not a number.
    """
    result: dict[str, list[int] | None] = {}
    for part in spec.split("@"):
        host, colon, slots = part.partition(":")
        if not host or (colon and not slots):
            raise LaunchError(
                f"{flag} {spec!r}: {part!r} is not HOST or HOST:SLOT[,SLOT...] "
                "(e.g. 'worker-1:0,1@worker-2')"
            )
        if host in result:
            raise LaunchError(f"{flag} {spec!r}: host {host} is named twice")
        if not colon:
            result[host] = None
            continue
        indices = slots.split(",")
        if not all(i.isdigit() for i in indices):
            raise LaunchError(f"{flag} {spec!r}: slots of {host} must be numbers, got {slots!r}")
        result[host] = sorted({int(i) for i in indices})
    return result


def _select(pool: dict[str, int], include: str | None, exclude: str | None) -> dict[str, list[int]]:
    """The hosts and slot indices left after DeepSpeed's host filters."""
    selected = {host: list(range(slots)) for host, slots in pool.items()}
    flag, spec = ("--include", include) if include is not None else ("--exclude", exclude)
    if spec is None:
        return selected
    chosen = parse_host_filter(spec, flag)
    for host, slots in chosen.items():
        if host not in pool:
            raise LaunchError(
                f"{flag}: host {host} is not in the hostfile (hosts: {', '.join(pool)})"
            )
        bad = [s for s in slots or () if s >= pool[host]]
        if bad:
            raise LaunchError(
                f"{flag}: {host} has slots 0-{pool[host] - 1} in the hostfile, not {bad[0]}"
            )
    if include is not None:
        return {h: chosen[h] or s for h, s in selected.items() if h in chosen}
    kept = {}
    for host, slots in selected.items():
        if host in chosen and chosen[host] is None:
            continue
        left = [s for s in slots if s not in (chosen.get(host) or ())]
        if left:
            kept[host] = left
    if not kept:
        raise LaunchError(f"--exclude {exclude!r} leaves no hosts to run on")
    return kept


def _uniform(
    hosts: dict[str, list[int]], num_gpus: int | None, filtered: str | None
) -> tuple[int, list[int] | None]:
    """Processes per node and, when they are not the first N devices, the device indices.

    torchrun starts the same number of processes on every node, so hosts must agree.
    """
    if num_gpus is not None:
        short = {h: len(s) for h, s in hosts.items() if len(s) < num_gpus}
        if short:
            listed = ", ".join(f"{h} (slots={n})" for h, n in short.items())
            raise LaunchError(f"--num_gpus {num_gpus} is more than {listed} has")
        return num_gpus, None
    counts = {len(s) for s in hosts.values()}
    if len(counts) > 1:
        listed = ", ".join(f"{h}={len(s)}" for h, s in hosts.items())
        fix = (
            f"select the same number of slots on every host with {filtered}"
            if filtered
            else f"make the slots equal, or pass --num_gpus N with N <= {min(counts)} to use "
            "the first N devices of each host"
        )
        raise LaunchError(
            f"hosts have unequal slots ({listed}); torchrun starts the same number of "
            f"processes on every node: {fix}"
        )
    lists = {tuple(s) for s in hosts.values()}
    if len(lists) > 1:
        listed = ", ".join(f"{h}:{','.join(map(str, s))}" for h, s in hosts.items())
        raise LaunchError(
            f"the host filter selects different device indices per host ({listed}); "
            "CUDA_VISIBLE_DEVICES is one setting for every node: select the same slots on "
            "each host"
        )
    (slots,) = lists
    return len(slots), (None if list(slots) == list(range(len(slots))) else list(slots))


def _parser() -> argparse.ArgumentParser:
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    parser.prog = "zerospeed launch"
    parser.description = (
        "Run a training script with torchrun. Every torchrun option is accepted unchanged "
        "(spelled out in full); DeepSpeed's launcher options below are translated into "
        "torchrun's. With --hostfile, run the same command on every host."
    )
    parser.allow_abbrev = False
    ours = parser.add_argument_group("DeepSpeed launcher options (translated for torchrun)")
    ours.add_argument(
        "--hostfile",
        help="lines 'HOST slots=N': --nnodes = hosts, --nproc-per-node = slots, c10d "
        "rendezvous at the first host (or --master_addr) on --master_port (default 29500)",
    )
    ours.add_argument(
        "--num_gpus", "--num-gpus", type=int, help="processes per node (--nproc-per-node)"
    )
    ours.add_argument(
        "--num_nodes",
        "--num-nodes",
        type=int,
        help="nodes (--nnodes); with a hostfile, its first N hosts",
    )
    ours.add_argument(
        "--include",
        help="only these hosts/devices: 'HOST[:SLOT,...]@HOST...' (e.g. worker-1:0,1@worker-2)",
    )
    ours.add_argument("--exclude", help="drop these hosts/devices (same syntax as --include)")
    ours.add_argument(
        "--dry-run",
        action="store_true",
        help="print the torchrun command and exit without running it",
    )
    return parser


def _split(parser: argparse.ArgumentParser, head: list[str]) -> list[tuple[str, str, list[str]]]:
    """The launcher options before the script as (dest, value, tokens), in order."""
    by_flag = {flag: a for a in parser._actions for flag in a.option_strings}
    out = []
    i = 0
    while i < len(head):
        token = head[i]
        name, eq, value = token.partition("=") if token.startswith("--") else (token, "", "")
        action = by_flag.get(name)
        if action is None and not token.startswith("--") and len(token) > 2:
            action, eq, value = by_flag.get(token[:2]), "=", token[2:]
        if action is None:  # argparse accepted it, so it is a value we failed to pair up
            raise LaunchError(f"cannot tell which option {token!r} belongs to")
        if action.nargs == 0:
            out.append((action.dest, "1", [token]))
            i += 1
        elif eq:
            out.append((action.dest, value, [token]))
            i += 1
        else:
            out.append((action.dest, head[i + 1], head[i : i + 2]))
            i += 2
    return out


#: A torchrun setting the translation decided: dest -> (value, the option it comes from).
_Settings = dict[str, tuple[str, str]]


def _from_hostfile(args: argparse.Namespace, given: dict[str, str]) -> tuple[_Settings, dict, str]:
    """Settings, environment and rendezvous host for a ``--hostfile`` launch."""
    hosts = _select(parse_hostfile(args.hostfile), args.include, args.exclude)
    if args.num_nodes is not None:
        if args.num_nodes > len(hosts):
            raise LaunchError(
                f"--num_nodes {args.num_nodes}: hostfile {args.hostfile} lists only "
                f"{len(hosts)} hosts"
            )
        hosts = dict(list(hosts.items())[: args.num_nodes])
    filtered = "--include" if args.include is not None else "--exclude" if args.exclude else None
    nproc, devices = _uniform(hosts, args.num_gpus, filtered)
    source = f"--hostfile {args.hostfile}"
    settings = {"nnodes": (str(len(hosts)), source), "nproc_per_node": (str(nproc), source)}
    env = {} if devices is None else {"CUDA_VISIBLE_DEVICES": ",".join(map(str, devices))}
    return settings, env, given.get("master_addr", next(iter(hosts)))


def _without_hostfile(
    args: argparse.Namespace, given: dict[str, str]
) -> tuple[_Settings, dict, str | None]:
    """Settings, environment and rendezvous host (multi-node only) without a hostfile."""
    settings: _Settings = {}
    env = {}
    if args.exclude is not None:
        raise LaunchError(
            "--exclude needs a --hostfile to exclude from; write one with lines like "
            "'localhost slots=8'"
        )
    if args.include is not None:
        local = parse_host_filter(args.include, "--include")
        if list(local) != ["localhost"]:
            raise LaunchError(
                f"--include {args.include!r} without --hostfile can only select devices of "
                "localhost (e.g. localhost:0,1); pass --hostfile for other hosts"
            )
        if local["localhost"] is not None:
            settings["nproc_per_node"] = (str(len(local["localhost"])), "--include")
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, local["localhost"]))
    if args.num_gpus is not None:
        settings["nproc_per_node"] = (str(args.num_gpus), "--num_gpus")
    if args.num_nodes is None:
        return settings, env, None
    settings["nnodes"] = (str(args.num_nodes), "--num_nodes")
    if args.num_nodes > 1 and "master_addr" not in given:
        raise LaunchError(
            f"--num_nodes {args.num_nodes} without --hostfile needs --master_addr (the "
            "address of the first node) for the rendezvous; or pass --hostfile"
        )
    return settings, env, given["master_addr"] if args.num_nodes > 1 else None


def _agrees(dest: str, given: str, value: str) -> bool:
    if dest != "nnodes":
        return given == value
    low, _, high = given.partition(":")  # torchrun also takes MIN:MAX
    return low == value and high in ("", value)


def translate(argv: Sequence[str]) -> LaunchPlan:
    """The torchrun command for ``zerospeed launch ARGV``.

    Raises:
        LaunchError: a hostfile or filter that cannot be read or mapped, or options that
            contradict each other; the message names them and how to fix it.
        SystemExit: argparse's usage errors and ``--help``.
    """
    argv = list(argv)
    parser = _parser()
    args = parser.parse_args(argv)
    split = len(argv) - 1 - len(args.training_script_args)  # where the script starts
    options = _split(parser, argv[:split])
    given = {dest: value for dest, value, _ in options}
    if args.include is not None and args.exclude is not None:
        raise LaunchError("--include and --exclude cannot be combined; use one of them")
    if (args.include or args.exclude) and (args.num_nodes or args.num_gpus):
        raise LaunchError(
            "--num_nodes/--num_gpus cannot be combined with --include/--exclude; pick the "
            "hosts and devices with one of them"
        )
    if args.hostfile is not None:
        settings, env, rendezvous_host = _from_hostfile(args, given)
    else:
        settings, env, rendezvous_host = _without_hostfile(args, given)
    consumed = set(_OURS)
    if rendezvous_host is not None:
        if "standalone" in given:
            raise LaunchError(
                "--standalone runs one node with its own rendezvous; it cannot be combined "
                "with --hostfile or --num_nodes > 1"
            )
        source = "--hostfile" if args.hostfile is not None else "--num_nodes"
        endpoint = f"{rendezvous_host}:{given.get('master_port', DEFAULT_PORT)}"
        settings |= {"rdzv_backend": ("c10d", source), "rdzv_endpoint": (endpoint, source)}
        if "rdzv_id" not in given:
            values = {dest: value for dest, (value, _) in settings.items()}
            stable = json.dumps([values, args.training_script, args.training_script_args])
            digest = hashlib.sha256(stable.encode()).hexdigest()[:16]
            settings["rdzv_id"] = (f"zs-{digest}", source)
        consumed |= {"master_addr", "master_port"}
    flags = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
    forwarded = [t for dest, _, tokens in options if dest not in consumed for t in tokens]
    for dest, (value, source) in settings.items():
        if dest not in given:
            forwarded += [flags[dest], value]
        elif not _agrees(dest, given[dest], value):
            raise LaunchError(
                f"{flags[dest]} {given[dest]} contradicts {source}, which gives {value}; "
                f"drop {flags[dest]} or make them agree"
            )
    return LaunchPlan(argv=forwarded + argv[split:], env=env, dry_run=args.dry_run)


def main(argv: Sequence[str], prog: str = "zerospeed launch") -> int:
    """Run ``zerospeed launch``; returns the exit code (1 when a worker failed)."""
    try:
        plan = translate(argv)
    except LaunchError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if plan.dry_run:
        print(plan.command())
        return 0
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    os.environ.update(plan.env)
    try:
        torchrun(plan.argv)
    except ChildFailedError as exc:  # what the torchrun command shows: which rank failed, how
        print(exc, file=sys.stderr)
        return 1
    return 0
