"""Processes started by a launcher (torchrun, SLURM's srun): who this process is, read from the environment.

RecBole's DDP spawns its own workers (``--nproc``, ``--world_size``, ``--group_offset``, ``--ip``,
``--port``). A launcher starts every process itself and describes each in environment variables instead.
:func:`detect_launch` reads them into a :class:`Launch`, and :meth:`Launch.config_keys` maps it onto
RecBole's keys (``local_rank + offset`` is the global rank, ``nproc`` the processes on this node), so the
rest of the DDP path (only rank 0 writes checkpoints and scores the final test) is the spawned one's.

Read, torchrun first (``torchrun`` inside an ``srun`` task is a torchrun launch):

- torchrun (any ``env://`` launcher): ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
  ``MASTER_ADDR``, ``MASTER_PORT``; detected by ``RANK`` and ``WORLD_SIZE``.
- SLURM, in a task started by ``srun`` (``SLURM_STEP_ID`` set; a batch script itself stays one ordinary
  process): ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``, this node's entry of
  ``SLURM_STEP_TASKS_PER_NODE`` / ``SLURM_TASKS_PER_NODE`` (e.g. ``2(x3),1``, indexed by ``SLURM_NODEID``)
  or else ``SLURM_NTASKS_PER_NODE``. ``MASTER_ADDR`` and ``MASTER_PORT`` if set; otherwise the first host
  of the step's node list (``scontrol show hostnames``) and port ``15000 + SLURM_JOB_ID % 10000``.

A launch of a single process (world size 1) is an ordinary run: there is nothing to synchronise.
"""
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Union

from recbole_llmesr.errors import LLMESRError

#: ``quick_start.run``'s spawn defaults; a flag left at its default was not given.
DEFAULT_IP = "localhost"
DEFAULT_PORT = "5678"
#: RecBole's config keys that a launch sets; they beat the command line (see ``LLMESRConfig``).
LAUNCH_CONFIG_KEYS = ("launcher", "local_rank", "offset", "world_size", "nproc", "ip", "port")
#: Keys RecBole's Config derives itself, never a user's setting.
RECBOLE_DERIVED_KEYS = ("model", "dataset", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec",
                        "valid_neg_sample_args", "test_neg_sample_args", "config_files")
#: Keys that say where a run's files and devices are on its machine, not what it trains.
MACHINE_KEYS = ("gpu_id", "use_gpu", "data_path", "checkpoint_dir")
#: Port base of the SLURM fallback: below Linux's ephemeral range (32768+), so rarely taken by clients.
SLURM_PORT_BASE = 15000


class LaunchError(LLMESRError, ValueError):
    """The launcher's environment is incomplete or inconsistent, or contradicts a DDP flag."""


@dataclass(frozen=True)
class Launch:
    """This process's place in a launched DDP job."""

    launcher: str  # "torchrun" or "slurm"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int

    def config_keys(self) -> dict:
        """The launch as RecBole's DDP config keys (those its spawned workers get)."""
        return {
            "launcher": self.launcher,
            "local_rank": self.local_rank,
            # Global rank minus local rank, per process: RecBole only ever adds the two back together, so this
            # holds for SLURM's cyclic task distribution too, where a node's ranks are not consecutive.
            "offset": self.rank - self.local_rank,
            "world_size": self.world_size,
            "nproc": self.local_world_size,
            "ip": self.master_addr,
            "port": str(self.master_port),
        }


