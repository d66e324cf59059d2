"""scripts/_launch.sh and scripts/eval/_run.sh run with stub `python` (torch's answers, torchrun, vlm) and `nvidia-smi`
on PATH that print their arguments: device counting, refusals with the reason, multi-node flags, the .venv set-up."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Answers `python -c <torch query>` as torch would ("<device count> <torch.version.cuda>"; CUDA_VISIBLE_DEVICES=""
# hides every device), creates a venv for `python -m venv DIR` (a copy of itself), and logs any other call.
STUB_PYTHON = r"""#!/usr/bin/env bash
if [[ "$1" == -c ]]; then
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" && -z "$CUDA_VISIBLE_DEVICES" ]]; then n=0; else n=${STUB_TORCH_GPUS:-0}; fi
  echo "$n ${STUB_TORCH_CUDA:-12.4}"; exit 0
fi
if [[ "$1" == -m && "$2" == venv ]]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi
echo "CVD=${CUDA_VISIBLE_DEVICES-unset} python $*" >> "$STUB_LOG"
[[ -z "${STUB_OMP_LOG:-}" ]] || echo "${OMP_NUM_THREADS-unset}" >> "$STUB_OMP_LOG"
"""
STUB_NVIDIA_SMI = r"""#!/usr/bin/env bash
case "$*" in
  -L) for ((i = 0; i < ${STUB_SMI_GPUS:-0}; i++)); do echo "GPU $i: NVIDIA H200 (UUID: GPU-$i)"; done ;;
  *driver_version*) echo "${STUB_SMI_DRIVER:-535.104.05}" ;;
  "") echo "| NVIDIA-SMI 535.104.05    Driver Version: ${STUB_SMI_DRIVER:-535.104.05}    CUDA Version: ${STUB_SMI_CUDA:-12.2} |" ;;
