"""Caption checks, prompts, model resolution and the frame policy: no model needed."""

from __future__ import annotations

import pytest

from captioner.checks import check_caption, strip_boilerplate
from captioner.frames import FramePolicy, frame_times
from captioner.models import ALIASES, ModelError, missing_weights_message, resolve_model
from captioner.prompts import PromptError, available, clip_values, load_prompt

GOOD = "A red square slides from left to right across a textured blue background while the camera stays still."


def test_good_caption_passes_unchanged():
    assert check_caption(GOOD) == (GOOD, [])


@pytest.mark.parametrize("opener", ["The video shows ", "This clip depicts ", "In this video, ",
                                    "Sure, here is a detailed description of the video: The video shows ",
                                    "Sure, here is a description of the video: ", "Certainly! Here's a caption: ",
                                    "The clip shows: ", "Okay. "])
def test_boilerplate_openers_are_stripped(opener):
    text, flags = check_caption(opener + "a red square sliding to the right over a blue background.")
    assert text == "A red square sliding to the right over a blue background."
    assert flags == []


def test_strip_keeps_text_without_opener():
    assert strip_boilerplate("  The   camera pans left.  ") == "The camera pans left."
    assert strip_boilerplate("Sure-footed goats climb a cliff.") == "Sure-footed goats climb a cliff."
    assert check_caption("The clip shows: a cat.") == ("A cat.", ["too_short"])


@pytest.mark.parametrize("raw,flag", [
    ("", "empty"),
    ("   ", "empty"),
    ("The video shows", "empty"),
    ("I'm sorry, but I cannot describe the video you provided.", "refusal"),
    ("As an AI language model I do not have the ability to watch videos.", "refusal"),
    ("a red square a red square a red square a red square a red square", "repetition"),
    ("the car drives the car drives the car drives the car drives away now", "repetition"),
    ("blue", "too_short"),
])
def test_bad_captions_are_flagged(raw, flag):
    _, flags = check_caption(raw)
    assert flag in flags


def test_truncated_caption_is_flagged_but_kept():
    text, flags = check_caption(GOOD, hit_token_limit=True)
    assert text == GOOD and flags == ["truncated"]


def test_prompts_shipped_and_rendered():
    assert {"detailed", "short", "dense_shot"} <= set(available())
    row = dict(start_sec=1.0, end_sec=4.5, num_frames=84, fps=24.0, width=640, height=360, clip_id="x")
    text = load_prompt("detailed").render(**clip_values(row, 8))
    assert "3.5-second" in text and "8 frames" in text and "{" not in text


def test_prompt_from_file_and_errors(tmp_path):
    p = tmp_path / "mine_v1.txt"
    p.write_text("Describe {meta_place} in {duration:.0f} s")
    prompt = load_prompt(str(p))
    assert prompt.prompt_id == "mine_v1"
    assert prompt.render(meta_place="the street", duration=3.0) == "Describe the street in 3 s"
    with pytest.raises(PromptError, match="meta_place"):
        prompt.render(duration=3.0)
    with pytest.raises(PromptError, match="unknown prompt"):
        load_prompt("no_such_prompt")


def test_model_aliases_and_remote_code():
    assert resolve_model("qwen-vl").model_id == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert resolve_model("llava").model_id == "llava-hf/llava-onevision-qwen2-7b-ov-hf"
    assert resolve_model("qwen2.5-vl-72b").family == "qwen2.5-vl"
    assert {"qwen2-vl", "qwen2.5-vl-3b", "qwen2.5-vl-7b", "llava-next-video", "cogvlm"} <= set(ALIASES)
    with pytest.raises(ModelError, match="--trust-remote-code"):
        resolve_model("cogvlm")
    assert resolve_model("cogvlm", trust_remote_code=True).remote_code
    assert resolve_model("Qwen/Qwen2-VL-2B-Instruct").family == "qwen2-vl"
    with pytest.raises(ModelError, match="unknown model"):
        resolve_model("not-a-model")
    assert "hf download Some/Model" in missing_weights_message("Some/Model")


def test_frame_policy_uniform_and_fps():
    row = dict(start_frame=100, end_frame=200, fps=25.0, start_sec=4.0)
    idx = FramePolicy(num_frames=4).indices(row)
    assert idx == [112, 137, 162, 187]
    assert frame_times(row, idx) == [4.48, 5.48, 6.48, 7.48]
    even = lambda n: n + n % 2  # noqa: E731  (a model that wants whole pairs of frames)
    assert len(FramePolicy(num_frames=5).indices(row, even)) == 6
    fps_idx = FramePolicy(sample_fps=2.0).indices(row)  # 4 s at 2 fps
    assert len(fps_idx) == 8 and all(100 <= i < 200 for i in fps_idx)
    assert len(FramePolicy(sample_fps=10.0, max_frames=6).indices(row)) == 6
    with pytest.raises(ValueError):
        FramePolicy(sample_fps=-1)
