"""Tests for nakt_ray.zoo: every architecture builds and runs forward/backward at tiny sizes, in 2D and (where it can)
in 3D; bad input fails loudly."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nakt_ray import zoo
from nakt_ray.errors import ConfigError
from nakt_ray.zoo import (
    UnknownArchitectureError,
    check_arch_args,
    check_spatial_size,
    count_parameters,
    create_model,
    describe,
    list_architectures,
    register_architecture,
    spatial_dims_of,
    volume_architectures,
)

ARCHITECTURES = ["attention_unet", "basic_unet", "dynunet", "segresnet", "swin_unetr", "timm_unet", "unet"]
VOLUME_ARCHITECTURES = ["attention_unet", "basic_unet", "dynunet", "segresnet", "swin_unetr", "unet"]

# The knobs each architecture promises to expose (configs and searches rely on these names).
EXPOSED_ARGS = {
    "unet": {"channels", "strides", "num_res_units", "dropout", "spatial_dims"},
    "attention_unet": {"channels", "strides", "dropout", "spatial_dims"},
    "segresnet": {"init_filters", "blocks_down", "blocks_up", "dropout_prob", "spatial_dims"},
    "basic_unet": {"features", "dropout", "spatial_dims"},
    "swin_unetr": {"feature_size", "depths", "num_heads", "spatial_dims"},
    "dynunet": {"filters", "res_block", "dropout", "spatial_dims"},
    "timm_unet": {"encoder", "decoder_channels", "spatial_dims"},
}

# Parameter counts of the default 2D builds (in_channels=1, num_classes=2), measured before spatial_dims existed:
# adding it must leave every existing 2D config building exactly the same network.
PARAMS_2D = {
    "attention_unet": 493_990,
    "basic_unet": 495_922,
    "segresnet": 1_576_402,
    "swin_unetr": 1_590_128,
    "timm_unet": 12_449_954,
    "unet": 205_521,
}

# name, in_channels, num_classes, (H, W), arch_args. Batch 2 throughout: batch norm needs > 1 value per channel.
FORWARD_CASES = [
    ("unet", 1, 2, (32, 32), {}),
    ("unet", 3, 4, (32, 64), {}),
    ("unet", 1, 3, (16, 16), {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 0}),  # lists, as YAML
    ("attention_unet", 1, 2, (32, 32), {}),
    ("attention_unet", 3, 3, (32, 32), {}),
    ("segresnet", 1, 2, (32, 32), {}),
    ("segresnet", 3, 4, (32, 32), {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}),
    ("basic_unet", 1, 2, (32, 32), {}),
    ("basic_unet", 3, 3, (32, 32), {}),
    ("swin_unetr", 1, 2, (64, 64), {}),
    ("swin_unetr", 3, 4, (64, 64), {}),
    ("dynunet", 1, 2, (32, 32), {}),
    ("dynunet", 3, 3, (16, 16), {"filters": [8, 16, 32], "res_block": True}),
    ("timm_unet", 1, 2, (64, 64), {"encoder": "resnet18"}),
    ("timm_unet", 3, 4, (64, 64), {"encoder": "efficientnet_b0"}),
    ("timm_unet", 1, 3, (64, 64), {"encoder": "convnext_atto"}),
    ("timm_unet", 3, 2, (64, 64), {"encoder": "resnet18", "decoder_channels": [32, 16, 16, 8]}),
]


@pytest.mark.parametrize(
    ("name", "in_channels", "num_classes", "spatial_size", "arch_args"),
    FORWARD_CASES,
    ids=[f"{c[0]}-in{c[1]}-k{c[2]}-{c[3][0]}x{c[3][1]}-{i}" for i, c in enumerate(FORWARD_CASES)],
)
def test_forward_backward(name, in_channels, num_classes, spatial_size, arch_args):
    torch.manual_seed(0)
    model = create_model(name, in_channels, num_classes, spatial_size, **arch_args)
    model.train()
    x = torch.randn(2, in_channels, *spatial_size)
    target = torch.randint(0, num_classes, (2, *spatial_size))

    logits = model(x)

    assert logits.shape == (2, num_classes, *spatial_size)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    F.cross_entropy(logits, target).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for _, p in params)
    assert any(p.grad.abs().sum() > 0 for _, p in params)


def test_list_architectures_is_sorted_and_complete():
    assert list_architectures() == ARCHITECTURES
    assert volume_architectures() == VOLUME_ARCHITECTURES


@pytest.mark.parametrize("name", sorted(PARAMS_2D))
def test_2d_builds_are_unchanged_by_spatial_dims(name):
    assert count_parameters(create_model(name, 1, 2, (64, 64))) == PARAMS_2D[name]
    assert count_parameters(create_model(name, 1, 2, (64, 64), spatial_dims=2)) == PARAMS_2D[name]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_describe_exposes_the_documented_knobs(name):
    defaults = describe(name)
    assert set(defaults) == EXPOSED_ARGS[name]
    check_arch_args(name, defaults)  # the defaults are themselves valid arch_args


def test_describe_defaults_match_the_spec():
    assert describe("unet")["channels"] == (16, 32, 64, 128)
    assert describe("swin_unetr")["feature_size"] % 12 == 0
    assert describe("basic_unet")["features"] == (16, 16, 32, 64, 128, 16)
    assert describe("timm_unet")["encoder"] == "resnet18"


def test_timm_unet_derives_decoder_width_from_encoder_stages():
    resnet = create_model("timm_unet", 1, 2, (64, 64))
    convnext = create_model("timm_unet", 1, 2, (64, 64), encoder="convnext_atto")
    assert [b.convs[0].out_channels for b in resnet.decoder] == [128, 64, 32, 16]
    assert [b.convs[0].out_channels for b in convnext.decoder] == [64, 32, 16]


def test_unknown_architecture_lists_valid_names_and_closest_match():
    with pytest.raises(UnknownArchitectureError) as info:
        create_model("unet2", 1, 2, (64, 64))
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "'unet2'" in message
    assert "did you mean 'unet'?" in message
    for name in ARCHITECTURES:
        assert name in message


def test_unknown_architecture_without_close_match_still_lists_names():
    with pytest.raises(UnknownArchitectureError) as info:
        describe("xyzzy")
    assert "did you mean" not in str(info.value)
    assert "valid: " + ", ".join(ARCHITECTURES) in str(info.value)


def test_bad_arch_arg_names_key_and_allowed_keys():
    with pytest.raises(ValueError) as info:
        create_model("unet", 1, 2, (64, 64), chanels=(8, 16), dropout=0.1)
    message = str(info.value)
    assert "'unet'" in message
    assert "chanels" in message
    assert "did you mean 'channels'" in message
    for key in EXPOSED_ARGS["unet"]:
        assert key in message


def test_check_arch_args_rejects_pretrained_for_timm_unet():
    with pytest.raises(ValueError, match="pretrained"):
        check_arch_args("timm_unet", {"pretrained": True})


@pytest.mark.parametrize(
    ("name", "spatial_size", "arch_args", "expected"),
    [
        ("unet", (60, 64), {}, "multiples of 8"),
        ("unet", (8, 8), {}, "at least 16"),
        ("unet", (40, 40), {"channels": [8, 16, 32, 64, 128], "strides": [2, 2, 2, 2]}, "multiples of 16"),
        ("attention_unet", (36, 36), {}, "multiples of 8"),
        ("segresnet", (36, 36), {}, "multiples of 8"),
        ("segresnet", (12, 12), {"blocks_down": [1, 2, 2, 2, 2], "blocks_up": [1, 1, 1, 1]}, "multiples of 16"),
        ("basic_unet", (16, 16), {}, "at least 32"),
        ("basic_unet", (40, 48), {}, "multiples of 16"),
        ("swin_unetr", (48, 48), {}, "multiples of 32"),
        ("swin_unetr", (32, 32), {}, "at least 64"),
        ("timm_unet", (100, 96), {}, "multiples of 32"),
        ("dynunet", (8, 8), {}, "at least 16"),
        ("dynunet", (36, 36), {}, "multiples of 8"),
        ("unet", (16, 60, 64), {"spatial_dims": 3}, "D, H and W must be multiples of 8"),
        ("unet", (8, 16, 16), {"spatial_dims": 3}, "at least 16"),
        ("swin_unetr", (32, 64, 64), {"spatial_dims": 3}, "at least 64"),
        ("dynunet", (16, 16, 8), {"spatial_dims": 3}, "at least 16"),
        ("unet", (0, 64), {}, "two positive ints"),
        ("unet", (64,), {}, "two positive ints"),
        ("unet", (64, 64, 64, 64), {}, "two positive ints \\(H, W\\) or three \\(D, H, W\\)"),
        ("unet", (64.0, 64.0), {}, "two positive ints"),
    ],
)
def test_bad_spatial_size(name, spatial_size, arch_args, expected):
    with pytest.raises(ValueError, match=expected):
        check_spatial_size(name, spatial_size, arch_args)
    with pytest.raises(ValueError, match=expected):
        create_model(name, 1, 2, spatial_size, **arch_args)


def test_good_spatial_sizes_pass():
    check_spatial_size("unet", (64, 128))
    check_spatial_size("segresnet", (8, 8))
    check_spatial_size("swin_unetr", [64, 96])
    check_spatial_size("unet", (16, 32, 48), {"spatial_dims": 3})
    check_spatial_size("dynunet", [32, 64, 64], {"spatial_dims": 3})


@pytest.mark.parametrize(
    ("name", "arch_args", "expected"),
    [
        ("unet", {"channels": [8, 16, 32], "strides": [2, 2, 2]}, "len\\(strides\\) == len\\(channels\\) - 1"),
        ("segresnet", {"init_filters": 12}, "multiple of 8"),
        ("segresnet", {"blocks_up": [1, 1]}, "len\\(blocks_up\\)"),
        ("basic_unet", {"features": [8, 16, 32]}, "6 entries"),
        ("swin_unetr", {"feature_size": 16}, "multiple of 12"),
        ("swin_unetr", {"num_heads": [5, 6, 12, 24]}, "not divisible by num_heads 5"),
        ("timm_unet", {"decoder_channels": [32, 16]}, "decoder_channels needs 4 entries"),
        ("dynunet", {"filters": [8, 16]}, "at least 3 levels"),
    ],
)
def test_bad_arch_arg_values(name, arch_args, expected):
    with pytest.raises(ValueError, match=expected):
        create_model(name, 1, 2, (64, 64), **arch_args)


def test_unknown_timm_encoder_names_it_and_suggests_matches():
    with pytest.raises(ValueError) as info:
        create_model("timm_unet", 1, 2, (64, 64), encoder="resnt18")
    message = str(info.value)
    assert "'resnt18'" in message
    assert "resnet18" in message
    assert "timm.list_models" in message


@pytest.mark.parametrize(("in_channels", "num_classes"), [(0, 2), (1, 1), (1, 0), (1.0, 2)])
def test_bad_channel_counts(in_channels, num_classes):
    with pytest.raises(ValueError, match="in_channels|num_classes"):
        create_model("unet", in_channels, num_classes, (32, 32))


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, so tests can register architectures without leaking them."""
    monkeypatch.setattr(zoo.registry, "_ARCHITECTURES", dict(zoo.registry._ARCHITECTURES))


