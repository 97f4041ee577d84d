"""CLIP weights from files: OpenAI's TorchScript archive (read without running its code) and
open_clip's .bin/.safetensors; `auto`/`openai` find OpenAI's file in ./clip_model/."""
import json
import os
import pickle
import zipfile

import open_clip
import pytest
import torch

from clip_guidance import TINY_CONFIG, ClipWeightsError, load_clip, read_torchscript_state_dict

# tracing and torch.jit.save warn (tracer, deprecation): they make the test file, nothing to fix
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


def tiny_clip(quick_gelu, seed=3):
    open_clip.add_model_config(TINY_CONFIG)
    torch.manual_seed(seed)
    return open_clip.create_model("tiny", force_quick_gelu=quick_gelu).eval()


def features(model):
    image = torch.linspace(-1, 1, 3 * 64 * 64).view(1, 3, 64, 64)
    text = open_clip.get_tokenizer("ViT-B-32")(["image of a frog"])
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(text)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A tiny CLIP traced and saved as OpenAI's clip package ships ViT-B-32.pt (QuickGELU)."""
    model = tiny_clip(quick_gelu=True)
    example = (torch.rand(1, 3, 64, 64), open_clip.get_tokenizer("ViT-B-32")(["a photo"]))
    script = torch.jit.trace(model, example, check_trace=False)
    path = tmp_path_factory.mktemp("clip") / "tiny_traced.pt"
    torch.jit.save(script, str(path))
    return path, model


def test_torchscript_archive_gives_the_same_clip_with_quick_gelu(traced):
    path, source = traced
    state = read_torchscript_state_dict(str(path))
    assert all(torch.equal(state[k], v) for k, v in source.state_dict().items())
    model, info = load_clip("tiny", str(path))
    assert info["clip_weights"] == str(path) and info["clip_random_init"] is False
    for got, want in zip(features(model), features(source)):
        assert torch.allclose(got, want, atol=1e-5)
    # the same weights with GELU give other features: QuickGELU is really in use
    gelu = tiny_clip(quick_gelu=False)
    gelu.load_state_dict(source.state_dict())
    assert not torch.allclose(features(gelu)[0], features(source)[0], atol=1e-3)


def test_auto_and_openai_find_the_file_in_clip_model(traced, tmp_path):
    path, source = traced
    cache = tmp_path / "clip_model"
    cache.mkdir()
    os.link(path, cache / "tiny.pt")                   # ./clip_model/<model>.pt, as OpenAI's clip names it
    for spec in ("auto", "openai"):
        model, info = load_clip("tiny", spec, cache_dir=str(cache))
        assert info["clip_weights"] == str(cache / "tiny.pt") and not info["clip_random_init"]
        assert torch.allclose(features(model)[0], features(source)[0], atol=1e-5)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_open_clip_weight_files_are_accepted(tmp_path, suffix):
    source = tiny_clip(quick_gelu=False)
    path = tmp_path / f"open_clip_model{suffix}"
    if suffix == ".bin":
        torch.save(source.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model, info = load_clip("tiny", str(path))
    assert info["clip_weights"] == str(path)
    assert torch.allclose(features(model)[0], features(source)[0], atol=1e-5)


def test_a_truncated_archive_is_refused_naming_the_file(traced, tmp_path):
    path, _ = traced
    data = path.read_bytes()
    cut = tmp_path / "ViT-B-32.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ClipWeightsError) as e:
        load_clip("tiny", str(cut))
    assert str(cut) in str(e.value)


@pytest.mark.parametrize("change, message", [
    ({"text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 96, "heads": 2, "layers": 2}},
     "'positional_embedding' has shape [77, 64], tiny_other expects [77, 96]"),
    ({"text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3}},
     "no 'transformer.resblocks.2.ln_1.weight' in the archive"),
    ({"text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}},
     "unexpected 'transformer.resblocks.1."),
])
def test_an_archive_of_another_model_is_refused_naming_file_and_key(traced, tmp_path, change, message):
    path, _ = traced
    with open(TINY_CONFIG) as f:
        config = {**json.load(f), **change}
    (tmp_path / "tiny_other.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(tmp_path / "tiny_other.json"))
    with pytest.raises(ClipWeightsError) as e:
        load_clip("tiny_other", str(path))
    assert str(path) in str(e.value) and message in str(e.value)


def test_code_in_an_archive_is_never_run(tmp_path):
    """data.pkl may name any callable; the reader refuses all but tensors and plain containers."""
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps({"weight": Exploit()}, protocol=2))
        z.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        z.writestr("evil/version", "3\n")
    with pytest.raises(ClipWeightsError, match="evil.pt.*(posix|os).system"):
        load_clip("tiny", str(path))
    assert not marker.exists()
