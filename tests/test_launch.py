"""Issue 19, part 1: processes started by torchrun or SLURM's srun instead of spawned by ``--nproc``.

The unit tests feed :func:`recbole_llmesr.launch.detect_launch` made-up environments; the last test runs two
real torchrun "nodes" of one process each on 127.0.0.1 (gloo, CPU) through ``python -m recbole_llmesr.cli``.
"""
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from prep_helpers import run_recbole_cli_error
from test_ddp import assert_ranks_in_sync, free_port, single_process_test

from recbole_llmesr.errors import LLMESRError
from recbole_llmesr.launch import Launch, LaunchError, check_flags, cuda_device_index, detect_launch, tasks_per_node

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "node0",
            "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "none"}
# Task 3 of `srun --nodes=2 --ntasks-per-node=2`, as srun describes it (not the batch script: SLURM_STEP_ID).
SLURM = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
         "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456",
         "SLURM_STEP_ID": "0"}


def without(env: dict, *names: str) -> dict:
    return {k: v for k, v in env.items() if k not in names}


# ------------------------------------------------------------------------------------------- torchrun
def test_torchrun_variables_map_onto_recbole_keys():
    launch = detect_launch(TORCHRUN)
    assert launch == Launch("torchrun", rank=3, world_size=4, local_rank=1, local_world_size=2,
                            master_addr="node0", master_port=29500)
    # RecBole's global rank is local_rank + offset; nproc is the processes on this node.
    assert launch.config_keys() == {"launcher": "torchrun", "local_rank": 1, "offset": 2, "world_size": 4,
                                    "nproc": 2, "ip": "node0", "port": "29500"}
    with pytest.raises(AttributeError):
        launch.rank = 0  # frozen


