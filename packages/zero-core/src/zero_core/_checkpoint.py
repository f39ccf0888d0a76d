"""Checkpoints: save and resume exactly, at any world size, without ever losing the last one.

[Note: the checkpoint layout]
``save_dir/<tag>/meta.pt`` (written by rank 0) holds what every rank shares: the format
version, world size, stage, the counters, the schedule, the client state, every parameter's
name and shape, the optimizer's hyperparameters per group, and the full values of what the
optimizer does not own (frozen parameters, buffers). ``save_dir/<tag>/rank<r>.pt`` holds
rank r's partition: for every parameter it owns a shard of, the fp32 master shard, the
optimizer state of that shard and where the shard sits in the flat parameter; plus the
rank's RNG states, data-sampler position and loss scaler. ``save_dir/latest`` names the
newest tag. With ``checkpoint.use_node_local_storage`` the first rank of each node writes
``meta`` and ``latest`` (into its node's own ``save_dir``) instead of rank 0 alone.
Everything is plain tensors and containers, loaded with ``torch.load(weights_only=True)``:
a checkpoint can never run code. With the zero-aio writer the bulk tensors live next to
each ``.pt`` file in a ``.zaio`` file (see [Note: the two checkpoint writers] in
``_ckpt_io``); ``meta.pt`` records which wrote it, and either format loads whichever writer
is configured now.

[Note: never lose the last checkpoint]
A save writes into ``save_dir/.<tag>.partial/``: each file to a temporary name, fsynced,
renamed. Once every rank has finished, rank 0 renames the directory to ``<tag>`` (an older
``<tag>`` is moved aside first and deleted after), fsyncs ``save_dir``, and only then
rewrites ``latest`` the same way. A process killed at any point leaves the previous
checkpoint whole and ``latest`` pointing at it.

[Note: loading at another world size]
A parameter's shard on rank r covers elements ``[r*S, (r+1)*S)`` of the flat parameter
(``S = ceil(numel / nshards)``). To load at another world size, each rank works out which
saved shards overlap its new range and copies those slices, for the fp32 master and every
optimizer-state tensor of the shard's size; scalar state (Adam's ``step``) is copied.
``.pt`` rank files are opened memory-mapped, so a rank reads only the bytes it needs; from
``.zaio`` files it reads only the saved shards that overlap its range (each whole, to verify
its checksum). At the same world size a rank reads its own ``.zaio`` file in one pass,
straight into its optimizer's master and state tensors.
"""

from __future__ import annotations

import os
import random
import shutil
import warnings
import zlib
from typing import Any

import torch

from . import _dist
from ._ckpt_io import SUFFIX, ZERO_AIO, choose_writer, open_tensors, pull_tensors, write_tensors
from ._shard import ParamShard
from ._stage3 import full_copy, is_partitioned

__all__ = ["load_checkpoint", "save_checkpoint", "validate_tag"]

FORMAT = 2  # 2: tensors may live in zero-aio files; 1 (still read): always inline
_READS = (1, 2)
META = "meta.pt"
EXTRA = "extra/"  # the zero-aio names of rank 0's full frozen params and buffers
LATEST = "latest"


def validate_tag(tag: object) -> str:
    """A tag is one path component: no separators, no ``..``, not empty."""
    tag = str(tag)
    if not tag or tag in (".", "..") or "/" in tag or "\\" in tag or os.sep in tag:
        raise ValueError(
            f"checkpoint tag {tag!r} must be a single directory name (no path separators, "
            f"not '.' or '..'), e.g. 'global_step100'"
        )
    if tag.startswith("."):
        raise ValueError(f"checkpoint tag {tag!r} must not start with '.' (reserved)")
    return tag


def _rank_file(rank: int) -> str:
    return f"rank{rank}.pt"


def _field_prefix(name: str, key: str) -> str:
    """Where param ``name``'s ``"master"`` or optimizer-state entry ``key`` is named in a
    zero-aio rank file: this prefix + ``key``."""
    return f"shards/{name}/" if key == "master" else f"shards/{name}/state/"


