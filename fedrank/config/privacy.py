"""The differential-privacy section of a scenario (docs/privacy.md)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from fedrank.config.fields import check_section, flat_key, setting
from fedrank.errors import ConfigError

DpMode = Literal["none", "sample", "client", "both"]
DpAccountant = Literal["rdp", "prv"]
ClientSampling = Literal["fixed", "poisson"]
ClientMechanism = Literal["gaussian", "rqm"]

_SAMPLE_ONLY = ("dp-target-epsilon", "dp-noise-multiplier")
_CLIENT_ONLY = (
    "dp-client-target-epsilon",
    "dp-client-noise-multiplier",
    "dp-adaptive-clipping",
    "dp-clip-quantile",
    "dp-clip-learning-rate",
    "dp-count-stddev",
    "dp-publish-diagnostics",
    "dp-mechanism",
    "dp-rqm-levels",
    "dp-rqm-keep-probability",
)
_ANY_DP = ("dp-reproducible-noise",)
_ADAPTIVE_ONLY = ("dp-clip-quantile", "dp-clip-learning-rate", "dp-count-stddev")
_RQM_ONLY = ("dp-rqm-levels", "dp-rqm-keep-probability")


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
    client_clip_norm: float = setting(
        1.0, "clip of each client's update (the first round's, with adaptive clipping)",
        low=0.0, low_open=True,
    )  # fmt: skip
    client_sampling: ClientSampling = setting(
        "poisson",
        "client-level DP: poisson (each client with q = clients-per-round / num-clients, "
        "amplified), or fixed (only with clients-per-round = num-clients)",
    )
    physical_batch_size: int = setting(
        32, "DP-SGD: examples per forward pass (batch-size is the expected batch)", low=1,
        key="physical-batch-size",
    )  # fmt: skip
    reproducible_noise: bool = setting(
        False,
        "SIMULATION ONLY: DP noise and privacy sampling replayable from the seed; the run "
        "is marked 'not private: reproducible noise' and a deployment refuses it",
    )
    adaptive_clipping: bool = setting(
        False, "client-level DP: the clip norm follows a quantile of update norms (accounted)"
    )
    clip_quantile: float = setting(
        0.5, "adaptive clipping: target quantile of unclipped updates", low=0.0, high=1.0
    )
    clip_learning_rate: float = setting(
        0.2, "adaptive clipping: geometric step of the clip norm", low=0.0, low_open=True
    )
    count_stddev: float = setting(
        0.0, "adaptive clipping: noise std of the unclipped count; 0: expected clients / 20",
        low=0.0,
    )  # fmt: skip
    client_mechanism: ClientMechanism = setting(
        "gaussian",
        "client-level mechanism: gaussian (the server clips and noises the sum) or rqm "
        "(each client quantizes its clipped update at random, Youn et al. 2023)",
        key="dp-mechanism",
    )
    rqm_levels: int = setting(
        16, "RQM: quantization levels m (ceil(log2 m) bits a coordinate)", low=2, high=65536,
        key="dp-rqm-levels",
    )  # fmt: skip
    rqm_keep_probability: float = setting(
        0.5, "RQM: probability that each interior level is kept", low=0.0, high=1.0,
        high_open=True, key="dp-rqm-keep-probability",
    )  # fmt: skip
    publish_diagnostics: bool = setting(
        False,
        "client-level DP: also publish the clip fraction and reply counts (outside the "
        "guarantee; withheld by default)",
    )

    def __post_init__(self) -> None:
        check_section(self)
        ignored = [
            *(_SAMPLE_ONLY if not self.sample else ()),
            *(_CLIENT_ONLY if not self.client else ()),
            *(_ANY_DP if not self.enabled else ()),
            *(_ADAPTIVE_ONLY if self.client and not self.adaptive_clipping else ()),
            *(_RQM_ONLY if self.client and not self.rqm else ()),
        ]
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        names = {flat_key(type(self), f): f.name for f in dataclasses.fields(self)}
        for key in ignored:
            name = names[key]
            value = getattr(self, name)
            if value != defaults[name]:
                raise ConfigError(key, f"is set ({value!r}) but {self._why_ignored(key)}")
        if self.sample and self.target_epsilon == 0.0 and self.noise_multiplier == 0.0:
            raise ConfigError(
                "dp-target-epsilon",
                f"dp {self.mode!r} needs it or dp-noise-multiplier (both are 0)",
            )
        if self.rqm:
            # RQM is calibrated to a budget; it has no noise multiplier, no adaptive clip.
            for key, value, default in (
                ("dp-client-noise-multiplier", self.client_noise_multiplier, 0.0),
                ("dp-adaptive-clipping", self.adaptive_clipping, False),
            ):
                if value != default:
                    raise ConfigError(key, f"is set ({value!r}) but dp-mechanism 'rqm' ignores it")
            if self.client_target_epsilon == 0.0:
                raise ConfigError(
                    "dp-client-target-epsilon", "dp-mechanism 'rqm' is calibrated to it: set it"
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

    def _why_ignored(self, key: str) -> str:
        if key in _ADAPTIVE_ONLY and self.client:
            return "dp-adaptive-clipping is off, which ignores it"
        if key in _RQM_ONLY and self.client:
            return "dp-mechanism is not 'rqm', which ignores it"
        return f"dp is {self.mode!r}, which ignores it"

    @property
    def sample(self) -> bool:
        """Sample-level DP (DP-SGD on the clients) is on."""
        return self.mode in ("sample", "both")

    @property
    def client(self) -> bool:
        """Client-level DP (clipping and noise at the server) is on."""
        return self.mode in ("client", "both")

    @property
    def rqm(self) -> bool:
        """Client-level DP by RQM on each client (no server noise)."""
        return self.client and self.client_mechanism == "rqm"

    @property
    def enabled(self) -> bool:
        """Any DP is on."""
        return self.mode != "none"

    @property
    def noise_kind(self) -> Literal["secure", "reproducible"]:
        """Where DP noise and privacy sampling come from (``privacy.json``'s ``noise``)."""
        return "reproducible" if self.reproducible_noise else "secure"
