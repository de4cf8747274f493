"""The three conditioning structures (model.conditioning: cross_attn | adaln | in_context): each trains on the
tiny config with a falling loss and its checkpoint loads back as the same structure; the caption reaches the
output of each (its padding does not); adaLN's pooled caption is T5's masked mean and CLIP's own pooled
output; an unknown structure is one line, exit 2, before anything is built. cross_attn's equality with Open-Sora
1.0's STDiT is tests/test_trainer_model.py's and tests/test_trainer_convert.py's."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import trainer.train as train_module
from trainer.model import CONDITIONINGS, STDiT, build_stdit, pool_caption
from trainer.testing import make_square_manifest

REPO = Path(train_module.__file__).resolve().parents[1]
CONFIG = REPO / "trainer" / "configs" / "tiny.yaml"
OVERRIDES = ["data.buckets=[[4,16,16]]", "data.batch_size=4", "text.max_length=8", "optim.warmup_steps=2",
             "optim.lr=1e-3", "train.log_every=1", "train.ckpt_every=12", "train.mixed_precision=no",
             "model.class_dropout_prob=0"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_square_manifest(tmp_path_factory.mktemp("data"), count=4, frames=4, size=16)


@pytest.fixture
def fresh_accelerate():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def tiny(conditioning: str, **kw) -> STDiT:
    torch.manual_seed(0)
    return build_stdit(None, in_channels=3, patch_size=(1, 4, 4), hidden_size=32, depth=2, num_heads=4,
                       caption_channels=16, model_max_length=8, conditioning=conditioning, **kw).eval()


def scramble(model: torch.nn.Module) -> None:
    """Random weights everywhere: the zero-initialised gates and projections would hide the caption's path."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_each_structure_trains_and_its_checkpoint_loads_back(conditioning, manifest, tmp_path, fresh_accelerate):
    out = tmp_path / conditioning
    assert train_module.main(["--config", str(CONFIG), "--data", str(manifest), "--max-steps", "12",
                              "--output-dir", str(out), f"model.conditioning={conditioning}", *OVERRIDES]) == 0
    losses = [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12
    # the same 4 clips every step: the mean of the last 4 losses is 10 % below the first 4's (noise and
    # timesteps differ per step, so single losses vary by ~30 %)
    assert sum(losses[-4:]) < 0.9 * sum(losses[:4]), losses  # measured: 0.81 (adaln) and below
    folder = out / "checkpoints" / "12" / "model"
    loaded = STDiT.from_pretrained(str(folder))
    assert loaded.config.conditioning == conditioning
    saved = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    assert {k: v for k, v in loaded.state_dict().items()}.keys() == saved.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in saved.items())
    names = set(saved)
    assert any(".cross_attn." in k for k in names) == (conditioning == "cross_attn")
    assert any(".adaLN_modulation." in k for k in names) == (conditioning == "adaln")


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_the_caption_reaches_the_output_and_its_padding_does_not(conditioning):
    m = tiny(conditioning)
    scramble(m)
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 3, 3, 16, 16, generator=g), torch.tensor([300.0, 700.0])
    y, other = torch.randn(2, 8, 16, generator=g), torch.randn(2, 8, 16, generator=g)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 5:] = False
    with torch.no_grad():
        base = m(x, t, y, mask)
        changed = m(x, t, other, mask)
        padded = y.clone()
        padded[:, 5:] = torch.randn(2, 3, 16, generator=g) * 10  # only where the mask says padding
        same = m(x, t, padded, mask)
    assert (base - changed).abs().max() > 1e-2 * base.abs().max()  # another caption, another prediction
    torch.testing.assert_close(same, base, rtol=1e-5, atol=1e-5)  # padding is not attended to nor pooled


def test_a_fresh_adaln_model_is_the_identity_in_every_block():
    """adaLN-zero: the modulation layers start at zero, so each block passes its input through unchanged."""
    m = tiny("adaln")
    x = torch.randn(1, 16, 32)
    c = torch.randn(1, 32)
    for block in m.blocks:
        assert torch.equal(block(x, None, c, None, 1), x)


def test_pooling_is_t5s_masked_mean_and_clips_pooled_output():
    from transformers import CLIPTextConfig, CLIPTextModel

    y = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    torch.testing.assert_close(pool_caption(y, mask, "mean"), torch.stack([y[0, :3].mean(0), y[1].mean(0)]))
    # CLIP: its pooler output is the state at the first end-of-text token; CLIP pads with that token, so it is
    # the last token the mask keeps
    torch.manual_seed(0)
    eos = 3  # (transformers reads eos_token_id 2 as an old config and takes the highest id instead)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=8, eos_token_id=eos)).eval()
    ids = torch.tensor([[0, 7, 9, eos, eos, eos], [0, 5, 6, 8, 11, eos]])
    attention = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        out = clip(input_ids=ids, attention_mask=attention)
    torch.testing.assert_close(pool_caption(out.last_hidden_state, attention.bool(), "last"), out.pooler_output)


@pytest.mark.parametrize("override,says", [
    ("model.conditioning=crossattn", "model.conditioning: 'crossattn' is not one of cross_attn, adaln, in_context"),
    ("train.sequence_parallel=3", "train.sequence_parallel: 3 processes must divide model.num_heads 4"),
])
def test_a_bad_structure_or_degree_is_one_line_and_exit_2_before_any_model(override, says, manifest, tmp_path,
                                                                            capsys):
    out = tmp_path / "run"
    assert train_module.main(["--config", str(CONFIG), "--data", str(manifest), "--output-dir", str(out),
                              override, *OVERRIDES]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (out / "config.yaml").exists()  # stopped before the run started


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_plan_counts_each_structures_flops_as_torch_does_and_its_parameters(conditioning):
    """`plan`'s FLOPs of a forward and backward against torch's FlopCounterMode on the real model (attention as
    matmuls), and the structures' parameter counts against the layers each adds or drops."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from trainer import estimate

    m = tiny(conditioning).train()
    B, L, shape = 2, 8, (3, 16, 24)
    x, y, mask = torch.randn(B, 3, *shape), torch.randn(B, L, 16), torch.ones(B, L, dtype=torch.bool)
    mask[0, 5:] = False
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counted:
        m(x, torch.rand(B) * 1000, y, mask, force_drop=torch.zeros(B, dtype=torch.bool)).square().mean().backward()
    fwd = estimate.forward_flops(m, (3, 4, 6), L)
    assert counted.get_total_flops() == B * estimate.train_flops(fwd, False, 32)["hardware"]
    assert (fwd["cross_attention"] > 0) == (conditioning == "cross_attn")
    D, depth = 32, 2
    params = {k: sum(p.numel() for p in tiny(k).parameters()) for k in CONDITIONINGS}
    cross = 4 * (D * D + D)  # q, k, v (kv_linear is 2D wide) and the output projection, with biases
    assert params["cross_attn"] - params["in_context"] == depth * cross
    # adaln: each block's and the final layer's modulation layers replace t_block and the scale-shift tables
    adaln_extra = depth * (6 * D * D + 6 * D) + 2 * D * D + 2 * D - (6 * D * D + 6 * D) - depth * 6 * D - 2 * D
    assert params["adaln"] - params["in_context"] == adaln_extra
