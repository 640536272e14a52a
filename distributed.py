"""
BOILERPLATE: devices and torchrun, for train.py and retrain.py.

Nothing here is part of the method. One code path: a plain `python script.py` is a world of size 1, and under
`torchrun --nproc_per_node=N` every rank runs the same script (nanoGPT's pattern: RANK in the environment means
DDP). setup() checks the torchrun variables before the process group is made, so a wrong one is one line naming
it, not forty lines of c10d errors; wrap() puts a network on its device, in its memory format, under DDP.
"""

from __future__ import annotations

import datetime
import inspect
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import cli
from cli import UsageError


class Dist:
    def __init__(self, ddp: bool, rank: int, local_rank: int, world_size: int, device: torch.device):
        self.ddp, self.rank, self.local_rank, self.world_size, self.device = ddp, rank, local_rank, world_size, device
        self.master = rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        return torch.device("cuda", local_rank)
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device mps was asked for but MPS is not available; use --device cpu")
    return torch.device(name)


def physical_memory() -> int:
    """Bytes of RAM on this machine (8 GiB where the OS does not say): the ceiling of what a run may hold in memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def memory_format(name: str, device: torch.device, amp: bool = False) -> torch.memory_format:
    """--memory-format: auto picks channels_last on CPU, where oneDNN convolutions run about 1.6x faster in it
    (bench.py), and the default layout on GPUs until bench.py --device cuda says otherwise. On CPU with --amp, auto
    keeps the default layout: there PyTorch's bf16 weight gradient of a dilated depthwise conv (DARTS dil_conv_5x5)
    in channels_last reads garbage (non-finite losses; docs/performance.md)."""
    if name == "auto":
        name = "channels_last" if device.type == "cpu" and not amp else "contiguous"
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def set_determinism(enabled: bool, device: torch.device) -> None:
    """--deterministic: make two runs with the same flags (and a resumed run) compute the same bits on a GPU too.

    Off (the default), a CUDA run lets cuDNN time its convolution algorithms and keep the fastest
    (cudnn.benchmark): a new process may pick other algorithms than the run it resumes, and some of the fastest
    backward kernels sum with atomics in a varying order, so the weights differ in the last bits after a few steps
    and then drift apart (two uninterrupted runs too). TF32 convolutions are PyTorch's default and stay on.

    On: autotuning off, cuDNN restricted to deterministic algorithms, TF32 off for convolutions and matmuls, and
    torch.use_deterministic_algorithms for every other kernel. Not warn_only: the flag promises bit-exact runs, so a
    kernel without a deterministic version must stop the run with its name (within the first steps, as every step
    runs the same kernels) rather than leave a warning in a log. cuBLAS needs a fixed workspace for that
    (CUBLAS_WORKSPACE_CONFIG, read at each matmul: set here, before the first). On the CPU every kernel these
    scripts use is deterministic already: the flag changes no number there.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not enabled  # fixed input shapes per op: autotuning pays off when allowed
    if not enabled:
        return
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


# DDP's keyword for "do not broadcast the module's buffers before every forward" (train.py says why it may):
# forward_sync_buffers=False from torch 2.13, where broadcast_buffers is deprecated; broadcast_buffers=False before.
NO_BUFFER_BROADCAST = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DDP).parameters
    else {"broadcast_buffers": False}
)

# What torchrun sets for every rank; a launch by hand (or a typo in a job script) gets one line naming the variable.
TORCHRUN = "torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; launch with torchrun, or unset RANK"