def test_register_and_duplicate_registration(scratch_registry):
    @register_architecture("tiny_conv", size_rule=lambda args: (2, 2))
    def build_tiny(in_channels: int, num_classes: int, *, width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.Conv2d(width, num_classes, 1))

    model = create_model("tiny_conv", 2, 3, (6, 6), width=5)
    assert model(torch.zeros(1, 2, 6, 6)).shape == (1, 3, 6, 6)
    assert "tiny_conv" in list_architectures()
    with pytest.raises(ValueError, match="multiples of 2"):
        create_model("tiny_conv", 2, 3, (5, 6))
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("tiny_conv")(build_tiny)
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("unet")(build_tiny)


def test_register_rejects_builder_without_convention(scratch_registry):
    with pytest.raises(ValueError, match="in_channels"):
        register_architecture("odd")(lambda channels, classes: nn.Identity())
    with pytest.raises(ValueError, match="need defaults"):

        @register_architecture("odd2")
        def build(in_channels: int, num_classes: int, *, width: int) -> nn.Module:
            return nn.Identity()

    assert "odd" not in list_architectures() and "odd2" not in list_architectures()


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))  # (3*2 + 2) + (2*1 + 1) = 11
    assert count_parameters(model) == 11
    model[0].requires_grad_(False)
    assert count_parameters(model) == 11
    assert count_parameters(model, trainable_only=True) == 3


