"""Where and how pemma runs: the device, torchrun / DistributedDataParallel (gloo on CPU, NCCL on CUDA), the run
logger, the metrics CSV and work run beside this process (:func:`side_by_side`). Every layer above uses these; none
is specific to segmentation or survival."""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import datetime
import importlib.metadata
import logging
import multiprocessing
import os
import platform
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from pemma.errors import PemmaError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local rank>`` when CUDA is available, else ``cpu``."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PemmaError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PemmaError(f"--device {name}: this torch {torch.__version__} has no usable CUDA "
                         f"(CPU-only build or no GPU); use --device cpu, or install a CUDA build of torch")
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise PemmaError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def cpu_bf16_kind() -> str:
    """How this CPU computes bf16: ``"AMX"``, ``"AVX512-BF16"`` or ``"none"`` (emulated)."""
    try:
        if torch.cpu._is_amx_tile_supported():
            return "AMX"
        return "AVX512-BF16" if torch.cpu._is_avx512_bf16_supported() else "none"
    except (AttributeError, RuntimeError):  # a torch without the probes: assume no native bf16
        return "none"


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively (Intel AMX or AVX512-BF16). Without either, oneDNN emulates bf16 and
    autocast is far slower than fp32: a tiny-UNETR training step took 24 s in bf16 with oneDNN
    held to AVX2, 0.92 s in fp32 without the cap (benchmarks/README.md); with AMX, 0.41 s in bf16 against 0.63 s."""
    return cpu_bf16_kind() != "none"


def resolve_amp(setting: bool | str, device: torch.device) -> tuple[bool, str]:
    """Mixed precision for ``device`` from ``setting`` (``True``, ``False`` or ``"auto"``) and why, for the log.

    ``auto`` turns it on where it pays: CUDA (fp16 autocast + GradScaler), or a CPU with native bf16
    (:func:`native_bf16_cpu`); off on any other CPU.

    Example:
        >>> resolve_amp("auto", torch.device("cpu"))  # on a CPU with AMX
        (True, 'bf16 autocast: this CPU has native bf16 (AMX / AVX512-BF16)')
    """
    if not (isinstance(setting, bool) or setting == "auto"):
        raise PemmaError(f"amp must be true, false or auto, got {setting!r}")
    kind = "fp16 autocast + GradScaler" if device.type == "cuda" else "bf16 autocast"
    if setting == "auto":
        if device.type == "cuda":
            return True, f"{kind}: CUDA device"
        if native_bf16_cpu():
            return True, f"{kind}: this CPU has native bf16 (AMX / AVX512-BF16)"
        return False, "fp32: this CPU has no native bf16 (AMX / AVX512-BF16), where bf16 autocast is slower"
    return setting, (f"{kind}: amp on" if setting else "fp32: amp off")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        if names:
            return names[0]
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe_machine(device: torch.device) -> dict[str, Any]:
    """What produced a run's numbers. The same seed gives other numbers on another CPU kind (AMX and AVX512-BF16
    kernels sum in other orders; README: findings over seeds), so ``reproduce`` records this beside its results.

    Returns:
        ``{"cpu": model name, "cpu_bf16": cpu_bf16_kind(), "cores": usable cores, "device": "cpu" or the CUDA
        device's name, "torch", "pemma", "python"}`` (versions as strings).

    Example:
        >>> describe_machine(torch.device("cpu"))["cpu_bf16"] in ("AMX", "AVX512-BF16", "none")
        True
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        version = importlib.metadata.version("pemma")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        version = "unknown"
    return {"cpu": _cpu_model(), "cpu_bf16": cpu_bf16_kind(), "cores": cores,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "pemma": version, "python": platform.python_version()}


def machine_line(machine: dict[str, Any]) -> str:
    """One line of :func:`describe_machine` for a report, e.g. ``AMD EPYC (bf16: AVX512-BF16), 2 cores, cpu; torch
    2.13.0, pemma 0.1.0, Python 3.11.2``."""
    return (f"{machine['cpu']} (bf16: {machine['cpu_bf16']}), {machine['cores']} cores, {machine['device']}; "
            f"torch {machine['torch']}, pemma {machine['pemma']}, Python {machine['python']}")


def launched_processes() -> int:
    """How many processes this job was launched with: torchrun's ``WORLD_SIZE`` (1 for a single process). Known
    before the process group is joined (a ``--resume`` compares it with the checkpoint's first)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


#: environment variable: minutes a process waits in a collective (default :data:`DIST_TIMEOUT_MINUTES`)
DIST_TIMEOUT_ENV = "PEMMA_DIST_TIMEOUT_MINUTES"
#: validation runs on the main process while the others wait at a barrier: on a large validation set (three input
#: sets with the authors' recipe) that wait can pass NCCL's 10-minute default, which would end the job
DIST_TIMEOUT_MINUTES = 120.0


def dist_timeout() -> datetime.timedelta:
    """How long a process waits in a collective: ``PEMMA_DIST_TIMEOUT_MINUTES`` (a positive number), default 120.

    Raises:
        PemmaError: the variable is set to something else.
    """
    given = os.environ.get(DIST_TIMEOUT_ENV, "").strip()
    try:
        minutes = float(given) if given else DIST_TIMEOUT_MINUTES
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise PemmaError(f"{DIST_TIMEOUT_ENV}={given!r}: must be a positive number of minutes")
    return datetime.timedelta(minutes=minutes)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), with :func:`dist_timeout`; else
    single process."""
    world = launched_processes()
    if world <= 1:
        return DistInfo()
    if device.type == "cuda":  # NCCL object collectives (agree_on_failure) use the current device
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=dist_timeout())
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def mean_over_processes(value: float, info: DistInfo, device: torch.device) -> float:
    """The mean of ``value`` over the processes of ``info`` (every process must call it; ``value`` itself for one
    process): a DDP step's loss, whose gradient is the mean over every process's batch."""
    if not info.enabled:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item()) / info.world_size