def _write_atomic(obj: Any, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_part(obj: dict[str, Any], path: str, writer: str, aio: dict | None, pull: Any) -> None:
    """``obj`` to ``path`` (a ``.pt`` file); with zero-aio, ``pull(obj, out)`` first moves
    its bulk tensors into ``out``, which goes to the ``.zaio`` file next to it."""
    obj["tensor_file"] = None
    if writer == ZERO_AIO:
        tensors: dict[str, torch.Tensor] = {}
        pull(obj, tensors)
        obj["tensor_file"] = os.path.basename(path).removesuffix(".pt") + SUFFIX
        write_tensors(tensors, os.path.join(os.path.dirname(path), obj["tensor_file"]), aio)
    _write_atomic(obj, path)


def _pull_shards(per_rank: dict[str, Any], out: dict[str, torch.Tensor]) -> None:
    for name, record in per_rank["shards"].items():
        pull_tensors(record, ["master"], _field_prefix(name, "master"), out)
        flat = [k for k, v in record["state"].items() if torch.is_tensor(v) and v.numel() > 1]
        pull_tensors(record["state"], flat, _field_prefix(name, "state"), out)


def _pull_extra(meta: dict[str, Any], out: dict[str, torch.Tensor]) -> None:
    pull_tensors(meta["extra"], list(meta["extra"]), EXTRA, out)


def _write_text_atomic(text: str, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _barrier() -> None:
    if _dist.world_size() > 1:
        torch.distributed.barrier()


def _check_same_tag(tag: str, mode: str) -> None:
    """checkpoint.tag_validation: every rank must save under the same tag."""
    if mode == "Ignore" or _dist.world_size() == 1:
        return
    h = zlib.crc32(tag.encode())
    t = torch.tensor([h, -h], dtype=torch.int64)
    _dist.all_reduce_max(t)
    if int(t[0]) != -int(t[1]):
        message = f"rank {_dist.rank()}: checkpoint tag {tag!r} differs between ranks"
        if mode == "Fail":
            raise ValueError(message + " (checkpoint.tag_validation = Fail)")
        warnings.warn(message, stacklevel=3)


# -- what is saved ---------------------------------------------------------------------------


def _local_rank() -> int:
    """This process's rank on its node (torchrun's ``LOCAL_RANK``; the global rank without
    a launcher)."""
    return int(os.environ.get("LOCAL_RANK", _dist.rank()))


def _all_shards(engine: Any) -> list[ParamShard]:
    return [s for g in engine.shard_groups for s in g]


def _shard_record(engine: Any, s: ParamShard) -> dict[str, Any]:
    opt = engine.optimizer
    key = s.param if opt.direct else s.master
    master = (s.param.detach().reshape(-1) if opt.direct else s.master.detach()).float()
    state = {
        k: (v.detach().reshape(-1).clone() if torch.is_tensor(v) and v.numel() > 1 else v)
        for k, v in opt.inner.state.get(key, {}).items()
    }
    return {
        "master": master.clone(),
        "state": state,
        "nshards": s.nshards,
        "rank": s.rank,
        "numel": s.numel,
        "expert": s.group is not None,
    }


def _aliases(module: torch.nn.Module) -> dict[str, str]:
    """Tied parameters: every extra name of a parameter -> the name it is saved under."""
    first: dict[int, str] = {}
    out = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _outside_optimizer(engine: Any) -> dict[str, torch.Tensor]:
    """Full values of parameters the optimizer does not own, and of buffers (rank 0 saves)."""
    owned = {id(s.param) for s in _all_shards(engine)}
    out = {name: full_copy(p) for name, p in engine.module.named_parameters() if id(p) not in owned}
    for name, b in engine.module.named_buffers():
        out[name] = b.detach().clone()
    return out


def save_checkpoint(
    engine: Any,
    save_dir: str | os.PathLike,
    tag: str | None = None,
    client_state: dict[str, Any] | None = None,
    save_latest: bool = True,
) -> str:
    """Save ``engine`` (see the Notes above); returns the checkpoint directory."""
    if engine.optimizer is None:
        raise RuntimeError("save_checkpoint needs an engine with an optimizer")
    save_dir = os.fspath(save_dir)
    tag = validate_tag(tag if tag is not None else f"global_step{engine.global_steps}")
    sections = engine.config.sections.get("checkpoint") or {}
    _check_same_tag(tag, str(sections.get("tag_validation", "Warn")).capitalize())
    writer = choose_writer(engine.config.sections)
    aio = engine.config.sections.get("aio")
    rank = _dist.rank()
    node_local = bool(sections.get("use_node_local_storage"))
    # The rank that writes the shared files: rank 0, or with node-local storage the first
    # rank of every node, so each node's disk holds a loadable checkpoint of its own ranks.
    leader = _local_rank() == 0 if node_local else rank == 0
    final = os.path.join(save_dir, tag)
    partial = os.path.join(save_dir, f".{tag}.partial")
    if leader:
        os.makedirs(save_dir, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # what a killed save left behind
        os.makedirs(partial)
    _barrier()
    shards = _all_shards(engine)
    extra = _outside_optimizer(engine)
    per_rank = {
        "format": FORMAT,
        "shards": {s.name: _shard_record(engine, s) for s in shards},
        "rng": _rng_state(),
        "sampler": engine.data_position(),
        "scaler": engine.optimizer.scaler.state_dict() if engine.optimizer.scaler else None,
        # an optimizer that communicates itself keeps per-rank state beyond its params'
        # (1-bit Adam's error feedback): saved whole, restored at the same world size
        "inner": (
            engine.optimizer.inner.state_dict()
            if getattr(engine.optimizer.inner, "communicates_gradients", False)
            else None
        ),
    }
    _write_part(per_rank, os.path.join(partial, _rank_file(rank)), writer, aio, _pull_shards)
    if leader:
        inner = engine.optimizer.inner.state_dict()
        meta = {
            "format": FORMAT,
            "writer": writer,
            "world_size": _dist.world_size(),
            "node_local": node_local,
            "stage": engine.stage,
            "dtype": str(engine.dtype).removeprefix("torch."),
            "counters": {
                "global_steps": engine.global_steps,
                "global_samples": engine.global_samples,
                "skipped_steps": engine.skipped_steps,
                "micro_steps": engine.micro_steps,
            },
            "params": {s.name: list(s.shape) for s in shards},
            "aliases": _aliases(engine.module),
            "param_groups": [
                {k: v for k, v in g.items() if k != "params"} for g in inner["param_groups"]
            ],
            "groups": [[s.name for s in g] for g in engine.shard_groups],
            "extra": extra,
            "lr_scheduler": engine.lr_scheduler.state_dict() if engine.lr_scheduler else None,
            "client_state": client_state or {},
        }
        _write_part(meta, os.path.join(partial, META), writer, aio, _pull_extra)
    _barrier()
    if leader:
        aside = None
        if os.path.exists(final):
            aside = os.path.join(save_dir, f".{tag}.old-{os.getpid()}")
            os.replace(final, aside)
        os.replace(partial, final)
        _fsync_dir(save_dir)
        if aside:
            shutil.rmtree(aside, ignore_errors=True)
        if save_latest:
            _write_text_atomic(tag, os.path.join(save_dir, LATEST))
            _fsync_dir(save_dir)
    _barrier()
    return final


# -- loading ---------------------------------------------------------------------------------


def _load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # an unpickling refusal, a truncated file, ...
        raise ValueError(f"{path}: not a loadable zero-core checkpoint file ({exc})") from exc


def resolve_tag(load_dir: str, tag: str | None) -> str | None:
    if tag is not None:
        return validate_tag(tag)
    latest = os.path.join(load_dir, LATEST)
    if not os.path.exists(latest):
        return None
    with open(latest) as f:
        return validate_tag(f.read().strip())


class SavedShards:
    """The saved partitions of a checkpoint, read lazily rank by rank (``.pt`` files
    memory-mapped, ``.zaio`` files tensor by tensor)."""

    def __init__(self, directory: str, world: int, node_local: bool = False, home: int = 0) -> None:
        self.directory = directory
        self.world = world
        self.node_local = node_local
        # The rank whose file is read for what every rank's file records alike (a shard's
        # size and state keys): this rank's own at the same world size, which node-local
        # storage guarantees is on this node.
        self.home = home
        self._files: dict[int, Any] = {}
        self._tensors: dict[int, Any] = {}

    def rank(self, r: int) -> dict[str, Any]:
        """Rank ``r``'s saved structure (bulk tensors are ``None`` in zero-aio checkpoints:
        read them through ``flat``)."""
        if r not in self._files:
            path = os.path.join(self.directory, _rank_file(r))
            if self.node_local and not os.path.exists(path):
                raise FileNotFoundError(
                    f"{path} is not on this node: the checkpoint was saved with "
                    f"checkpoint.use_node_local_storage, so each node holds only its own ranks' "
                    f"files; load it at the same world size on the same nodes, or copy every "
                    f"node's rank files into one directory first"
                )
            self._files[r] = _load(path)
            self._tensors[r] = open_tensors(self.directory, self._files[r])
        return self._files[r]

    def finish(self) -> None:
        """Carry out the zero-aio reads ``element_range`` queued (one pass over each file);
        until then the ``out`` tensors it was given may not hold their values yet."""
        for store in self._tensors.values():
            if store is not None:
                store.finish()

    def _read_into(self, r: int, name: str, key: str, start: int, out: torch.Tensor) -> bool:
        """Have rank ``r``'s zero-aio file read the saved ``key`` of ``name`` from element
        ``start`` into ``out`` (maybe queued until ``finish``); False if it is not there."""
        record = self.rank(r)["shards"][name]
        value = record["master"] if key == "master" else record["state"].get(key)
        field = _field_prefix(name, key) + key
        store = self._tensors[r]
        if value is not None or store is None or field not in store:
            return False
        store.read_into(field, start, out)
        return True

    def flat(self, r: int, name: str, key: str) -> Any:
        """The saved flat shard ``key`` ("master" or a state entry) of ``name`` on rank
        ``r`` (a non-tensor state value as saved; ``None`` if absent)."""
        record = self.rank(r)["shards"][name]
        value = record["master"] if key == "master" else record["state"].get(key)
        store = self._tensors[r]
        return store.resolve(value, _field_prefix(name, key) + key) if store else value

    def flat_state(self, r: int, name: str) -> dict[str, torch.dtype]:
        """The optimizer-state entries of ``name`` saved as flat shards on rank ``r``, with
        their dtypes (read from the index, not the data, for zero-aio files)."""
        record = self.rank(r)["shards"][name]
        store = self._tensors[r]
        out = {}
        for k, v in record["state"].items():
            field = _field_prefix(name, k) + k
            if v is None and store is not None and field in store:
                out[k] = store.spec(field)[0]
            elif torch.is_tensor(v) and v.numel() > 1:
                out[k] = v.dtype
        return out

    def pick(self, owners: list[int]) -> int:
        """One of ``owners`` to read a shard's common record from: ``home`` if it is one."""
        return self.home if self.home in owners else owners[0]

    def owners(self, name: str, ranks: list[int] | None = None) -> list[int]:
        """The saved ranks whose files hold the shards of ``name``, in shard order. ``ranks``
        are the global ranks of the param's group (an expert's); default: the world."""
        group = ranks or list(range(self.world))
        record = self.rank(self.pick(group))["shards"].get(name)
        if record is None:
            raise KeyError(name)
        # a parameter saved whole is in every rank's file: read the local one
        return group[: record["nshards"]] if record["nshards"] > 1 else [self.pick(group)]

    def element_range(
        self,
        name: str,
        key: str,
        begin: int,
        end: int,
        ranks: list[int] | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Elements ``[begin, end)`` of the flat saved tensor ``key`` ("master" or a state
        entry) of parameter ``name``, assembled from the saved shards: a new tensor, or
        read straight into ``out`` (``end - begin`` elements) when given, which saves a
        copy of every byte on the way into the optimizer (reads from zero-aio files may
        land only at ``finish()``)."""
        owners = self.owners(name, ranks)
        first = self.rank(self.pick(owners))["shards"][name]
        size = -(-first["numel"] // first["nshards"])
        pieces = []
        at = 0
        for i, r in enumerate(owners):
            lo, hi = i * size, (i + 1) * size
            if hi <= begin or lo >= end:
                continue
            a, b = max(begin, lo) - lo, min(end, hi) - lo
            if out is not None and self._read_into(r, name, key, a, out[at : at + b - a]):
                at += b - a
                continue
            source = self.flat(r, name, key)
            if source is None or not torch.is_tensor(source):
                return None
            if out is None:
                pieces.append(source[a:b])
            else:  # copy_ also moves to out's device and dtype
                out[at : at + b - a].copy_(source[a:b])
                at += b - a
        if out is None:
            return torch.cat(pieces) if pieces else torch.empty(0)
        return out


def _load_shard(saved: SavedShards, s: ParamShard, engine: Any, with_state: bool) -> None:
    opt = engine.optimizer
    begin = s.rank * s.shard_numel
    end = min(begin + s.shard_numel, s.numel)
    ranks = list(getattr(s.param, "zs_dp_group_ranks", [])) if s.group is not None else None
    if ranks is not None and s.nshards == 1:
        ranks = [_dist.rank()]  # a whole expert on each rank: this rank's own copy
    key = s.param if opt.direct else s.master
    with torch.no_grad():
        if opt.direct:
            values = saved.element_range(s.name, "master", begin, end, ranks)
            s.param.data.copy_(values.view(s.shape).to(s.param.dtype))
        else:
            s.master[end - begin :].zero_()
            saved.element_range(s.name, "master", begin, end, ranks, out=s.master[: end - begin])
    if not with_state:
        return
    owner = saved.pick(saved.owners(s.name, ranks))
    flat = saved.flat_state(owner, s.name)
    state = {}
    for k, v in saved.rank(owner)["shards"][s.name]["state"].items():
        if k in flat:
            full = torch.empty(key.numel(), dtype=flat[k])
            full[end - begin :].zero_()  # the padding past the parameter's end
            saved.element_range(s.name, k, begin, end, ranks, out=full[: end - begin])
            state[k] = full.view(key.shape)
        else:
            state[k] = v.clone() if torch.is_tensor(v) else v
    opt.inner.state[key] = state


def load_checkpoint(
    engine: Any,
    load_dir: str | os.PathLike,
    tag: str | None = None,
    load_optimizer_states: bool = True,
    load_lr_scheduler_states: bool = True,
    load_module_only: bool = False,
) -> tuple[str | None, dict[str, Any] | None]:
    """Load a checkpoint into ``engine``; returns ``(path, client_state)``, or
    ``(None, None)`` when ``load_dir`` has no ``latest`` and no tag is given."""
    load_dir = os.fspath(load_dir)
    tag = resolve_tag(load_dir, tag)
    if tag is None:
        warnings.warn(
            f"no checkpoint to load: {load_dir} has no 'latest' file and no tag was given",
            stacklevel=3,
        )
        return None, None
    path = os.path.join(load_dir, tag)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    meta = load_meta(path)
    same_world = meta["world_size"] == _dist.world_size()
    home = _dist.rank() if same_world else 0
    saved = SavedShards(path, meta["world_size"], meta.get("node_local", False), home)
    shards = _all_shards(engine)
    mine = {s.name for s in shards}
    missing = sorted(mine - set(meta["params"]))
    unexpected = sorted(set(meta["params"]) - mine)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]} (parameter names of the optimizer's params)"
        )
    for s in shards:
        if list(s.shape) != meta["params"][s.name]:
            raise ValueError(
                f"{path}: {s.name} has shape {meta['params'][s.name]} in the checkpoint, "
                f"{list(s.shape)} in the model"
            )
        if s.group is not None and meta["world_size"] != _dist.world_size():
            raise NotImplementedError(
                f"{s.name} is an expert parameter: loading experts at another world size "
                f"({meta['world_size']} -> {_dist.world_size()}) is not implemented"
            )
    with_state = load_optimizer_states and not load_module_only
    for s in shards:
        _load_shard(saved, s, engine, with_state)
    saved.finish()  # the masters and states element_range queued zero-aio reads into
    engine.optimizer._write_back()
    _load_extra(engine, extra_values(path, meta))
    if with_state:
        for group, hyper in zip(engine.optimizer.inner.param_groups, meta["param_groups"]):
            group.update(hyper)
    if load_module_only:
        return path, meta["client_state"]
    if load_lr_scheduler_states and engine.lr_scheduler is not None and meta["lr_scheduler"]:
        engine.lr_scheduler.load_state_dict(meta["lr_scheduler"])
    for key, value in meta["counters"].items():
        setattr(engine, key, value)
    if meta["world_size"] == _dist.world_size():
        mine_file = saved.rank(_dist.rank())
        if with_state and mine_file.get("inner") is not None:
            engine.optimizer.inner.load_state_dict(mine_file["inner"])
        _set_rng_state(mine_file["rng"])
        engine.set_data_position(mine_file["sampler"])
        if engine.optimizer.scaler is not None and mine_file["scaler"] is not None:
            engine.optimizer.scaler.load_state_dict(mine_file["scaler"])
    else:  # elastic: rank 0's scaler; RNG and data order follow the new world
        first = saved.rank(0)
        if engine.optimizer.scaler is not None and first["scaler"] is not None:
            engine.optimizer.scaler.load_state_dict(first["scaler"])
        engine.set_data_position(first["sampler"], rescale=True)
    return path, meta["client_state"]


def load_meta(path: str) -> dict[str, Any]:
    """``meta.pt`` of the checkpoint directory ``path``, its format checked."""
    meta = _load(os.path.join(path, META))
    if meta.get("format") not in _READS:
        raise ValueError(
            f"{path}: checkpoint format {meta.get('format')} is not one this zero-core reads "
            f"({', '.join(map(str, _READS))}); upgrade zero-core"
        )
    return meta


def extra_values(path: str, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The frozen parameters and buffers rank 0 saved, read from ``meta.zaio`` if there."""
    store = open_tensors(path, meta)
    if store is None:
        return meta["extra"]
    store.read_all()
    return {k: store.resolve(v, EXTRA + k) for k, v in meta["extra"].items()}


def _load_extra(engine: Any, extra: dict[str, torch.Tensor]) -> None:
    params = dict(engine.module.named_parameters())
    buffers = dict(engine.module.named_buffers())
    with torch.no_grad():
        for name, value in extra.items():
            if name in buffers:
                buffers[name].copy_(value)
            elif name in params:
                p = params[name]
                if is_partitioned(p):
                    s = p.zs_shard
                    s.local.copy_(s.my_part(value.reshape(-1).to(s.local.dtype)))
                else:
                    p.data.copy_(value)