def test_importing_zoo_does_not_import_monai_or_timm():
    code = (
        "import sys, nakt_ray.zoo as z; z.list_architectures(); z.describe('swin_unetr');"
        "z.check_spatial_size('timm_unet', (64, 64));"
        "print(sorted(m for m in ('monai', 'timm', 'torchvision') if m in sys.modules))"
    )
    repo_root = Path(__file__).resolve().parents[1]  # `-c` puts the cwd first on sys.path
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True, cwd=repo_root
    )
    assert out.stdout.strip() == "[]"


# --- volumes: spatial_dims=3 -------------------------------------------------------------------------------------

# name, (D, H, W) at the architecture's minimum valid size for these arch_args, small arch_args. One volume, eval
# mode: each forward takes well under 2 s on 2 cores (docs: /work/shared/docs/PLATFORM_NOTES.md, "Volumes").
VOLUME_CASES = [
    ("unet", (16, 16, 16), {"channels": [8, 16, 32, 64]}),
    ("attention_unet", (16, 16, 16), {"channels": [8, 16, 32, 64]}),
    ("segresnet", (8, 8, 8), {"init_filters": 8}),
    ("basic_unet", (32, 32, 32), {"features": [8, 8, 16, 32, 64, 8]}),
    ("swin_unetr", (64, 64, 64), {"feature_size": 12, "depths": [1, 1, 1, 1]}),  # 1/32 must still be 2 a side
    ("dynunet", (16, 16, 16), {"filters": [8, 16, 32, 64]}),
    ("dynunet", (8, 8, 8), {"filters": [8, 16, 32], "res_block": True}),
]


