"""Frozen encoders around the STDiT: a video VAE (raw pixels, SD-VAE frame by frame, or a diffusers video VAE
with temporal compression) and a text encoder.

Every VAE maps videos (B, 3, T, H, W) in [-1, 1] to normalised latents (B, C, t, H/factor, W/factor) and back.
Video VAEs are causal in time: the first frame is encoded alone, then each `time_factor` frames give one latent
frame, so they take T = 1 + k * `frame_step` frames and give t = (T - 1) / time_factor + 1. `latent_shape(T, H, W)`
says it before any work and refuses a size the VAE cannot take (a bucket of 16 frames for a 4k+1 VAE, say).

Models load from a local folder or the Hugging Face cache through `from_pretrained`; offline, a missing model
is the one-line `index.hub.missing_model_message`.
"""

from __future__ import annotations

import abc
import inspect
from pathlib import Path

import torch

from index.hub import is_cached, local_only, missing_model_message


def _load_error(model_id, err: Exception) -> RuntimeError:
    """One line for a model that cannot be loaded: a folder's reason, or how to fetch a hub id."""
    text = str(model_id)
    if Path(text).expanduser().exists() or text.startswith((".", "/", "~")) or "\\" in text:
        reason = " ".join(str(err).split())[:160]
        return RuntimeError(f"cannot load model from folder {text!r} ({type(err).__name__}: {reason})")
    if is_cached(text):
        return RuntimeError(f"cannot load model {text} from the local cache ({type(err).__name__}: "
                            f"{' '.join(str(err).split())[:160]})")
    return RuntimeError(missing_model_message(text))


#################################################################################
#                                      VAE                                      #
#################################################################################

