"""Where training and evaluation run: the ``device`` setting resolved in each process.

``device = auto`` means CUDA when this process may use a GPU, else the CPU; ``cuda``
asks for a GPU and is refused (:class:`~fedrank.errors.ConfigError` on ``device``)
where there is none; ``cpu`` never touches a GPU. "May use" differs by process:

- a Ray worker (a simulated client) may use exactly the GPUs Ray gave it
  (``num-gpus-per-client`` of them; Ray points ``CUDA_VISIBLE_DEVICES`` at them, so
  ``cuda`` is the first of those). A worker given none runs on the CPU even on a GPU
  machine, so that clients never crowd onto GPUs Ray did not reserve for them;
- any other process (the coordinator, a SuperNode's ClientApp, ``--backend local``)
  may use the first visible GPU.

Every path that trains or evaluates moves its model there and its batches with it;
what crosses the wire is always CPU numpy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from fedrank.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DeviceSetting = Literal["auto", "cpu", "cuda"]


def ray_gpu_ids() -> list[str] | None:
    """The GPUs Ray assigned to this process, or None outside a Ray worker.

    Imports nothing: a process that never imported Ray is not a Ray worker.
    """
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.worker.mode != ray.WORKER_MODE:  # the driver: the coordinator
        return None
    return [str(gpu) for gpu in ray.get_gpu_ids()]


def cuda_available() -> bool:
    """Whether torch sees a usable CUDA device in this process."""
    import torch

    return bool(torch.cuda.is_available())


def choose_device(
    requested: str, *, cuda: bool, assigned_gpus: list[str] | None
) -> Literal["cpu", "cuda"]:
    """The device kind for a ``device`` setting, from the facts of this process (pure).

    Parameters
    ----------
    requested : {"auto", "cpu", "cuda"}
        The scenario's ``device``.
    cuda : bool
        Whether torch sees a CUDA device.
    assigned_gpus : list of str or None
        GPUs Ray gave this worker; None outside Ray (no placement to respect).

    Raises
    ------
    ConfigError
        ``cuda`` where no GPU is usable, or an unknown setting.
    """
    if requested == "cpu":
        return "cpu"
    placed = assigned_gpus is None or len(assigned_gpus) > 0
    if requested == "auto":
        return "cuda" if cuda and placed else "cpu"
    if requested != "cuda":
        raise ConfigError("device", f"must be one of ['auto', 'cpu', 'cuda'], got {requested!r}")
    if not cuda:
        raise ConfigError(
            "device",
            "'cuda' asked for, but torch sees no CUDA device here "
            "(no GPU, no driver, or a CPU build of torch); use 'auto' or 'cpu'",
        )
    if not placed:
        raise ConfigError(
            "device",
            "'cuda' asked for, but Ray gave this client no GPU: set num-gpus-per-client above 0",
        )
    return "cuda"


def check_ray_placement(
    requested: str, *, num_gpus_per_client: float, local_gpus: int | None
) -> None:
    """Refuse a simulation whose clients would not get the GPUs the scenario implies (pure).

    Parameters
    ----------
    requested : str
        The scenario's ``device``.
    num_gpus_per_client : float
        GPUs each Ray client reserves (fractions share a GPU).
    local_gpus : int or None
        GPUs of this machine when Ray runs here; None on an existing cluster
        (``RAY_ADDRESS``), whose GPUs only Ray knows.

    Raises
    ------
    ConfigError
        ``device = cuda`` with no GPU reserved per client (Ray would hide every GPU
        from the clients), or GPUs reserved on a machine without any (Ray would wait
        for them forever).
    """
    if requested == "cuda" and num_gpus_per_client == 0:
        raise ConfigError(
            "device",
            "'cuda' in a Ray simulation needs num-gpus-per-client > 0: a client may use "
            "only the GPUs Ray reserves for it (0.5 lets two clients share one)",
        )
    if num_gpus_per_client > 0 and local_gpus == 0:
        raise ConfigError(
            "num-gpus-per-client",
            f"{num_gpus_per_client:g} GPUs per client, but this machine has no GPU: Ray "
            "would wait for one forever (set it to 0, or give RAY_ADDRESS of a GPU cluster)",
        )
    if num_gpus_per_client > 0 and requested == "cpu":
        log.warning("num-gpus-per-client reserves GPUs that device 'cpu' leaves unused")


def local_gpu_count() -> int:
    """CUDA devices torch sees on this machine."""
    import torch

    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def resolve_device(requested: str) -> torch.device:
    """The ``torch.device`` this process trains and evaluates on for a ``device`` setting.

    Raises
    ------
    ConfigError
        ``cuda`` where this process has no usable GPU.
    """
    import torch

    kind = choose_device(requested, cuda=cuda_available(), assigned_gpus=ray_gpu_ids())
    if kind == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what the logs and summary say."""
    if device.type != "cuda":
        return str(device)
    import torch

    return f"{device} ({torch.cuda.get_device_name(device)})"


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any)."""
    import torch

    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")