def _torchrun_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) from the environment, checked before init_process_group."""
    values = {}
    for key, low in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
        text = os.environ.get(key)
        if text is None:
            raise UsageError(f"RANK is set but {key} is not; {TORCHRUN}")
        try:
            values[key] = int(text)
        except ValueError:
            raise UsageError(f"{key}={cli.shorten(text, 40)!r} is not an integer; {TORCHRUN}") from None
        if values[key] < low:
            raise UsageError(f"{key}={values[key]} must be >= {low}; {TORCHRUN}")
    if values["RANK"] >= values["WORLD_SIZE"] or values["LOCAL_RANK"] >= values["WORLD_SIZE"]:
        raise UsageError(f"RANK={values['RANK']}, LOCAL_RANK={values['LOCAL_RANK']} of WORLD_SIZE={values['WORLD_SIZE']}: "
                         f"a rank counts from 0 to WORLD_SIZE - 1; {TORCHRUN}")  # fmt: skip
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise UsageError(f"RANK is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not; {TORCHRUN}")
    port = os.environ["MASTER_PORT"]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"MASTER_PORT={cli.shorten(port, 40)!r} is not a port number (1-65535); {TORCHRUN}")
    return values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"]


def setup(device: str, backend: str, timeout_minutes: float) -> Dist:
    """Detect torchrun (RANK in the environment), init the process group, pick this rank's device."""
    if os.environ.get("RANK", "").strip() in ("", "-1"):
        return Dist(False, 0, 0, 1, resolve_device(device))
    rank, local_rank, world = _torchrun_env()
    dev = resolve_device(device, local_rank)
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK={local_rank}, but this machine has {torch.cuda.device_count()} GPUs; {TORCHRUN}")
        torch.cuda.set_device(dev)
    # a timeout, so that when one rank dies the others fail with an error instead of waiting forever
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))

    def on_sigterm(signum, frame):  # torchrun stops the surviving ranks with SIGTERM when one of them fails
        raise SystemExit(
            f"{os.path.basename(sys.argv[0])}: rank {rank} stopped by torchrun (another rank failed?); "
            "restart the same command with --resume to continue from the last checkpoint"
        )

    import signal

    signal.signal(signal.SIGTERM, on_sigterm)
    cli.MASTER = rank == 0
    return Dist(True, rank, local_rank, world, dev)


def wrap(raw_model: torch.nn.Module, d: Dist, fmt: torch.memory_format, single_path: bool = False):
    """The network on its device and in its memory format -> (raw_model, model): `model` is what the loop calls
    (the DDP wrapper under torchrun), `raw_model` the module itself, whose state_dict is saved (no "module." prefix,
    which angle.py relies on).

    single_path (the supernet, Rule B): a single-path step leaves most parameters unused, and DDP must be told, or it
    waits for their gradients forever. All ranks train the same path, so "unused" is the same set everywhere, and
    DDP leaves those gradients untouched (None stays None, zeros stay zeros) like a single process would.
    (static_graph and find_unused_parameters=False both fail: the set of unused parameters changes every step.)
    Its BN buffers are not broadcast before every forward: in training mode BN normalizes with the batch
    statistics, so the buffers change no gradient; the angle never reads them (method.md §4.5); and rank 0, whose
    state_dict is saved, only ever received its own buffers from that broadcast, so supernet.pt is the same bit for
    bit without it. The stand-alone network keeps the broadcast: its evaluation then runs every rank with rank 0's
    statistics, so the accuracy summed over ranks is that of one network.
    """
    raw_model = raw_model.to(d.device).to(memory_format=fmt)
    if not d.ddp:
        return raw_model, raw_model
    ids = [d.device.index] if d.device.type == "cuda" else None
    if not single_path:
        return raw_model, DDP(raw_model, device_ids=ids)
    # gradients as views of DDP's buckets save a copy per gradient per step (same weights and grad holders)
    model = DDP(raw_model, device_ids=ids, find_unused_parameters=True, gradient_as_bucket_view=True, **NO_BUFFER_BROADCAST)
    return raw_model, model


def ranks_agree(d: Dist, labels_sha: str, fingerprint, epoch: int) -> list | None:
    """DDP: gather [labels sha256, weights fingerprint] from every rank; None on one process.

    Everything that must agree across ranks (method.md pitfalls 3-4): the labels and the weights. A desync would
    otherwise go unnoticed and silently corrupt Wt. (BN running stats may differ: the angle never uses them.)
    """
    if not d.ddp:
        return None
    mine = [labels_sha, fingerprint()]
    ranks = [None] * d.world_size
    dist.all_gather_object(ranks, mine)
    if any(r != mine for r in ranks):
        raise RuntimeError(f"DDP ranks disagree after epoch {epoch + 1} (labels sha256, weights fingerprint): {ranks}")
    return ranks


def all_reduce(t: torch.Tensor, d: Dist) -> None:
    if d.ddp:
        dist.all_reduce(t)


def barrier(d: Dist) -> None:
    if d.ddp:
        dist.barrier()
