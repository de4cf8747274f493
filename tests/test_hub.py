"""An unreachable hub turns the process offline at once, so a missing model is a fast one-line error."""

import socket

import pytest
from huggingface_hub import constants

from index import hub


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused at once
    return port


@pytest.fixture
def unreachable_hub(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "")  # recorded, so the value offline() sets is undone after the test
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "")
    monkeypatch.setattr(hub, "_answer", None)


def test_reachable_tells_a_listening_port_from_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert hub.reachable(f"http://127.0.0.1:{server.getsockname()[1]}")
    assert not hub.reachable(f"http://127.0.0.1:{_closed_port()}")


def test_unreachable_hub_switches_the_process_offline(unreachable_hub):
    import os

    assert hub.offline()
    assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"


def test_set_offline_env_needs_no_probe(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "reachable", lambda *a, **k: pytest.fail("probed although HF_HUB_OFFLINE is set"))
    assert hub.offline()


def test_missing_captioner_model_fails_without_waiting_on_the_network(unreachable_hub):
    from captioner.models import ModelError, ensure_available, resolve_model

    with pytest.raises(ModelError) as err:
        ensure_available(resolve_model("Qwen/Qwen2-VL-2B-Instruct"))
    assert "hf download Qwen/Qwen2-VL-2B-Instruct" in str(err.value)


def test_missing_text_encoder_is_one_line_when_the_hub_is_unreachable(unreachable_hub):
    from trainer.encoders import TextEncoder

    with pytest.raises(RuntimeError) as err:
        TextEncoder("nobody/no-such-t5")
    assert "hf download nobody/no-such-t5" in str(err.value) and "\n" not in str(err.value)
    assert constants.HF_HUB_OFFLINE  # the load read the local cache only
