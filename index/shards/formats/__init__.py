"""Export formats of build-shards: one writer per file behind `base.Writer`, looked up in `WRITERS`."""

from .base import Context, FormatInfo, Writer
from .diffusion_pipe import DiffusionPipeWriter
from .finetrainers import FinetrainersWriter
from .folder import FolderWriter
from .musubi import MusubiWriter
from .opensora_csv import OpenSoraCSVWriter
from .webdataset import WebDatasetWriter

WRITERS: dict[str, type[Writer]] = {
    "webdataset": WebDatasetWriter,
    "opensora-csv": OpenSoraCSVWriter,
    "folder": FolderWriter,
    "finetrainers": FinetrainersWriter,
    "musubi": MusubiWriter,
    "diffusion-pipe": DiffusionPipeWriter,
}

__all__ = ["Context", "FormatInfo", "WRITERS", "Writer"]
