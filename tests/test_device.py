"""The GPU path, tested on the CPU where its logic allows: the one-line errors of torchrun runs (cli.run), the
--deterministic flag (distributed.set_determinism, recorded and kept on resume), retrain.py's evaluation (counts on the
device, autocast and memory format) and bench.py --device cuda without a GPU. In the full tier."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
from test_scripts import ROOT, TINY, load, run, script_env

import cli
import distributed
import retrain
from data import Relabeled, load_dataset
from loaders import epoch_loader
from spaces import SPACES

pytestmark = pytest.mark.full

# ----------------------------------------------------------------------------------------------------------------------
# cli.run under torchrun: a lost peer and any other failure of the distributed layer are one line with their cause

NCCL_SETUP = (
    "NCCL error in: /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970, unhandled system error (run with "
    "NCCL_DEBUG=INFO for details), NCCL version 2.21.5\nncclSystemError: System call (e.g. socket, malloc) or external "
    "library call failed or device error.\nLast error:\nsocket startup failed"
)


def run_failing(monkeypatch, capsys, err, initialized=True):
    """cli.run of a main() that raises `err` on rank 1; returns (exit status, stderr lines)."""
    monkeypatch.setattr(dist, "is_initialized", lambda: initialized)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(sys, "argv", ["train.py"])

    def main():
        raise err

    with pytest.raises(SystemExit) as exit_info:
        cli.run(main)
    return exit_info.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("cls", [dist.DistBackendError, RuntimeError])
def test_nccl_setup_error_is_one_line_with_its_cause_not_a_lost_peer(monkeypatch, capsys, cls):
    code, lines = run_failing(monkeypatch, capsys, cls(NCCL_SETUP))
    assert code == 1 and len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("train.py: error: rank 1") and "lost contact" not in line
    for cause in ("unhandled system error", "ncclSystemError", "Last error:", "socket startup failed"):
        assert cause in line, (cause, line)


@pytest.mark.parametrize(
    "message",
    [
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:35121",
        "[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, OpType=ALLREDUCE) ran for 60000 ms",
        "NCCL error: remote process exited or there was a network error, NCCL version 2.21.5\nncclRemoteError: A call "
        "failed possibly due to a network error or a remote process exiting prematurely.",
    ],
)
def test_lost_peer_is_one_line_with_its_cause(monkeypatch, capsys, message):
    code, lines = run_failing(monkeypatch, capsys, dist.DistBackendError(message))
    assert code == 1 and len(lines) == 1, lines
    assert "rank 1 lost contact with the other ranks" in lines[0] and "--resume" in lines[0]
    assert message.splitlines()[-1].strip() in lines[0]  # the cause, up to its last line


def test_a_long_error_keeps_its_head_and_its_chained_cause(monkeypatch, capsys):
    try:
        try:
            raise OSError("No route to host")
        except OSError as cause:
            raise dist.DistBackendError("ProcessGroupNCCL init failed\n" + "x " * 2000 + "\nLast error: ibv_open") from cause
    except dist.DistBackendError as err:
        code, lines = run_failing(monkeypatch, capsys, err)
    assert code == 1 and len(lines) == 1 and len(lines[0]) < 700, lines
    assert "ProcessGroupNCCL init failed" in lines[0] and "No route to host" in lines[0]


def test_other_runtime_errors_keep_their_traceback(monkeypatch, capsys):
    # a bug is not a distributed failure, even while the process group is up; nor is a timeout outside torchrun
    for err, initialized in [(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), True),
                             (RuntimeError("DataLoader timed out after 5 seconds"), False)]:  # fmt: skip
        monkeypatch.setattr(dist, "is_initialized", lambda: initialized)
        with pytest.raises(RuntimeError, match=str(err)):
            cli.run(lambda: (_ for _ in ()).throw(err))


def test_a_kernel_without_deterministic_version_is_a_one_line_error(monkeypatch, capsys):
    err = RuntimeError(
        "adaptive_avg_pool2d_backward_cuda does not have a deterministic implementation, but you set "
        "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this operation..."
    )
    code, lines = run_failing(monkeypatch, capsys, err, initialized=False)
    assert code == 2 and len(lines) == 1 and "adaptive_avg_pool2d_backward_cuda" in lines[0]
    assert "drop --deterministic" in lines[0]


# ----------------------------------------------------------------------------------------------------------------------
# --deterministic


@pytest.fixture
def restore_determinism():
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
        os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    )
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[1], saved[2]
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved[3], saved[4]
    if saved[5] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[5]


def test_set_determinism_sets_every_switch(restore_determinism, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.device("cuda", 0)  # the switches are process-wide: no GPU is needed to set them
    distributed.set_determinism(False, cuda)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    distributed.set_determinism(True, cuda)
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")


def test_deterministic_flag_is_recorded_kept_on_resume_and_changes_nothing_on_cpu(tmp_path):
    flags = [*TINY, "--epochs", 2]
    run("train.py", *flags, "--out", tmp_path / "plain")
    run("train.py", *flags, "--deterministic", "--out", tmp_path / "det", "--save-every-steps", 2)
    assert json.load(open(tmp_path / "det" / "config.json"))["deterministic"] is True
    assert json.load(open(tmp_path / "plain" / "config.json"))["deterministic"] is False
    a, b = load(tmp_path / "plain" / "supernet.pt"), load(tmp_path / "det" / "supernet.pt")
    assert b["config"]["deterministic"] is True
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])  # the CPU is deterministic anyway
    res = run("train.py", "--resume", "--out", tmp_path / "plain", "--deterministic", check=False)
    assert res.returncode == 2 and "--deterministic True differs from the run being resumed (False)" in res.stderr


# ----------------------------------------------------------------------------------------------------------------------
# retrain.py's evaluation


@torch.no_grad()
def evaluate_per_batch(model, loader, device) -> tuple[float, float]:
    """retrain.evaluate as it was: three host reads per batch (.item()), no autocast, the loader's layout."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for x, y in loader:
        top5 = model(x).topk(min(5, model.classifier.out_features), dim=1).indices
        totals += torch.tensor(
            [(top5[:, 0] == y).sum().item(), (top5 == y[:, None]).any(1).sum().item(), len(y)], dtype=torch.float64
        )
    return (100 * totals[0] / totals[2]).item(), (100 * totals[1] / totals[2]).item()


