"""Adapter from trustgain requests to any diffusers ``DiffusionPipeline.__call__``.

It maps request fields to the argument names the pipeline's ``__call__`` accepts, passes the
seed as a CPU ``torch.Generator`` (so a seed means the same noise on every device), and
attaches stage hooks only through diffusers' own ``latents=`` and ``callback_on_step_end``.
It never changes the wrapped pipeline: with no hooks the call is exactly the bare call.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from trustgain.errors import ConfigError, GeneratorError
from trustgain.types import GenerationRequest, StepHook

if TYPE_CHECKING:
    import torch

_RESERVED = {
    "generator",
    "latents",
    "callback_on_step_end",
    "callback_on_step_end_tensor_inputs",
    "return_dict",
    "callback",
    "callback_steps",
}
_FIELDS = ("prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "height", "width")


class DiffusersGenerator:
    kind = "diffusers"

    def __init__(self, pipe: Any, *, model_id: str | None = None) -> None:
        if not callable(pipe):
            raise GeneratorError(f"{type(pipe).__name__} is not callable")
        self.pipe = pipe
        self._params = set(inspect.signature(pipe.__call__).parameters)
        config = getattr(pipe, "config", {}) or {}
        # str(): from_pretrained keeps a pathlib.Path as given, and records hold JSON only
        self.model_id = str(model_id or config.get("_name_or_path")
                            or f"unnamed:{type(pipe).__name__}")
        from trustgain.models import MINI_SD_ID, mini_sd_path

        if self.model_id == str(mini_sd_path()):  # the shipped model by its name, not by a
            self.model_id = MINI_SD_ID            # path on this machine
        elif not model_id and Path(self.model_id).expanduser().is_absolute() \
                and Path(self.model_id).expanduser().exists():
            self.model_id = Path(self.model_id).name  # records never carry this machine's folders
        self.callback_tensor_inputs = tuple(getattr(pipe, "_callback_tensor_inputs", ()) or ())

    def supports(self, capability: str) -> bool:
        """A ``__call__`` argument of the pipeline, or ``"images"`` (what it returns)."""
        return capability == "images" or capability in self._params

    def describe(self) -> dict[str, Any]:
        from trustgain.privacy.finetune_card import model_privacy

        described: dict[str, Any] = {
            "kind": self.kind,
            "class": type(self.pipe).__name__,
            "model_id": self.model_id,
            "config_sha256": self.config_sha256(),
        }
        privacy = model_privacy(self.pipe)  # None unless made by `trustgain finetune`
        if privacy is not None:
            described["privacy"] = privacy
        if self.decoder() == "vae_mark":
            described["vae"] = "vae_mark"  # detection must read with its encoder (--mark-vae)
        return described

    def decoder(self) -> str | None:
        """The name of the folder the pipeline's VAE was loaded from (``"vae"``, or
        ``"vae_mark"`` for a mark VAE from ``python -m trustgain.watermark.mark_vae``)."""
        config = getattr(getattr(self.pipe, "vae", None), "config", None)
        source = getattr(config, "_name_or_path", None) if config is not None else None
        return Path(str(source)).name if source else None

    def config_sha256(self) -> str:
        """Digest of the pipeline's and its components' configs (not of the weights), the same
        wherever the model is installed: the folders they were loaded from are left out."""
        configs: dict[str, Any] = {"pipeline": dict(getattr(self.pipe, "config", {}) or {})}
        for name, component in (getattr(self.pipe, "components", {}) or {}).items():
            config = getattr(component, "config", None)
            if config is not None:
                configs[name] = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        for config in configs.values():
            if isinstance(config, dict):
                config.pop("_name_or_path", None)
        text = json.dumps(configs, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def latent_shape(self, request: GenerationRequest) -> tuple[int, ...]:
        """Shape of the initial latents a UNet-based pipeline draws for ``request``."""
        unet = getattr(self.pipe, "unet", None)
        scale = getattr(self.pipe, "vae_scale_factor", None)
        if unet is None or scale is None:
            raise GeneratorError(
                f"cannot infer the latent shape of {type(self.pipe).__name__}; "
                "in-generation stages need a UNet pipeline with a VAE"
            )
        size = unet.config.sample_size
        sh, sw = (size, size) if isinstance(size, int) else tuple(size)
        if request.height and request.width:
            h, w = request.height, request.width
        else:  # as diffusers does: with either side missing, both take the model's default
            h, w = sh * scale, sw * scale
        if h % scale or w % scale:
            raise ConfigError(f"height and width must be multiples of {scale}")
        return (request.batch_size, unet.config.in_channels, h // scale, w // scale)

    def check_hooks(self, hooks: Sequence[StepHook]) -> None:
        if not hooks:
            return
        if not self.supports("callback_on_step_end"):
            raise GeneratorError(f"{type(self.pipe).__name__} takes no callback_on_step_end")
        for hook in hooks:
            bad = set(hook.tensor_inputs) - set(self.callback_tensor_inputs)
            if bad:
                raise GeneratorError(
                    f"stage '{hook.stage}' asks for {', '.join(sorted(bad))}; "
                    f"{type(self.pipe).__name__} offers {', '.join(self.callback_tensor_inputs)}"
                )

    def kwargs(
        self,
        request: GenerationRequest,
        *,
        latents: torch.Tensor | None = None,
        hooks: Sequence[StepHook] = (),
    ) -> dict[str, Any]:
        """The exact keyword arguments of the pipeline call for ``request``."""
        kwargs: dict[str, Any] = {}
        if request.backend not in (None, self.model_id):
            raise GeneratorError(f"request is for backend '{request.backend}', but this "
                                 f"generator runs only {self.model_id}; use MultiGenerator")
        for name in _FIELDS:
            value = getattr(request, name)
            if value is None:
                continue
            if name not in self._params:
                raise GeneratorError(f"{type(self.pipe).__name__} takes no '{name}'")
            kwargs[name] = list(value) if isinstance(value, tuple) else value  # prompt lists
        n = request.num_images_per_prompt
        if "num_images_per_prompt" in self._params:
            kwargs["num_images_per_prompt"] = n
        elif "batch_size" in self._params:
            kwargs["batch_size"] = n
        elif n != 1:
            raise GeneratorError(f"{type(self.pipe).__name__} makes one output per call")
        if request.seed is not None:
            import torch

            kwargs["generator"] = torch.Generator(device="cpu").manual_seed(request.seed)
        for key, value in request.extra.items():
            if key in _RESERVED:
                raise ConfigError(
                    f"'{key}' is managed by trustgain; do not pass it to the pipeline"
                )
            if key not in self._params:
                raise GeneratorError(f"{type(self.pipe).__name__} takes no '{key}'")
            kwargs[key] = value
        if latents is not None:
            if not self.supports("latents"):
                raise GeneratorError(f"{type(self.pipe).__name__} takes no latents=")
            unet = getattr(self.pipe, "unet", None)
            kwargs["latents"] = latents if unet is None else latents.to(dtype=unet.dtype)
        if hooks:
            self.check_hooks(hooks)
            kwargs["callback_on_step_end"] = _fold(hooks)
            kwargs["callback_on_step_end_tensor_inputs"] = sorted(
                {t for h in hooks for t in h.tensor_inputs}
            )
        return kwargs

    def __call__(
        self,
        request: GenerationRequest,
        *,
        latents: torch.Tensor | None = None,
        hooks: Sequence[StepHook] = (),
    ) -> tuple[Any, ...]:
        result = self.pipe(**self.kwargs(request, latents=latents, hooks=hooks))
        images = result.images if hasattr(result, "images") else result[0]
        import torch

        if isinstance(images, (np.ndarray, torch.Tensor)):
            return tuple(images[i] for i in range(images.shape[0]))
        return tuple(images)


def _fold(hooks: Sequence[StepHook]) -> Any:
    """One diffusers callback running every hook in order (as MultiPipelineCallbacks does)."""

    def callback(pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict:
        for hook in hooks:
            view = MappingProxyType({k: callback_kwargs[k] for k in hook.tensor_inputs})
            changed = hook.fn(step, int(timestep), view)
            if changed:
                extra = set(changed) - set(hook.tensor_inputs)
                if extra:
                    raise GeneratorError(f"stage '{hook.stage}' changed undeclared {sorted(extra)}")
                callback_kwargs.update(changed)
        return callback_kwargs

    return callback