def _user_message(exc: BaseException | None) -> str | None:
    """The message of a :class:`PemmaError` raised directly or wrapped (MONAI wraps transform errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, PemmaError):
            return str(exc)
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def agree_on_failure(info: DistInfo, work: Callable[[], T], what: str = "data preparation") -> T:
    """Run ``work`` in every process; when it fails in any, every process fails with the same one-line error.

    Without this, a process whose own part fails (e.g. rank 0 reading a corrupt validation case that only it reads)
    exits while the others wait in the next collective and then crash with a traceback of their own.

    Args:
        info: the process group. work: what each process does (its own share). what: named in the error.

    Raises:
        PemmaError: the first failing process's user error (in every process); a process whose own failure is not
            a user error re-raises it, the others report it as one line.
    """
    error: BaseException | None = None
    result: Any = None
    try:
        result = work()
    except Exception as exc:  # every failure is shared, so that no process is left waiting
        error = exc
    if not info.enabled:
        if error is not None:
            raise error
        return result
    own = None if error is None else (_user_message(error) or f"!{type(error).__name__}: {str(error)[:200]}")
    messages: list[str | None] = [None] * info.world_size
    dist.all_gather_object(messages, own)
    failed = [(rank, m) for rank, m in enumerate(messages) if m is not None]
    if not failed:
        return result
    rank, message = failed[0]
    if error is not None and own is not None and own.startswith("!"):
        raise error
    if message.startswith("!"):
        raise PemmaError(f"{what} failed in process {rank} ({message[1:]}); see its error")
    raise PemmaError(message)


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def local_rank() -> int:
    """``LOCAL_RANK`` set by torchrun (0 for a single process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0 of a torchrun job, and for a single process."""
    return int(os.environ.get("RANK", "0")) == 0


METRIC_FIELDS = ["step", "epoch", "loss", "lr", "val_GTVp", "val_GTVn", "val_mean", "seconds"]


def run_logger(run_dir: Path | None, enabled: bool = True) -> logging.Logger:
    """Logger ``pemma.run`` writing to stderr and ``run_dir/train.log`` (main process only)."""
    logger = logging.getLogger("pemma.run")
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler()
    console.setFormatter(fmt)
    logger.addHandler(console)
    if run_dir is not None and enabled:
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


class MetricsCSV:
    """``metrics.csv`` with one row per logged step; :meth:`truncate` drops rows after a resumed step."""

    def __init__(self, path: Path, fields: Sequence[str] = METRIC_FIELDS) -> None:
        self.path, self.fields = path, list(fields)

    def truncate(self, last_step: int) -> None:
        """Drop the rows after ``last_step`` (a resumed run logs them again); the file is rewritten through a
        temporary file and a rename, so a failure or a kill midway keeps the old file whole."""
        from pemma.io_utils import atomic_path  # here: a spawned worker importing this module stays light

        if not self.path.is_file():
            return
        with open(self.path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= last_step]
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in self.fields})


def valid_workers(value: object) -> bool:
    """Whether ``value`` is a worker-process setting: an integer >= 1 or ``"auto"``."""
    return value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)


def call_with_threads(function: Callable[..., Any], threads: int, kwargs: dict[str, Any]) -> Any:
    """``function(**kwargs)`` with ``threads`` torch threads: what a spawned worker runs (this module imports only
    torch and :mod:`pemma.errors`, so a worker that runs a light function starts quickly)."""
    torch.set_num_threads(threads)
    return function(**kwargs)


@contextlib.contextmanager
def side_by_side(function: Callable[..., Any], calls: list[dict[str, Any]]) -> Iterator[None]:
    """Run ``function(**kwargs)`` for every ``kwargs`` of ``calls`` in one spawned worker process while the body of
    the ``with`` runs here; each side gets half of this process's torch threads (at least one) meanwhile.

    For work that leaves its result on disk (the lesion-feature chains' ``chain.json``): nothing is returned, and a
    failure in the worker is not raised here; the caller then does the work again itself, where its error is reported.
    Leaving the block waits for the worker.
    """
    threads = torch.get_num_threads()
    share = max(1, threads // 2)
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        futures = [pool.submit(call_with_threads, function, share, kwargs) for kwargs in calls]
        torch.set_num_threads(share)
        try:
            yield
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            torch.set_num_threads(threads)
            concurrent.futures.wait(futures)
