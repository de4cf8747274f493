"""Frozen encoders around the STDiT: a video VAE (SD-VAE frame by frame, or raw pixels) and a text encoder.

Models load from a local folder or the Hugging Face cache through `from_pretrained`; offline, a missing model
is a one-line error naming the model id and the command that downloads it.
"""

from __future__ import annotations

import torch

from index.hub import local_only


def _missing(model_id: str, err: Exception) -> RuntimeError:
    if str(model_id).startswith((".", "/", "~")) or "\\" in str(model_id):
        return RuntimeError(f"cannot load model from folder {model_id!r} ({type(err).__name__}: {str(err)[:120]})")
    return RuntimeError(f"cannot load model {model_id!r} ({type(err).__name__}); download it first with "
                        f"`hf download {model_id}` or pass a local folder")


#################################################################################
#                                      VAE                                      #
#################################################################################

class VideoVAE(torch.nn.Module):
    """Maps videos (B, 3, T, H, W) in [-1, 1] to latents (B, channels, T, H/factor, W/factor) and back."""

    channels: int = 3
    factor: int = 1

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelsVAE(VideoVAE):
    """No VAE: the model works on pixels directly (tiny experiments, CPU demos)."""

    def encode(self, video):
        return video

    def decode(self, latents):
        return latents.clamp(-1, 1)


class SDVAE(VideoVAE):
    """diffusers `AutoencoderKL` (SD-VAE family) applied frame by frame in micro-batches, with its scaling factor."""

    def __init__(self, path: str, micro_batch: int = 16, subfolder: str | None = None, sample: bool = True):
        super().__init__()
        from diffusers import AutoencoderKL

        local_only(path)  # an unreachable hub turns the process offline now, not after minutes of retries
        try:
            self.vae = AutoencoderKL.from_pretrained(path, subfolder=subfolder)
        except (OSError, ValueError) as err:
            raise _missing(path, err) from err
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
        def enc(frames):
            dist = self.vae.encode(frames.to(self.vae.dtype)).latent_dist
            return (dist.sample() if self.sample else dist.mode()) * self.scaling
        return self._frames(enc, video).float()

    @torch.no_grad()
    def decode(self, latents):
        dec = lambda z: self.vae.decode(z.to(self.vae.dtype) / self.scaling).sample  # noqa: E731
        return self._frames(dec, latents).float().clamp(-1, 1)


VAES: dict[str, type[VideoVAE]] = {"pixels": PixelsVAE, "sd-vae": SDVAE}


def build_vae(kind: str = "pixels", **kwargs) -> VideoVAE:
    if kind not in VAES:
        raise ValueError(f"unknown vae {kind!r}; choose one of {sorted(VAES)}")
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
            raise _missing(path, err) from err
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
