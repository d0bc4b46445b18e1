"""The one place that picks the torch device, and the device plumbing every model kind shares.

    device = default_device()          # $SCIFLOW_DEVICE, else cuda when available, else cpu
    model = model.to(resolve_device(device_argument))
    check_device(x, module_device(model), "x")   # data on another device: an error, never a copy per call

* :func:`default_device` / :func:`resolve_device`: the selected device. ``SCIFLOW_DEVICE`` takes
  ``cpu``, ``cuda``, ``cuda:N`` (and ``mps`` where PyTorch has it); a CUDA device on a machine
  without one is an :class:`~data.errors.InputError` naming the variable, not a late failure
  inside PyTorch. ``cuda`` means the current CUDA device (``cuda:0`` unless changed).
* :func:`check_device`: models never copy their inputs from another device per call. Data live
  where the model is: the training tasks move their data to the device once, before the first
  step; a forward pass given a tensor on another device raises :class:`DeviceMismatchError`
  (an ``InputError``) naming both devices and the fix.
* :func:`visible_devices` / :func:`assign_experts` / :func:`run_on_devices`: the devices a mixture
  of experts spreads over (every visible CUDA device when there are several, the model's own
  device first; expert ``k`` on device ``k % n``), and running one piece of work on each.
* :func:`run_differentiable`: the same over pieces of a differentiable computation, with each
  piece's backward pass in its thread too (a mixture of experts' solves over CPU workers).
* :func:`synchronize`: wait for queued CUDA work (before reading a clock).
* The usage log (:func:`record`, :func:`usage`, :func:`reset_usage`) and :func:`device_meta`:
  which device each piece of work ran on (training, solves, predictions), and the CUDA peak
  memory, for a benchmark's meta; ``infra/gpu-check.sh`` asserts on them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from data.errors import InputError
from data.settings import current

#: the environment variable that selects the device
ENV = "SCIFLOW_DEVICE"
T = TypeVar("T")


class DeviceMismatchError(InputError):
    """A tensor on another device than the model that should use it (nothing is copied silently)."""


def _normalize(dev: torch.device) -> torch.device:
    """``cuda`` -> ``cuda:<current>`` (so that comparisons with a tensor's device hold)."""
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return dev


def _checked(device: torch.device | str, source: str) -> torch.device:
    """``device`` as a :class:`torch.device` that exists on this machine; ``source`` names where it came from."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"{source}={device!r} is not a torch device ({exc}); use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "built without CUDA" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise InputError(
                f"{source}={device!r}, but no CUDA device is available on this machine (torch "
                f"{torch.__version__}, {build}); unset {ENV} or set it to cpu"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"{source}={device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s) "
                f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{source}={device!r}, but MPS is not available on this machine; use cpu")
    return _normalize(dev)


def default_device() -> torch.device:
    """``$SCIFLOW_DEVICE`` (:attr:`data.settings.Settings.device`) if set, else ``cuda`` when available, else ``cpu``.

    Raises:
        InputError: ``SCIFLOW_DEVICE`` is not a device name, or names a device this machine lacks.
    """
    name = (current().device or "").strip()
    if name:
        if _parses(name) and torch.device(name).type not in ("cpu", "cuda", "mps"):
            raise InputError(f"{ENV}={name!r} is not a device sciflow runs on; use cpu, cuda, cuda:N or mps")
        return _checked(name, ENV)
    return _normalize(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def _parses(name: str) -> bool:
    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        return False
    return True


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` checked (a CUDA device must exist), or :func:`default_device` for ``None``."""
    return default_device() if device is None else _checked(device, "device")


def module_device(model: torch.nn.Module) -> torch.device:
    """The device of ``model``'s parameters (buffers if it has none; the CPU if neither).

    Raises:
        DeviceMismatchError: its parameters and buffers are spread over several devices.
    """
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if len(devices) > 1:
        raise DeviceMismatchError(
            f"{type(model).__name__} has parameters or buffers on several devices {sorted(map(str, devices))}; "
            "move the whole model with .to(device)"
        )
    return next(iter(devices), torch.device("cpu"))


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` are the same device (``cuda`` counts as the current CUDA device)."""
    return _normalize(torch.device(a)) == _normalize(torch.device(b))


def check_device(tensor: torch.Tensor, device: torch.device, what: str) -> None:
    """Raise :class:`DeviceMismatchError` unless ``tensor`` is on ``device`` (a model's device).

    Models call this on their inputs instead of copying them: a copy per call in a training or
    solver loop is a hidden host-device transfer per step; moving the data once is the caller's."""
    if not same_device(tensor.device, device):
        raise DeviceMismatchError(
            f"{what} is on {tensor.device}, the model on {device}: move the data once with "
            f".to({str(device)!r}) before the loop (models do not copy their inputs per call)"
        )


def visible_devices(device: torch.device, count: Callable[[], int] | None = None) -> list[torch.device]:
    """The devices work on ``device`` may spread over: every visible CUDA device when ``device`` is
    a CUDA device and there are several (``device`` first, then the others in order), else
    ``[device]``. ``count``: the number of CUDA devices (default ``torch.cuda.device_count``;
    tests pass a stand-in)."""
    device = torch.device(device)
    if device.type != "cuda":
        return [device]
    n = (count or torch.cuda.device_count)()
    if n <= 1:
        return [device]
    main = device.index if device.index is not None else (torch.cuda.current_device() if count is None else 0)
    return [torch.device("cuda", main)] + [torch.device("cuda", i) for i in range(n) if i != main]


def assign_experts(n_experts: int, devices: Iterable[T]) -> list[T]:
    """The device (or worker) of each of ``n_experts`` experts: expert ``k`` on ``devices[k % len(devices)]``."""
    devs = list(devices)
    if n_experts < 1 or not devs:
        raise InputError(f"need n_experts >= 1 and at least one device, got {n_experts} experts, {len(devs)} devices")
    return [devs[k % len(devs)] for k in range(n_experts)]


def run_on_devices(calls: Sequence[tuple[torch.device, Callable[[], T]]], parallel: bool = False) -> list[T]:
    """``[fn() for device, fn in calls]``, each with ``device`` as the current CUDA device; with
    ``parallel``, in one thread per call (so that work on several GPUs overlaps), carrying the
    caller's autograd mode into the threads. The first exception is raised, as it was."""

    def call(device: torch.device, fn: Callable[[], T], grad: bool, inference: bool) -> T:
        cuda = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        with torch.inference_mode(inference), torch.set_grad_enabled(grad), cuda:
            return fn()

    modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    if not parallel or len(calls) < 2:
        return [call(torch.device(d), fn, *modes) for d, fn in calls]
    with ThreadPoolExecutor(len(calls), thread_name_prefix="sciflow-device") as pool:
        futures = [pool.submit(call, torch.device(d), fn, *modes) for d, fn in calls]
        return [f.result() for f in futures]


def run_on_threads(calls: Sequence[Callable[[], T]], intra_op_threads: int | None = None) -> list[T]:
    """``[fn() for fn in calls]``, one thread per call, each with ``intra_op_threads`` PyTorch
    intra-op threads (default: this process's threads shared out, at least 1); the caller's
    autograd mode is carried into the threads. PyTorch releases the GIL inside its kernels, so
    calls whose work is large tensor operations overlap. The first exception is raised, as it was."""
    if len(calls) < 2:
        return [fn() for fn in calls]
    before = torch.get_num_threads()
    each = max(1, intra_op_threads or before // len(calls))
    modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())

    def call(fn: Callable[[], T]) -> T:
        torch.set_num_threads(each)  # this thread's OpenMP team (and MKL's, process-wide: restored below)
        with torch.inference_mode(modes[1]), torch.set_grad_enabled(modes[0]):
            return fn()

    try:
        with ThreadPoolExecutor(len(calls), thread_name_prefix="sciflow-worker") as pool:
            futures = [pool.submit(call, fn) for fn in calls]
            return [f.result() for f in futures]
    finally:
        torch.set_num_threads(before)


class _Pieces(torch.autograd.Function):
    """Forward: each piece on detached copies of its inputs, in a thread of its own, keeping its
    graph; backward: ``torch.autograd.grad`` of each piece, again one thread each (the autograd
    engine runs CPU work in the thread that asks for it, so the pieces' backwards overlap too)."""

    @staticmethod
    def forward(ctx, plan, *flat):
        fns, sizes, threads, counts = plan
        leaves, start = [], 0
        for n in sizes:
            leaves.append([x.detach().requires_grad_(x.requires_grad) for x in flat[start : start + n]])
            start += n

        def piece(fn, xs):
            def go():
                with torch.enable_grad():
                    return tuple(fn(*xs))

            return go

        outs = run_on_threads([piece(fn, xs) for fn, xs in zip(fns, leaves, strict=True)], threads)
        ctx.graphs, ctx.threads = list(zip(outs, leaves, strict=True)), threads
        ctx.counts = counts[:] = [len(o) for o in outs]  # the caller splits the flat outputs by these
        return tuple(o.detach() for os_ in outs for o in os_)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        jobs, start = [], 0
        for (outs, xs), n in zip(ctx.graphs, ctx.counts, strict=True):
            gs = grads[start : start + n]
            start += n

            def job(outs=outs, xs=xs, gs=gs):
                pairs = [(o, g) for o, g in zip(outs, gs, strict=True) if g is not None and o.requires_grad]
                need = [x for x in xs if x.requires_grad]
                if not pairs or not need:
                    return [None] * len(xs)
                # retained: a backward may run again (retain_graph); the pieces' graphs go with this node
                got = iter(
                    torch.autograd.grad(
                        [o for o, _ in pairs], need, [g for _, g in pairs], retain_graph=True, allow_unused=True
                    )
                )
                return [next(got) if x.requires_grad else None for x in xs]

            jobs.append(job)
        per_piece = run_on_threads(jobs, ctx.threads)
        return (None, *(g for gs in per_piece for g in gs))


def run_differentiable(
    calls: Sequence[tuple[Callable[..., Sequence[torch.Tensor]], Sequence[torch.Tensor]]],
    intra_op_threads: int | None = None,
) -> list[tuple[torch.Tensor, ...]]:
    """``[tuple(fn(*inputs)) for fn, inputs in calls]`` on CPU threads (:func:`run_on_threads`),
    differentiable: gradients reach every call's ``inputs``, and each call's backward pass runs in
    a thread of its own as well (a plain thread pool would leave the whole backward to the one
    thread that calls ``backward()``). Each ``fn`` returns a sequence of tensors; anything else it
    should report goes through a closure. Without autograd (no input needs a gradient, or grad
    mode is off), the calls just run on threads."""
    flat = [x for _, xs in calls for x in xs]
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in flat)):

        def plain(fn: Callable[..., Sequence[torch.Tensor]], xs: Sequence[torch.Tensor]) -> Callable[[], tuple]:
            return lambda: tuple(fn(*xs))

        return run_on_threads([plain(fn, xs) for fn, xs in calls], intra_op_threads)
    counts: list[int] = []
    plan = ([fn for fn, _ in calls], [len(xs) for _, xs in calls], intra_op_threads, counts)
    out = _Pieces.apply(plan, *flat)
    pieces, start = [], 0
    for n in counts:
        pieces.append(tuple(out[start : start + n]))
        start += n
    return pieces


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (CUDA runs asynchronously; a no-op elsewhere)."""
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------- usage log

_LOCK = threading.Lock()
_USED: dict[str, set[str]] = {}


def record(what: str, device: torch.device | str | Iterable[torch.device | str]) -> None:
    """Note that ``what`` (e.g. ``"dcdm training"``) ran on ``device`` (or on each of several)."""
    devices = [device] if isinstance(device, (str, torch.device)) else list(device)
    with _LOCK:
        _USED.setdefault(what, set()).update(str(_normalize(torch.device(d))) for d in devices)


def usage() -> dict[str, list[str]]:
    """What ran where since the last :func:`reset_usage`: ``{what: sorted device names}``."""
    with _LOCK:
        return {k: sorted(v) for k, v in sorted(_USED.items())}


def reset_usage() -> None:
    """Forget the usage log and, with CUDA, reset the peak-memory counters of every visible device."""
    with _LOCK:
        _USED.clear()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(i)


def cuda_peak_mib() -> float:
    """Peak CUDA memory allocated by this process (MiB, summed over the visible devices) since the
    last reset; 0.0 without CUDA or before any CUDA work."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return 0.0
    return round(sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**20, 1)


def device_meta() -> dict:
    """Device facts for a benchmark's meta: ``device`` (the selected one), ``cuda_devices`` (visible
    CUDA devices), ``cuda_peak_mib`` (:func:`cuda_peak_mib`) and ``devices_used`` (:func:`usage`)."""
    try:
        selected = str(default_device())
    except InputError as exc:
        selected = f"invalid ({exc})"
    return {
        "device": selected,
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "cuda_peak_mib": cuda_peak_mib(),
        "devices_used": usage(),
    }


__all__ = [
    "ENV",
    "DeviceMismatchError",
    "assign_experts",
    "check_device",
    "cuda_peak_mib",
    "default_device",
    "device_meta",
    "module_device",
    "record",
    "reset_usage",
    "resolve_device",
    "run_differentiable",
    "run_on_devices",
    "run_on_threads",
    "same_device",
    "synchronize",
    "usage",
    "visible_devices",
]