class VideoVAE(torch.nn.Module, abc.ABC):
    """Videos (B, 3, T, H, W) in [-1, 1] <-> latents (B, channels, t, H / factor, W / factor)."""

    channels: int = 3
    factor: int = 1  # spatial compression
    time_factor: int = 1  # temporal compression: 1 for per-frame VAEs
    frame_step: int = 1  # frame counts it takes: 1 + k * frame_step (1: any)

    @abc.abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> (B, C, t, h, w), normalised for the diffusion model."""

    @abc.abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, t, h, w) -> (B, 3, T, H, W) in [-1, 1]."""

    def valid_frames(self, frames: int) -> bool:
        return frames >= 1 and (frames - 1) % self.frame_step == 0

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of a (frames, height, width) video; ValueError (one line) for a size it cannot take."""
        name = type(self).__name__
        if not self.valid_frames(frames):
            below = max(1, (frames - 1) // self.frame_step * self.frame_step + 1)
            raise ValueError(f"{name} takes {self.frame_step}k+1 frames, not {frames} (use {below} or "
                             f"{below + self.frame_step})")
        if height % self.factor or width % self.factor:
            raise ValueError(f"{name} takes heights and widths divisible by {self.factor}, not {height}x{width}")
        return self.channels, (frames - 1) // self.time_factor + 1, height // self.factor, width // self.factor

    def video_frames(self, latent_frames: int) -> int:
        """Frames a decode of `latent_frames` latent frames gives."""
        return (latent_frames - 1) * self.time_factor + 1


class PixelsVAE(VideoVAE):
    """No VAE: the model works on pixels directly (tiny experiments, CPU demos)."""

    def encode(self, video):
        self.latent_shape(*video.shape[2:])
        return video

    def decode(self, latents):
        return latents.clamp(-1, 1)


def _from_pretrained(cls, path: str, subfolder: str | None, **kwargs):
    """Load a diffusers model, refusing a folder that holds another class (its weights would load as random)."""
    local_only(path)  # an unreachable hub turns the process offline now, not after minutes of retries
    try:
        found = cls.load_config(path, subfolder=subfolder).get("_class_name", cls.__name__)
    except (OSError, ValueError) as err:
        raise _load_error(path, err) from err
    if found != cls.__name__:
        kind = next((k for k, v in VAES.items() if getattr(v, "model_class", None) == found), None)
        raise ValueError(f"{path} holds a {found}, not a {cls.__name__}" + (f": use vae.kind={kind}" if kind else ""))
    try:
        return cls.from_pretrained(path, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as err:
        raise _load_error(path, err) from err


_DTYPES = {None: None, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def _dtype(name):
    if name not in _DTYPES:
        raise ValueError(f"unknown vae dtype {name!r}; choose one of {sorted(k for k in _DTYPES if k)}")
    return _DTYPES[name]


class SDVAE(VideoVAE):
    """diffusers `AutoencoderKL` (SD-VAE family) applied frame by frame in micro-batches, with its scaling factor."""

    def __init__(self, path: str, micro_batch: int = 16, subfolder: str | None = None, sample: bool = True,
                 dtype: str | None = None):
        super().__init__()
        from diffusers import AutoencoderKL

        self.vae = _from_pretrained(AutoencoderKL, path, subfolder, torch_dtype=_dtype(dtype))
        self.vae.requires_grad_(False).eval()
        self.micro_batch, self.sample = micro_batch, sample
        self.channels = self.vae.config.latent_channels
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling = self.vae.config.scaling_factor

    def _frames(self, fn, x: torch.Tensor) -> torch.Tensor:
        B, C, T = x.shape[:3]
        flat = x.transpose(1, 2).reshape(B * T, C, *x.shape[3:])  # (B*T, C, H, W)
        out = torch.cat([fn(chunk) for chunk in flat.split(self.micro_batch)])  # (B*T, C', H', W')
        return out.view(B, T, *out.shape[1:]).transpose(1, 2)  # (B, C', T, H', W')

    @torch.no_grad()
    def encode(self, video):
        self.latent_shape(*video.shape[2:])

        def enc(frames):
            dist = self.vae.encode(frames.to(self.vae.dtype)).latent_dist
            return (dist.sample() if self.sample else dist.mode()) * self.scaling
        return self._frames(enc, video).float()

    @torch.no_grad()
    def decode(self, latents):
        dec = lambda z: self.vae.decode(z.to(self.vae.dtype) / self.scaling).sample  # noqa: E731
        return self._frames(dec, latents).float().clamp(-1, 1)


def _stat(value, default: float) -> torch.Tensor:
    return torch.as_tensor(default if value is None else value, dtype=torch.float32).reshape(1, -1, 1, 1, 1)


class DiffusersVideoVAE(VideoVAE):
    """A diffusers video VAE (3D, causal in time), normalised as its pipeline does:
    z = (mode_or_sample - latents_mean) * scaling_factor / latents_std (mean 0, std 1, scaling 1 when absent).

    Memory: `slicing` encodes/decodes one video of the batch at a time; `tiling` (true, or a dict of the model's
    `enable_tiling` arguments such as tile_sample_min_height) splits large frames into overlapping tiles;
    `framewise` (LTX, HunyuanVideo) splits long videos in time. `dtype` loads the weights in bf16/fp16.
    """

    model_class: str = ""

    def __init__(self, path: str, subfolder: str | None = None, sample: bool = True, dtype: str | None = None,
                 tiling: bool | dict = False, slicing: bool = False, framewise: bool | None = None,
                 decode_timestep: float = 0.0):
        super().__init__()
        import diffusers

        self.vae = _from_pretrained(getattr(diffusers, self.model_class), path, subfolder, torch_dtype=_dtype(dtype))
        self.vae.requires_grad_(False).eval()
        if slicing:
            self.vae.enable_slicing()
        if tiling:
            self.vae.enable_tiling(**(tiling if isinstance(tiling, dict) else {}))
        if framewise is not None:
            self.vae.use_framewise_encoding = self.vae.use_framewise_decoding = bool(framewise)
        self.sample, self.decode_timestep = sample, float(decode_timestep)
        self.channels, self.factor, self.time_factor, self.frame_step = self.geometry(self.vae)
        cfg, buffers = self.vae.config, dict(self.vae.named_buffers())
        mean = buffers.get("latents_mean", cfg.get("latents_mean"))
        std = buffers.get("latents_std", cfg.get("latents_std"))
        self.register_buffer("mean", _stat(mean, 0.0), persistent=False)  # (1, C, 1, 1, 1)
        self.register_buffer("std", _stat(std, 1.0), persistent=False)
        self.scaling = float(cfg.get("scaling_factor", 1.0) or 1.0)

    @staticmethod
    @abc.abstractmethod
    def geometry(vae) -> tuple[int, int, int, int]:
        """(channels, factor, time_factor, frame_step) of a loaded model."""

    @torch.no_grad()
    def encode(self, video):
        self.latent_shape(*video.shape[2:])
        dist = self.vae.encode(video.to(self.vae.device, self.vae.dtype)).latent_dist
        z = (dist.sample() if self.sample else dist.mode()).float()  # (B, C, t, h, w)
        return (z - self.mean) * self.scaling / self.std

    @torch.no_grad()
    def decode(self, latents):
        z = (latents.float() * self.std / self.scaling + self.mean).to(self.vae.dtype)
        kwargs = {}
        if self.vae.config.get("timestep_conditioning"):  # LTX-Video 0.9.1+: the decoder is told a noise level
            kwargs["temb"] = torch.full((len(z),), self.decode_timestep, device=z.device, dtype=z.dtype)
        return self.vae.decode(z, **kwargs).sample.float().clamp(-1, 1)  # (B, 3, T, H, W)


class CogVideoXVAE(DiffusersVideoVAE):
    """`AutoencoderKLCogVideoX`: 8x space, 4x time; it decodes latent frames in pairs after the first, so it
    takes 8k+1 frames (49 for CogVideoX)."""

    model_class = "AutoencoderKLCogVideoX"

    @staticmethod
    def geometry(vae):
        tf = int(vae.config.temporal_compression_ratio)
        return (vae.config.latent_channels, 2 ** (len(vae.config.block_out_channels) - 1), tf,
                tf * vae.num_latent_frames_batch_size)


class WanVAE(DiffusersVideoVAE):
    """`AutoencoderKLWan` (Wan 2.1 / 2.2): 8x (16x with patching) space, 4x time; 4k+1 frames (81 for Wan)."""

    model_class = "AutoencoderKLWan"

    @staticmethod
    def geometry(vae):
        tf = vae.config.scale_factor_temporal or 2 ** sum(vae.config.temperal_downsample)
        return vae.config.z_dim, int(vae.spatial_compression_ratio), int(tf), int(tf)


class LTXVideoVAE(DiffusersVideoVAE):
    """`AutoencoderKLLTXVideo`: 32x space, 8x time; 8k+1 frames (161 for LTX-Video)."""

    model_class = "AutoencoderKLLTXVideo"

    @staticmethod
    def geometry(vae):
        tf = int(vae.temporal_compression_ratio)
        return vae.config.latent_channels, int(vae.spatial_compression_ratio), tf, tf


class HunyuanVideoVAE(DiffusersVideoVAE):
    """`AutoencoderKLHunyuanVideo`: 8x space, 4x time; 4k+1 frames (129 for HunyuanVideo)."""

    model_class = "AutoencoderKLHunyuanVideo"

    @staticmethod
    def geometry(vae):
        tf = int(vae.temporal_compression_ratio)
        return vae.config.latent_channels, int(vae.spatial_compression_ratio), tf, tf


VAES: dict[str, type[VideoVAE]] = {"pixels": PixelsVAE, "sd-vae": SDVAE, "cogvideox": CogVideoXVAE,
                                   "wan": WanVAE, "ltx-video": LTXVideoVAE, "hunyuan-video": HunyuanVideoVAE}


def build_vae(kind: str = "pixels", **kwargs) -> VideoVAE:
    """A VAE of `VAES` by kind; unknown kinds and options are one-line ValueErrors naming the valid ones."""
    if kind not in VAES:
        raise ValueError(f"unknown vae {kind!r}; choose one of {sorted(VAES)}")
    params = [p for p in inspect.signature(VAES[kind].__init__).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for vae {kind!r}; valid: {params}")
    return VAES[kind](**kwargs)


#################################################################################
#                                  Text encoder                                 #
#################################################################################

class TextEncoder(torch.nn.Module):
    """A transformers T5 encoder (or CLIP text model) with a fixed max length: captions -> (B, L, C), mask (B, L)."""

    def __init__(self, path: str, kind: str = "t5", max_length: int = 120):
        super().__init__()
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        models = {"t5": T5EncoderModel, "clip": CLIPTextModel}
        if kind not in models:
            raise ValueError(f"unknown text encoder {kind!r}; choose one of {sorted(models)}")
        local_only(path)  # an unreachable hub turns the process offline now, not after minutes of retries
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = models[kind].from_pretrained(path)
        except (OSError, ValueError) as err:
            raise _load_error(path, err) from err
        self.model.requires_grad_(False).eval()
        self.max_length = max_length
        self.channels = self.model.config.hidden_size if kind == "clip" else self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def forward(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer(list(captions), max_length=self.max_length, padding="max_length", truncation=True,
                             return_tensors="pt").to(self.device)
        out = self.model(input_ids=tok.input_ids, attention_mask=tok.attention_mask).last_hidden_state
        return out.float(), tok.attention_mask.bool()  # (B, L, C), (B, L)


def build_text_encoder(cfg: dict, out_dir: Path | None = None, is_main: bool = True) -> tuple[Path | str, str]:
    """(path, kind) of the run's text encoder. `kind: tiny` builds a random 2-layer T5 into OUT_DIR/text_encoder
    (on the main process; the others wait for it) that training copies into every checkpoint."""
    kind = cfg.get("kind", "t5")
    if kind == "tiny":
        from trainer.testing import make_tiny_t5

        path = Path(cfg.get("path") or (Path(out_dir) / "text_encoder"))
        if is_main and not (path / "config.json").exists():
            make_tiny_t5(str(path))
        return path, "t5"
    if not cfg.get("path"):
        raise ValueError(f"text.path is required for text.kind={kind}")
    return cfg["path"], kind