def test_volume_cases_cover_every_volume_architecture():
    assert sorted({c[0] for c in VOLUME_CASES}) == VOLUME_ARCHITECTURES


@pytest.mark.parametrize(("name", "spatial_size", "arch_args"), VOLUME_CASES,
                         ids=[f"{c[0]}-{c[1][0]}cubed-{i}" for i, c in enumerate(VOLUME_CASES)])
def test_volume_forward(name, spatial_size, arch_args):
    torch.manual_seed(0)
    model = create_model(name, 1, 3, spatial_size, spatial_dims=3, **arch_args).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 1, *spatial_size))

    assert logits.shape == (1, 3, *spatial_size)
    assert torch.isfinite(logits).all()
    # the size given is the smallest the architecture takes: half of it is refused
    with pytest.raises(ValueError, match="D, H and W must be|at least"):
        check_spatial_size(name, tuple(s // 2 for s in spatial_size), {"spatial_dims": 3, **arch_args})


@pytest.mark.parametrize("spatial_size", [(16, 16), (16, 16, 16)])
def test_dynunet_returns_one_tensor_in_training_too(spatial_size):
    # Deep supervision off: MONAI's DynUNet would otherwise stack the heads into [B, heads, K, ...] in train mode.
    model = create_model("dynunet", 1, 2, spatial_size, spatial_dims=len(spatial_size), filters=[8, 16, 32])
    x = torch.randn(2, 1, *spatial_size)
    train_out = model.train()(x)
    assert isinstance(train_out, torch.Tensor) and train_out.shape == (2, 2, *spatial_size)
    train_out.sum().backward()
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2, *spatial_size)


@pytest.mark.parametrize(
    ("name", "spatial_size", "arch_args", "expected"),
    [
        ("unet", (64, 64, 64), {},
         ("spatial_size (64, 64, 64) has 3 axes but unet is built with spatial_dims=2; "
          "set arch_args.spatial_dims: 3 for volumes")),
        ("dynunet", (64, 64), {"spatial_dims": 3},
         "spatial_size (64, 64) has 2 axes but dynunet is built with spatial_dims=3; give (D, H, W) for volumes"),
        ("swin_unetr", [64, 64], {"spatial_dims": 3}, "has 2 axes but swin_unetr is built with spatial_dims=3"),
        ("timm_unet", (64, 64, 64), {},
         ("has 3 axes but timm_unet is built with spatial_dims=2; timm_unet is 2D only; the zoo's architectures "
          "that take spatial_dims: 3 are attention_unet, basic_unet, dynunet, segresnet, swin_unetr, unet")),
    ],
)
def test_spatial_size_axes_must_match_spatial_dims(name, spatial_size, arch_args, expected):
    for call in (lambda: check_spatial_size(name, spatial_size, arch_args),
                 lambda: create_model(name, 1, 2, spatial_size, **arch_args)):
        with pytest.raises(ValueError) as info:
            call()
        assert type(info.value) is ValueError  # callers (config, search) catch ValueError
        assert expected in str(info.value)


@pytest.mark.parametrize("name", VOLUME_ARCHITECTURES)
@pytest.mark.parametrize("bad", [1, 4, "3", True, 3.0])
def test_bad_spatial_dims_is_a_config_error_naming_architecture_and_value(name, bad):
    calls = [lambda: create_model(name, 1, 2, (64, 64), spatial_dims=bad),
             lambda: check_arch_args(name, {"spatial_dims": bad}),
             lambda: spatial_dims_of(name, {"spatial_dims": bad}),
             lambda: zoo.registry._entry(name).builder(1, 2, spatial_dims=bad)]  # a direct call (rebuild_model)
    for call in calls:
        with pytest.raises(ConfigError) as info:
            call()
        assert f"architecture '{name}'" in str(info.value)
        assert f"got {bad!r}; expected spatial_dims 2" in str(info.value)


def test_timm_unet_refuses_volumes_and_names_the_architectures_that_take_them():
    expected = ("timm encoders are 2D only; the zoo's architectures that take spatial_dims: 3 are "
                + ", ".join(VOLUME_ARCHITECTURES))
    calls = [lambda: create_model("timm_unet", 1, 2, (64, 64), spatial_dims=3),
             lambda: check_arch_args("timm_unet", {"spatial_dims": 3}),  # what config validation calls
             lambda: spatial_dims_of("timm_unet", {"spatial_dims": 3}),
             lambda: zoo.registry._entry("timm_unet").builder(1, 2, spatial_dims=3)]
    for call in calls:
        with pytest.raises(ConfigError) as info:
            call()
        assert "architecture 'timm_unet'" in str(info.value)
        assert expected in str(info.value)
    assert spatial_dims_of("timm_unet", {"spatial_dims": 2}) == 2


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_spatial_dims_of(name):
    assert spatial_dims_of(name) == 2
    assert spatial_dims_of(name, {}) == 2
    if name in VOLUME_ARCHITECTURES:
        assert spatial_dims_of(name, {"spatial_dims": 3}) == 3
        assert spatial_dims_of(name, {"spatial_dims": 2}) == 2


def test_spatial_dims_of_checks_the_architecture_and_its_args():
    with pytest.raises(UnknownArchitectureError):
        spatial_dims_of("unet3d")
    with pytest.raises(ValueError, match="does not accept"):
        spatial_dims_of("unet", {"spatial_dim": 3})


def test_third_party_builder_without_spatial_dims_is_2d(scratch_registry):
    @register_architecture("tiny_conv2d")
    def build_tiny(in_channels: int, num_classes: int, *, width: int = 4) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.Conv2d(width, num_classes, 1))

    assert spatial_dims_of("tiny_conv2d", {"width": 2}) == 2
    assert "tiny_conv2d" not in volume_architectures()
    assert create_model("tiny_conv2d", 1, 2, (5, 7))(torch.zeros(1, 1, 5, 7)).shape == (1, 2, 5, 7)
    with pytest.raises(ValueError, match="has 3 axes but tiny_conv2d is built with spatial_dims=2; tiny_conv2d is "
                                         "2D only"):
        check_spatial_size("tiny_conv2d", (8, 8, 8))
    with pytest.raises(ValueError, match="tiny_conv2d is 2D only: its builder takes no spatial_dims"):
        check_arch_args("tiny_conv2d", {"spatial_dims": 3})


def test_third_party_volume_builder_and_bad_default(scratch_registry):
    @register_architecture("tiny_conv", size_rule=lambda args: (2, 2))
    def build_tiny(in_channels: int, num_classes: int, *, spatial_dims: int = 2) -> nn.Module:
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        return conv(in_channels, num_classes, 1)

    assert "tiny_conv" in volume_architectures()
    model = create_model("tiny_conv", 1, 2, (2, 4, 6), spatial_dims=3)
    assert model(torch.zeros(1, 1, 2, 4, 6)).shape == (1, 2, 2, 4, 6)
    with pytest.raises(ValueError, match="spatial_dims defaults to 4"):

        @register_architecture("tiny_conv4")
        def build_bad(in_channels: int, num_classes: int, *, spatial_dims: int = 4) -> nn.Module:
            return nn.Identity()

    assert "tiny_conv4" not in list_architectures()