def test_no_launcher_and_a_single_process_launch_are_ordinary_runs():
    assert detect_launch({}) is None
    assert detect_launch({"PATH": "/usr/bin", "LOCAL_RANK": "0"}) is None  # RANK and WORLD_SIZE detect torchrun
    one = {**TORCHRUN, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    assert detect_launch(one) is None


@pytest.mark.parametrize("env, needle", [
    (without(TORCHRUN, "MASTER_PORT"), "MASTER_PORT is not"),
    (without(TORCHRUN, "LOCAL_RANK", "LOCAL_WORLD_SIZE"), "LOCAL_RANK, LOCAL_WORLD_SIZE are not"),
    ({**TORCHRUN, "RANK": "three"}, "RANK='three' is not a whole number"),
    ({**TORCHRUN, "RANK": "4"}, "RANK=4 is not below WORLD_SIZE=4"),
    ({**TORCHRUN, "LOCAL_RANK": "2"}, "LOCAL_RANK=2 is not below LOCAL_WORLD_SIZE=2"),
    ({**TORCHRUN, "MASTER_PORT": "70000"}, "MASTER_PORT=70000 is not a TCP port"),
])
def test_incomplete_torchrun_variables_are_named(env, needle):
    with pytest.raises(LaunchError, match=re.escape(needle)) as err:
        detect_launch(env)
    assert isinstance(err.value, LLMESRError)


def test_torchrun_inside_srun_is_a_torchrun_launch():
    assert detect_launch({**SLURM, **TORCHRUN}).launcher == "torchrun"


# ------------------------------------------------------------------------------------------- SLURM
def fake_scontrol(folder: Path, hosts: str) -> str:
    """A PATH holding an ``scontrol`` that prints ``hosts`` for ``show hostnames``."""
    script = folder / "scontrol"
    script.write_text(f"#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] && printf '{hosts}' && exit 0\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(folder)


def test_slurm_master_from_the_environment():
    launch = detect_launch({**SLURM, "MASTER_ADDR": "10.0.0.7", "MASTER_PORT": "23456"})
    assert launch == Launch("slurm", rank=3, world_size=4, local_rank=1, local_world_size=2,
                            master_addr="10.0.0.7", master_port=23456)


def test_slurm_master_falls_back_to_the_first_host_and_the_job_id(tmp_path):
    launch = detect_launch({**SLURM, "PATH": fake_scontrol(tmp_path, "gpu07\\ngpu08\\n")})
    assert (launch.master_addr, launch.master_port) == ("gpu07", 15000 + 123456 % 10000)
    # A node list without brackets needs no scontrol.
    plain = detect_launch({**SLURM, "SLURM_NODELIST": "alpha,beta", "PATH": str(tmp_path / "empty")})
    assert plain.master_addr == "alpha"


def test_slurm_without_scontrol_or_job_id_names_what_to_set(tmp_path):
    with pytest.raises(LaunchError, match="scontrol.*not on PATH.*export MASTER_ADDR="):
        detect_launch({**SLURM, "PATH": str(tmp_path)})
    with pytest.raises(LaunchError, match="MASTER_PORT is not set.*export MASTER_PORT="):
        detect_launch({**without(SLURM, "SLURM_JOB_ID"), "MASTER_ADDR": "gpu07"})


def test_slurm_tasks_per_node():
    assert tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    uneven = {**SLURM, "MASTER_ADDR": "h", "SLURM_NTASKS": "3", "SLURM_PROCID": "2", "SLURM_LOCALID": "0",
              "SLURM_TASKS_PER_NODE": "2,1"}
    assert detect_launch(uneven).local_world_size == 1  # node 1's entry
    explicit = {**without(SLURM, "SLURM_TASKS_PER_NODE"), "SLURM_NTASKS_PER_NODE": "2", "MASTER_ADDR": "h"}
    assert detect_launch(explicit).local_world_size == 2
    with pytest.raises(LaunchError, match="expected counts such as"):
        tasks_per_node("2(3)")
    with pytest.raises(LaunchError, match="none of SLURM_STEP_TASKS_PER_NODE"):
        detect_launch({**without(SLURM, "SLURM_TASKS_PER_NODE"), "MASTER_ADDR": "h"})


def test_slurm_batch_script_and_single_task_steps_are_ordinary_runs():
    assert detect_launch(without(SLURM, "SLURM_STEP_ID")) is None  # run_recbole in the script, without srun
    assert detect_launch({**SLURM, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None


# ------------------------------------------------------------------------------------------- flags, GPUs
def test_flags_must_agree_with_the_launch():
    launch = detect_launch(TORCHRUN)
    check_flags(launch)  # defaults
    check_flags(launch, world_size=4, ip="node0", port="29500", group_offset=2)  # what the launcher says
    with pytest.raises(LaunchError, match=r"--nproc=2 \(it spawns workers.*--port=1234 \(torchrun says 29500\)"):
        check_flags(launch, nproc=2, port=1234)


def test_cli_refuses_spawn_flags_under_torchrun(monkeypatch, capsys):
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    line = run_recbole_cli_error(capsys, "--model=LLMESR_SASRec", "--nproc=2")
    assert "started by torchrun" in line and "--nproc=2" in line


def test_launch_keys_beat_the_command_line(tiny, monkeypatch):
    """RecBole reads --port=5678 from sys.argv and lets it win; under a launcher MASTER_PORT must."""
    import torch.distributed as dist

    from recbole_llmesr.config import LLMESRConfig

    port = free_port()
    launch = Launch("torchrun", rank=0, world_size=1, local_rank=0, local_world_size=1, master_addr="127.0.0.1",
                    master_port=int(port))
    monkeypatch.setattr(sys, "argv", ["run_recbole", "--port=5678", "--world_size=5", "--nproc=3"])
    config = LLMESRConfig("LLMESR_SASRec", "tiny", config_dict={**tiny["config"], "use_gpu": False,
                                                               **launch.config_keys()})
    try:
        assert (str(config["port"]), config["world_size"], config["nproc"]) == (port, 1, 1)
        assert dist.get_rank() == 0 and not config["single_spec"]
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("local_rank, local_world, gpu_id, count, expected", [
    (1, 2, "0", 2, 1),        # RecBole's default gpu_id: cuda:LOCAL_RANK
    (3, 4, "0", 1, 0),        # srun --gpus-per-task=1: each task sees only its own GPU
    (1, 2, "2,3", 4, 3),      # one id per local process: this process's entry
    (1, 2, (2, 3), 4, 3),     # RecBole's parser makes --gpu_id=2,3 a tuple
    (0, 1, "1", 2, 1),
])
def test_cuda_device_index(local_rank, local_world, gpu_id, count, expected):
    assert cuda_device_index(local_rank, local_world, gpu_id, count) == expected


def test_cuda_device_index_errors():
    with pytest.raises(LaunchError, match="4 processes on this node, but 2 GPUs visible"):
        cuda_device_index(3, 4, "0", 2)
    with pytest.raises(LaunchError, match="would use GPU 5, but 2 are visible"):
        cuda_device_index(1, 2, "4,5", 2)


# ------------------------------------------------------------------------------------------- real torchrun
def _logged_test_result(log_dir: Path) -> dict:
    """Rank 0's ``test result: OrderedDict(...)`` line (only rank 0 logs at info level)."""
    lines = [ln for p in log_dir.rglob("*.log") for ln in p.read_text().splitlines() if "test result" in ln]
    assert len(lines) == 1, lines
    pairs = re.findall(r"'([^']+)'[,:] (?:np\.float\d+\()?(-?\d+(?:\.\d+)?(?:e-?\d+)?)", lines[0])
    return {name: float(value) for name, value in pairs}


def test_two_torchrun_nodes_on_one_machine(tiny, tmp_path):
    cfg = {**tiny["config"], "epochs": 1}
    saved = tmp_path / "torchrun_saved"
    port = free_port()
    args = ["-m", "recbole_llmesr.cli", "--model=LLMESR_SASRec", "--dataset=tiny", "--use_gpu=False",
            "--save_rank_states=True", *(f"--{k}={v}" for k, v in {**cfg, "checkpoint_dir": saved}.items())]
    # A clean launch environment (no SLURM or torchrun variables of an enclosing job); one thread per process.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    nodes = []
    for node in range(2):
        out = (tmp_path / f"node{node}.out").open("w")
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", *args]
        nodes.append((subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT), out))
    try:
        codes = [proc.wait(timeout=300) for proc, _ in nodes]
    finally:
        for proc, out in nodes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
    outputs = [(tmp_path / f"node{k}.out").read_text()[-3000:] for k in range(2)]
    assert codes == [0, 0], "\n\n".join(outputs)

    launched = assert_ranks_in_sync(saved)
    (checkpoint,) = saved.glob("LLMESR_SASRec-*.pth")  # only global rank 0 writes it
    logged = _logged_test_result(tmp_path / "log")
    expected = single_process_test({**tiny["config"], "checkpoint_dir": str(tmp_path / "eval")}, checkpoint)
    assert "ndcg@10" in logged and logged.keys() == expected.keys()
    assert logged == pytest.approx(expected, abs=1e-6)

    # Same results as RecBole's way, two workers spawned by --nproc=2: the very same parameters.
    from recbole_llmesr.quick_start import run

    spawned = tmp_path / "spawn_saved"
    run("LLMESR_SASRec", "tiny", config_dict={**cfg, "use_gpu": False, "save_rank_states": True,
                                              "checkpoint_dir": str(spawned)}, nproc=2, port=free_port())
    by_spawn = assert_ranks_in_sync(spawned)
    differ = [k for k in launched if not torch.allclose(launched[k], by_spawn[k], atol=1e-6)]
    assert not differ, f"torchrun and --nproc=2 trained different parameters: {differ}"