def tiny_test_loader(fast: bool):
    test = load_dataset("fake", "", "test", augment=False, fake_images=256, image_size=8)  # 64 test images
    view = Relabeled(test, torch.arange(len(test)), test.targets.long())
    return epoch_loader(view, 24, False, 0, 0, torch.device("cpu"), fast=fast, num_workers=0)


def test_evaluate_equals_the_per_batch_computation_and_uses_amp_and_the_memory_format():
    space = SPACES["nb201"]
    arch = space.parse("|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_1x1~1|none~2|")
    torch.manual_seed(0)
    model = space.network(arch, dict(channels=4, layers=1, num_classes=10))
    d = distributed.Dist(False, 0, 0, 1, torch.device("cpu"))
    cpu = torch.device("cpu")
    for fast in (True, False):
        ref = evaluate_per_batch(model, tiny_test_loader(fast), cpu)
        assert retrain.evaluate(model, tiny_test_loader(fast), cpu, d) == ref
        assert 0 < ref[0] <= ref[1] <= 100
    seen = []  # (autocast on, input in channels_last) per forward

    def record(module, inputs):
        seen.append((torch.is_autocast_enabled("cpu"), inputs[0].is_contiguous(memory_format=torch.channels_last)))

    hook = model.register_forward_pre_hook(record)
    cl_model = model.to(memory_format=torch.channels_last)
    top1, top5 = retrain.evaluate(cl_model, tiny_test_loader(True), cpu, d, amp=True, fmt=torch.channels_last)
    hook.remove()
    assert seen == [(True, True)] * 3 and 0 <= top1 <= top5 <= 100


# ----------------------------------------------------------------------------------------------------------------------
# bench.py


def test_bench_cuda_without_gpu_is_one_line():
    env = script_env(CUDA_VISIBLE_DEVICES="")  # no GPU visible, even on a machine with one
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "--device", "cuda"], capture_output=True,
                         text=True, env=env, timeout=120)  # fmt: skip
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert "--device cuda" in lines[0] and "--device cpu" in lines[0]


def test_auto_memory_format_avoids_channels_last_under_cpu_amp():
    # channels_last is the fast CPU layout, but PyTorch's CPU bf16 weight gradient of DARTS' dilated depthwise conv
    # reads garbage in it: --amp on CPU keeps the default layout unless the user asks for channels_last explicitly
    cpu = torch.device("cpu")
    assert distributed.memory_format("auto", cpu) == torch.channels_last
    assert distributed.memory_format("auto", cpu, amp=True) == torch.contiguous_format
    assert distributed.memory_format("channels_last", cpu, amp=True) == torch.channels_last
    assert distributed.memory_format("auto", torch.device("meta"), amp=False) == torch.contiguous_format