def detect_launch(environ: Optional[Mapping[str, str]] = None) -> Optional[Launch]:
    """The launch that started this process, from ``environ`` (default ``os.environ``); None for an ordinary
    process, or a launch of one process. Raises :class:`LaunchError` when the variables are incomplete."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        launch = _torchrun(env)
    elif "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        if _int(env, "SLURM", "SLURM_NTASKS") <= 1:
            return None  # a one-task step (the usual single-GPU job) must not need a master address
        launch = _slurm(env)
    else:
        return None
    _check_consistent(launch)
    return launch if launch.world_size > 1 else None


def check_flags(launch: Launch, nproc: int = 1, world_size: int = -1, ip: str = DEFAULT_IP,
                port: Union[str, int] = DEFAULT_PORT, group_offset: int = 0) -> None:
    """Refuse spawn flags that contradict ``launch``; a flag at its default, or equal to the launch's
    value, is fine. ``--nproc`` is refused outright: under a launcher it would spawn more processes."""
    conflicts = []
    if nproc != 1:
        conflicts.append(f"--nproc={nproc} (it spawns workers, but {launch.launcher} has started this node's "
                         f"{launch.local_world_size} already)")
    given = [("world_size", world_size, -1, launch.world_size),
             ("group_offset", group_offset, 0, launch.rank - launch.local_rank),
             ("ip", ip, DEFAULT_IP, launch.master_addr),
             ("port", str(port), DEFAULT_PORT, str(launch.master_port))]
    conflicts += [f"--{name}={value} ({launch.launcher} says {actual})"
                  for name, value, default, actual in given if value not in (default, actual)]
    if conflicts:
        raise LaunchError(f"started by {launch.launcher}, which sets up the process group itself: "
                          f"{'; '.join(conflicts)}. Leave these flags out (the launcher's options set them)")


def gpu_ids(gpu_id: Union[str, Sequence]) -> List[str]:
    """``gpu_id`` as a list of ids: RecBole's command-line parser turns ``--gpu_id=0,1`` into a tuple of ints,
    YAML and config dicts give ``'0,1'``."""
    raw = gpu_id if isinstance(gpu_id, (list, tuple)) else str(gpu_id).split(",")
    return [str(s).strip() for s in raw if str(s).strip()]


def cuda_device_index(local_rank: int, local_world_size: int, gpu_id: Union[str, Sequence], device_count: int) -> int:
    """The CUDA device of local process ``local_rank`` of ``local_world_size`` on a node showing
    ``device_count`` devices.

    ``gpu_id`` listing a device per local process (``0,1,2,3``) picks this process's entry. Otherwise
    (RecBole's default ``'0'``) local process k takes device k, or device 0 where each process sees only
    one (the launcher bound a GPU to each task, e.g. ``srun --gpus-per-task=1``).
    """
    ids = gpu_ids(gpu_id)
    if len(ids) >= local_world_size:
        if not ids[local_rank].isdigit() or int(ids[local_rank]) >= device_count:
            raise LaunchError(f"gpu_id={','.join(ids)}: local process {local_rank} would use GPU {ids[local_rank]}, "
                              f"but {device_count} are visible")
        return int(ids[local_rank])
    if device_count >= local_world_size:
        return local_rank
    if device_count == 1:
        return 0
    raise LaunchError(f"{local_world_size} processes on this node, but {device_count} GPUs visible: start at most "
                      f"{device_count} per node, or list one GPU per process in gpu_id (e.g. --gpu_id=0,1)")


# ------------------------------------------------------------------------------------------- launchers

def _torchrun(env: Mapping[str, str]) -> Launch:
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    missing = [name for name in names if not env.get(name)]
    if missing:
        raise LaunchError(f"RANK and WORLD_SIZE are set (a torchrun launch), but {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not: start the processes with torchrun, which "
                          f"sets them all, or set them yourself")
    return Launch("torchrun", rank=_int(env, "torchrun", "RANK"), world_size=_int(env, "torchrun", "WORLD_SIZE"),
                  local_rank=_int(env, "torchrun", "LOCAL_RANK"),
                  local_world_size=_int(env, "torchrun", "LOCAL_WORLD_SIZE"), master_addr=env["MASTER_ADDR"],
                  master_port=_int(env, "torchrun", "MASTER_PORT"))


def _slurm(env: Mapping[str, str]) -> Launch:
    return Launch("slurm", rank=_int(env, "SLURM", "SLURM_PROCID"), world_size=_int(env, "SLURM", "SLURM_NTASKS"),
                  local_rank=_int(env, "SLURM", "SLURM_LOCALID"), local_world_size=_slurm_tasks_on_node(env),
                  master_addr=env.get("MASTER_ADDR") or _slurm_first_host(env), master_port=_slurm_port(env))


def _slurm_tasks_on_node(env: Mapping[str, str]) -> int:
    for name in ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"):
        if env.get(name):
            counts = tasks_per_node(env[name], name)
            if len(set(counts)) == 1:
                return counts[0]  # the same everywhere: which node this is does not matter
            node = _int(env, "SLURM", "SLURM_NODEID")
            if node >= len(counts):
                raise LaunchError(f"SLURM_NODEID={node}, but {name}={env[name]} lists {len(counts)} nodes")
            return counts[node]
    if env.get("SLURM_NTASKS_PER_NODE"):
        return _int(env, "SLURM", "SLURM_NTASKS_PER_NODE")
    raise LaunchError("SLURM: none of SLURM_STEP_TASKS_PER_NODE, SLURM_TASKS_PER_NODE, SLURM_NTASKS_PER_NODE is "
                      "set; start the tasks with srun (e.g. srun --ntasks-per-node=2)")


def tasks_per_node(value: str, name: str = "SLURM_TASKS_PER_NODE") -> List[int]:
    """SLURM's compressed task counts, one per node: ``2(x3),1`` is ``[2, 2, 2, 1]``."""
    counts = []
    for part in value.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise LaunchError(f"{name}={value!r}: expected counts such as 2(x3),1")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _slurm_first_host(env: Mapping[str, str]) -> str:
    """Rank 0's host: the first of the step's nodes (SLURM places tasks block-wise from there)."""
    name = next((n for n in ("SLURM_STEP_NODELIST", "SLURM_NODELIST", "SLURM_JOB_NODELIST") if env.get(n)), None)
    fix = ('set MASTER_ADDR to the host of task 0 in the batch script, e.g. export MASTER_ADDR=$(scontrol show '
           'hostnames "$SLURM_JOB_NODELIST" | head -n 1)')
    if name is None:
        raise LaunchError(f"SLURM: MASTER_ADDR is not set and neither is SLURM_NODELIST: {fix}")
    nodelist = env[name]
    if "[" not in nodelist:
        return nodelist.split(",")[0].strip()  # plain host names: nothing to expand
    scontrol = shutil.which("scontrol", path=env.get("PATH"))
    if scontrol is None:
        raise LaunchError(f"SLURM: MASTER_ADDR is not set and scontrol, which expands {name}={nodelist}, is not "
                          f"on PATH: {fix}")
    try:
        shown = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True,
                               timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as err:
        raise LaunchError(f"SLURM: MASTER_ADDR is not set and 'scontrol show hostnames {nodelist}' failed "
                          f"({' '.join(str(err).split())}): {fix}") from err
    if not shown:
        raise LaunchError(f"SLURM: MASTER_ADDR is not set and 'scontrol show hostnames {nodelist}' printed no "
                          f"host: {fix}")
    return shown[0]


def _slurm_port(env: Mapping[str, str]) -> int:
    if env.get("MASTER_PORT"):
        return _int(env, "SLURM", "MASTER_PORT")
    if env.get("SLURM_JOB_ID", "").isdigit():
        # Every task of the job computes the same port without talking to the others; two jobs sharing a
        # first node clash only when their ids agree modulo 10000.
        return SLURM_PORT_BASE + int(env["SLURM_JOB_ID"]) % 10000
    raise LaunchError("SLURM: MASTER_PORT is not set and there is no SLURM_JOB_ID to derive one from: "
                      "export MASTER_PORT=<a free port on the first node>")


# ------------------------------------------------------------------------------------------- checks

def _int(env: Mapping[str, str], launcher: str, name: str) -> int:
    value = env.get(name)
    if value is None or not value.strip():
        raise LaunchError(f"{launcher}: {name} is not set")
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{launcher}: {name}={value!r} is not a whole number") from None


def _check_consistent(launch: Launch) -> None:
    names = {"torchrun": ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"),
             "slurm": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "tasks on this node")}[launch.launcher]
    rank, world, local, local_world = names
    problems = []
    if launch.world_size < 1:
        problems.append(f"{world}={launch.world_size} is below 1")
    if not 0 <= launch.rank < launch.world_size:
        problems.append(f"{rank}={launch.rank} is not below {world}={launch.world_size}")
    if not 1 <= launch.local_world_size <= max(launch.world_size, 1):
        problems.append(f"{local_world}={launch.local_world_size} is not between 1 and {world}={launch.world_size}")
    if not 0 <= launch.local_rank < launch.local_world_size:
        problems.append(f"{local}={launch.local_rank} is not below {local_world}={launch.local_world_size}")
    if not 0 < launch.master_port < 65536:
        problems.append(f"MASTER_PORT={launch.master_port} is not a TCP port")
    if problems:
        raise LaunchError(f"{launch.launcher}: inconsistent launch variables: {'; '.join(problems)}")
