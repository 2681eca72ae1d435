"""The differential-privacy section of a scenario (docs/privacy.md)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from fedrank.config.fields import check_section, setting
from fedrank.errors import ConfigError

DpMode = Literal["none", "sample", "client", "both"]
DpAccountant = Literal["rdp", "prv"]
ClientSampling = Literal["fixed", "poisson"]


@dataclasses.dataclass(frozen=True)
class DpConfig:
    """Sample-level DP (DP-SGD on each client) and/or client-level DP (at the server).

    Settings a mode does not use must stay at their defaults, so that no run silently
    lacks a guarantee its scenario asks for.
    """

    PREFIX: ClassVar[str] = "dp-"

    mode: DpMode = setting(
        "none", "none; sample: DP-SGD on clients; client: at the server; both", key="dp"
    )
    delta: float = setting(1e-5, "delta of every guarantee", low=0.0, high=1.0, low_open=True,
                           high_open=True)  # fmt: skip
    accountant: DpAccountant = setting("rdp", "rdp or prv")
    target_epsilon: float = setting(
        0.0, "sample-level budget per client over the run; 0: none", low=0.0
    )
    noise_multiplier: float = setting(
        0.0, "DP-SGD sigma; 0: the least that keeps dp-target-epsilon", low=0.0
    )
    clip_norm: float = setting(1.0, "per-example gradient clip", low=0.0, low_open=True)
    client_target_epsilon: float = setting(
        0.0, "client-level budget over the run; 0: none", low=0.0
    )
    client_noise_multiplier: float = setting(
        0.0, "client-level sigma; 0: the least that keeps the budget", low=0.0
    )
    client_clip_norm: float = setting(1.0, "clip of each client's update", low=0.0, low_open=True)
    client_sampling: ClientSampling = setting(
        "fixed", "client-level DP: fixed-size sampling, or poisson (amplified)"
    )
    physical_batch_size: int = setting(
        32, "DP-SGD: examples per forward pass (batch-size is the expected batch)", low=1,
        key="physical-batch-size",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_section(self)
        ignored = [
            *(("dp-target-epsilon", "dp-noise-multiplier") if not self.sample else ()),
            *(
                ("dp-client-target-epsilon", "dp-client-noise-multiplier")
                if not self.client
                else ()
            ),
        ]
        for key in ignored:
            value = getattr(self, key.removeprefix("dp-").replace("-", "_"))
            if value != 0.0:
                raise ConfigError(
                    key, f"is set ({value!r}) but dp is {self.mode!r}, which ignores it"
                )
        if self.sample and self.target_epsilon == 0.0 and self.noise_multiplier == 0.0:
            raise ConfigError(
                "dp-target-epsilon",
                f"dp {self.mode!r} needs it or dp-noise-multiplier (both are 0)",
            )
        if (
            self.client
            and self.client_target_epsilon == 0.0
            and self.client_noise_multiplier == 0.0
        ):
            raise ConfigError(
                "dp-client-target-epsilon",
                f"dp {self.mode!r} needs it or dp-client-noise-multiplier (both are 0)",
            )

    @property
    def sample(self) -> bool:
        """Sample-level DP (DP-SGD on the clients) is on."""
        return self.mode in ("sample", "both")

    @property
    def client(self) -> bool:
        """Client-level DP (clipping and noise at the server) is on."""
        return self.mode in ("client", "both")

    @property
    def enabled(self) -> bool:
        """Any DP is on."""
        return self.mode != "none"