esac
"""


def _write_exe(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture()
def stubs(tmp_path: Path) -> dict[str, Path]:
    bin_dir = tmp_path / "bin"
    _write_exe(tmp_path / "venv" / "bin" / "python", STUB_PYTHON)
    bin_dir.mkdir()
    return {"venv": tmp_path / "venv", "bin": bin_dir, "log": tmp_path / "calls.log", "tmp": tmp_path}


def _run(stubs: dict[str, Path], script: str, *args: str, nvidia_smi: bool = False, **env: str):  # noqa: ANN202
    if nvidia_smi:
        _write_exe(stubs["bin"] / "nvidia-smi", STUB_NVIDIA_SMI)
    base = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR")}
    full_env = {**base, "PATH": f"{stubs['bin']}:/usr/bin:/bin", "VENV": str(stubs["venv"]), "STUB_LOG": str(stubs["log"]),
                **env}
    done = subprocess.run(["bash", str(REPO / script), *args], env=full_env, cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    calls = stubs["log"].read_text().splitlines() if stubs["log"].exists() else []
    return done, calls


def test_one_process_per_visible_gpu_with_the_venv_python(stubs) -> None:
    done, calls = _run(stubs, "scripts/finetune.sh", "micro_batch_size=8", STUB_TORCH_GPUS="2")
    assert done.returncode == 0, done.stderr
    assert calls == ["CVD=unset python -m torch.distributed.run --standalone --nproc_per_node=2 -m app.cli train "
                     "configs/llava15_finetune.yaml micro_batch_size=8"]


def test_strategy_short_form_is_the_engine_override(stubs) -> None:
    done, calls = _run(stubs, "scripts/finetune.sh", "strategy=fsdp", "engine.fsdp.reshard_after_forward=false",
                       STUB_TORCH_GPUS="2")
    assert done.returncode == 0, done.stderr
    assert calls[0].endswith("train configs/llava15_finetune.yaml engine.strategy=fsdp "
                             "engine.fsdp.reshard_after_forward=false")


def test_num_gpus_above_the_visible_count_is_refused(stubs) -> None:
    done, calls = _run(stubs, "scripts/pretrain.sh", NUM_GPUS="4", STUB_TORCH_GPUS="2", CUDA_VISIBLE_DEVICES="0,1")
    assert done.returncode == 1 and not calls
    assert "NUM_GPUS=4 is more than the CUDA devices torch sees: torch sees 2 CUDA device(s) with " \
           "CUDA_VISIBLE_DEVICES=0,1" in done.stderr
    done, calls = _run(stubs, "scripts/pretrain.sh", NUM_GPUS="1", STUB_TORCH_GPUS="2", CUDA_VISIBLE_DEVICES="0,1")
    assert done.returncode == 0 and "--nproc_per_node=1" in calls[0]


def test_empty_cuda_visible_devices_is_a_cpu_run(stubs) -> None:
    done, calls = _run(stubs, "scripts/finetune.sh", "precision=fp32", nvidia_smi=True, STUB_SMI_GPUS="8",
                       STUB_TORCH_GPUS="8", CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stderr
    assert "CPU run of 1 process" in done.stderr
    assert calls == ["CVD= python -m torch.distributed.run --standalone --nproc_per_node=1 -m app.cli train "
                     "configs/llava15_finetune.yaml precision=fp32"]
    done, calls = _run(stubs, "scripts/finetune.sh", NUM_GPUS="2", CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 1 and "NUM_GPUS=2 but CUDA_VISIBLE_DEVICES is empty" in done.stderr


def test_driver_older_than_torchs_cuda_build_is_named(stubs) -> None:
    done, calls = _run(stubs, "scripts/finetune.sh", nvidia_smi=True, STUB_SMI_GPUS="8", STUB_SMI_CUDA="12.2",
                       STUB_SMI_DRIVER="535.104.05", STUB_TORCH_GPUS="0", STUB_TORCH_CUDA="13.0")
    assert done.returncode == 1 and not calls
    assert "nvidia-smi lists 8 GPU(s), driver 535.104.05 (CUDA up to 12.2); torch is built for CUDA 13.0: the driver " \
           "is too old for this torch" in done.stderr
    done, _ = _run(stubs, "scripts/finetune.sh", STUB_TORCH_GPUS="0", STUB_TORCH_CUDA="none")
    assert done.returncode == 1 and "CPU-only build" in done.stderr and "CUDA_VISIBLE_DEVICES= (empty)" in done.stderr


def test_multi_node_from_the_usual_variables(stubs) -> None:
    done, calls = _run(stubs, "scripts/finetune_lora.sh", STUB_TORCH_GPUS="8", NNODES="2", NODE_RANK="1",
                       MASTER_ADDR="10.0.0.1", MASTER_PORT="29555")
    assert done.returncode == 0, done.stderr
    assert calls == ["CVD=unset python -m torch.distributed.run --nnodes=2 --node_rank=1 --master_addr=10.0.0.1 "
                     "--master_port=29555 --nproc_per_node=8 -m app.cli train configs/llava15_finetune_lora.yaml"]
    done, _ = _run(stubs, "scripts/finetune.sh", STUB_TORCH_GPUS="8", NNODES="2", NODE_RANK="0")
    assert done.returncode == 1 and "needs MASTER_ADDR" in done.stderr
    done, _ = _run(stubs, "scripts/finetune.sh", STUB_TORCH_GPUS="8", NNODES="2", NODE_RANK="2", MASTER_ADDR="h")
    assert done.returncode == 1 and "0 <= NODE_RANK < NNODES" in done.stderr


def test_missing_venv_is_set_up_first(stubs) -> None:
    shutil.rmtree(stubs["venv"])
    _write_exe(stubs["tmp"] / "system" / "python3", STUB_PYTHON)
    done, calls = _run(stubs, "scripts/finetune.sh", STUB_TORCH_GPUS="1", PYTHON=str(stubs["tmp"] / "system" / "python3"))
    assert done.returncode == 0, done.stderr
    assert "running scripts/setup.sh" in done.stderr
    assert calls[0].endswith("python -m pip install -q --upgrade pip")
    assert calls[1].endswith("python -m pip install -q -r requirements-lock.txt")
    assert calls[-1].endswith("--nproc_per_node=1 -m app.cli train configs/llava15_finetune.yaml")
    assert (stubs["venv"] / ".lock-installed").is_file()


def _eval_runs(calls: list[str]) -> list[str]:
    return sorted(c.split(" python ")[0] + (" cpu" if "--device cpu" in c else "") for c in calls
                  if "--no-finalize" in c)


def test_eval_chunks_follow_the_visible_devices(stubs) -> None:
    env = dict(CKPT="runs/mine", STUB_TORCH_GPUS="2")
    done, calls = _run(stubs, "scripts/eval/gqa.sh", CUDA_VISIBLE_DEVICES="4,6", **env)
    assert done.returncode == 0, done.stderr
    assert _eval_runs(calls) == ["CVD=4", "CVD=6"]  # torch's devices 0 and 1 are the physical GPUs 4 and 6
    assert "--num-chunks 2" in calls[0] and calls[-1].endswith("--chunk-idx 0 --no-progress")
    assert calls[-1].startswith("CVD=4,6 python -m app.cli eval run --model runs/mine --benchmark gqa")
    stubs["log"].unlink()
    done, calls = _run(stubs, "scripts/eval/gqa.sh", CUDA_VISIBLE_DEVICES="", **env)
    assert done.returncode == 0 and _eval_runs(calls) == ["CVD= cpu"]
    done, _ = _run(stubs, "scripts/eval/gqa.sh", GPUS="0,5", **env)
    assert done.returncode == 1 and "GPUS=0,5 asks for device 5: torch sees 2 CUDA device(s)" in done.stderr
    done, _ = _run(stubs, "scripts/eval/gqa.sh", nvidia_smi=True, STUB_SMI_GPUS="2", CKPT="runs/mine",
                   STUB_TORCH_GPUS="0", STUB_TORCH_CUDA="13.0")
    assert done.returncode == 1 and "driver is too old" in done.stderr


@pytest.mark.parametrize("script, config", [("scripts/pretrain_next.sh", "configs/llava_next_pretrain.yaml"),
                                            ("scripts/finetune_next.sh", "configs/llava_next_finetune.yaml")])
def test_llava_next_scripts_launch_their_config(stubs, script: str, config: str) -> None:
    done, calls = _run(stubs, script, "micro_batch_size=2", STUB_TORCH_GPUS="2")
    assert done.returncode == 0, done.stderr
    assert calls == [f"CVD=unset python -m torch.distributed.run --standalone --nproc_per_node=2 -m app.cli train "
                     f"{config} micro_batch_size=2"]


@pytest.mark.parametrize(("cores", "gpus", "preset", "expected"),
                         [("16", "2", None, "8"), ("1", "2", None, "1"), ("16", "2", "3", "3")])
def test_omp_threads_are_the_cores_per_process(stubs, cores: str, gpus: str, preset: str | None,
                                               expected: str) -> None:
    """torchrun sets OMP_NUM_THREADS=1 when unset: DeepSpeed's CPU Adam (ZeRO-Offload) would step on one core."""
    _write_exe(stubs["bin"] / "nproc", f"#!/usr/bin/env bash\necho {cores}\n")
    omp_log = stubs["tmp"] / "omp.log"
    env = {"STUB_TORCH_GPUS": gpus, "STUB_OMP_LOG": str(omp_log)}
    if preset is not None:
        env["OMP_NUM_THREADS"] = preset
    done, calls = _run(stubs, "scripts/finetune.sh", **env)
    assert done.returncode == 0, done.stderr
    assert f"--nproc_per_node={gpus}" in calls[0] and omp_log.read_text().split() == [expected]
