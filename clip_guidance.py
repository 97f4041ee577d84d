"""CLIP as a frozen teacher (SPEC §5): loading, zero-shot class logits, learned quality prompts.

- load_clip(): open_clip model + a record of which weights it holds. `--clip_pretrained` is
  'openai' (OpenAI's own file ./clip_model/<model>.pt if there, e.g. ViT-B-32.pt as the original
  SpikeCLIP code keeps it; else a hub download cached in ./clip_model/), a local weights file
  (open_clip .bin/.safetensors, or OpenAI's TorchScript .pt), 'none' (random init, loudly
  flagged) or 'auto' ('openai' when obtainable, else 'none'). `--clip_model tiny` is a
  3.4 M-parameter config shipped in clip_configs/ for tests and smoke runs.
- OpenAI's .pt files are TorchScript archives (torch.jit.save): a zip holding pickled module
  objects, their tensors and TorchScript code. read_torchscript_state_dict() takes the tensors
  out with a restricted unpickler that builds nothing but tensors and plain containers, so the
  archive's code is never compiled or run (torch.jit.load would do both, and torch.load refuses
  such archives with weights_only=True).
- ClipGuide: grey reconstructions -> CLIP image features -> class logits / quality logits.
- QualityPrompts: the learned high-/low-quality prompt pair (CLIP-LIT / CoOp style).
"""
import collections
import io
import os
import pickle
import socket
import warnings
import zipfile

import torch
import torch.nn as nn
import torch.nn.functional as F

import open_clip

from dataset import prompt_name
from utils import InputError

# CLIP's RGB mean/std collapsed to one luminance-weighted statistic for grey images
GREY_MEAN, GREY_STD = 0.459236, 0.175973
CLIP_CACHE_DIR = "clip_model"
TINY_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_configs", "tiny.json")
RANDOM_INIT_SEED = 0
RANDOM_INIT_WARNING = ("CLIP weights: none (random init). CLIP losses and zero-shot accuracies "
                       "from this run are NOT semantic results.")


class ClipWeightsError(InputError, RuntimeError):
    """The CLIP model or weights asked for cannot be had."""


def _create(model_name, pretrained, cache_dir):
    # OpenAI's CLIP was trained with QuickGELU; without it the weights load but features drift.
    quick_gelu = pretrained is not None and model_name != "tiny"
    return open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir,
                                  force_quick_gelu=quick_gelu)


# ----------------------------------------------------------------------------------------------
# OpenAI's TorchScript CLIP files, read without running them

_STORAGE_DTYPES = {"FloatStorage": torch.float32, "HalfStorage": torch.float16,
                   "BFloat16Storage": torch.bfloat16, "DoubleStorage": torch.float64,
                   "LongStorage": torch.int64, "IntStorage": torch.int32, "ShortStorage": torch.int16,
                   "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool}


class _ScriptObject:
    """Stand-in for a TorchScript class of data.pkl (a module): keeps its state, runs nothing."""

    def __setstate__(self, state):
        self.state = state


def _rebuild_tensor(storage, offset, size, stride, *_):
    """torch._utils._rebuild_tensor_v2 on our flat storage tensor (requires_grad/hooks dropped)."""
    return storage.as_strided(size, stride, offset)


class _TorchScriptUnpickler(pickle.Unpickler):
    """Unpickles a TorchScript data.pkl into _ScriptObjects, tensors and plain containers only."""

    def __init__(self, data, read_record):
        super().__init__(io.BytesIO(data))
        self.read_record = read_record

    def find_class(self, module, name):
        if module.startswith("__torch__."):
            return _ScriptObject
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name in ("build_intlist", "build_doublelist", "build_boollist",
                                                      "build_tensorlist", "restore_type_tag"):
            return lambda value, *_: value       # typed lists / type tags: the value itself
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")

    def persistent_load(self, pid):
        kind, dtype, key, _, numel = pid
        if kind != "storage" or not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        data = self.read_record(f"data/{key}")
        itemsize = torch.empty(0, dtype=dtype).element_size()
        if len(data) != numel * itemsize:
            raise pickle.UnpicklingError(f"storage data/{key} holds {len(data)} bytes, expected {numel * itemsize}")
        return torch.frombuffer(bytearray(data), dtype=dtype) if numel else torch.empty(0, dtype=dtype)


def is_torchscript_archive(path):
    """torch.jit.save's zip has a constants.pkl record (torch.save's zip does not)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in z.namelist())


def read_torchscript_state_dict(path):
    """{dotted name: tensor} of every tensor attribute of the archive's module tree."""
    try:
        with zipfile.ZipFile(path) as z:
            data_pkl = next(n for n in z.namelist() if n.count("/") == 1 and n.endswith("/data.pkl"))
            prefix = data_pkl[:-len("data.pkl")]
            if prefix + "byteorder" in z.namelist() and z.read(prefix + "byteorder") != b"little":
                raise ValueError("big-endian archive")
            root = _TorchScriptUnpickler(z.read(data_pkl), lambda record: z.read(prefix + record)).load()
    except Exception as e:   # whatever a damaged or foreign archive raises: name the file
        raise ClipWeightsError(f"{path}: not a readable TorchScript archive ({type(e).__name__}: {e})") from e
    state, stack = {}, [("", root)]
    while stack:
        prefix, obj = stack.pop()
        attributes = getattr(obj, "state", None)
        for name, value in (attributes.items() if isinstance(attributes, dict) else ()):
            if isinstance(value, torch.Tensor):
                state[prefix + name] = value
            elif isinstance(value, _ScriptObject):
                stack.append((f"{prefix}{name}.", value))
    return state


def _from_torchscript(model_name, path):
    """OpenAI's CLIP archive -> open_clip's `model_name` with OpenAI's QuickGELU. The model is
    the named config (not one guessed from the shapes), so e.g. the tiny config keeps its heads."""
    state = read_torchscript_state_dict(path)
    model = open_clip.create_model(model_name, pretrained=None, force_quick_gelu=True)
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise ClipWeightsError(f"{path}: no '{key}' in the archive: not {model_name} weights")
        if state[key].shape != value.shape:
            raise ClipWeightsError(f"{path}: '{key}' has shape {list(state[key].shape)}, "
                                   f"{model_name} expects {list(value.shape)}")
    # Tensors the model does not load are fine where the model has that module: non-persistent
    # buffers (attn_mask), OpenAI's plain tensor attributes (input_resolution, ..., per-block
    # masks). A tensor of a module the model lacks (e.g. a 13th block) means another model.
    modules = {name for name, _ in model.named_modules()}
    extra = [k for k in state if k not in expected and k.rpartition(".")[0] not in modules]
    if extra:
        raise ClipWeightsError(f"{path}: unexpected '{extra[0]}' in the archive: not {model_name} weights")
    model.load_state_dict({k: state[k] for k in expected})    # OpenAI's fp16 weights -> fp32
    return model


def _from_file(model_name, path, cache_dir):
    """A local weights file: OpenAI's TorchScript archive or an open_clip .bin/.safetensors."""
    try:
        if is_torchscript_archive(path):
            return _from_torchscript(model_name, path)
        return _create(model_name, path, cache_dir)
    except ClipWeightsError:
        raise
    except Exception as e:
        raise ClipWeightsError(f"{path}: could not load as {model_name} weights ({type(e).__name__}: {e})") from e


def _local_openai_file(model_name, cache_dir):
    """OpenAI's file for this model in cache_dir, named as their `clip` package names it
    (ViT-B/32 -> ViT-B-32.pt), or None."""
    path = os.path.join(cache_dir, model_name.removesuffix("-quickgelu") + ".pt")
    return path if os.path.isfile(path) else None


def _hub_reachable(timeout=3.0):
    """A quick look before downloading: offline, huggingface_hub would retry with back-off
    for ~45 s before giving up."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_openai_weights(model_name, cache_dir):
    """Path of OpenAI weights already downloaded into cache_dir by open_clip, or None."""
    from huggingface_hub import try_to_load_from_cache
    repo = open_clip.get_pretrained_cfg(model_name, "openai").get("hf_hub", "").strip("/")
    for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        path = try_to_load_from_cache(repo, filename, cache_dir=cache_dir) if repo else None
        if isinstance(path, str):
            return path
    return None


def _openai(model_name, cache_dir):
    """OpenAI weights from the cache, else from the hub; raises when neither can be had."""
    cached = _cached_openai_weights(model_name, cache_dir)
    if cached is None and not _hub_reachable():
        raise ClipWeightsError("the model hub is not reachable and the weights are not cached "
                               f"in ./{cache_dir}/")
    return _create(model_name, cached or "openai", cache_dir)


def load_clip(model_name="ViT-B-32", pretrained="auto", device="cpu", cache_dir=CLIP_CACHE_DIR):
    """-> (frozen open_clip model on device, info dict stored with every result/checkpoint)."""
    if model_name == "tiny":
        open_clip.add_model_config(TINY_CONFIG)
    if model_name not in open_clip.list_models():
        raise ClipWeightsError(f"unknown CLIP model {model_name!r}; try ViT-B-32 or tiny")
    info = {"clip_model": model_name, "clip_weights": pretrained, "clip_random_init": False,
            "warnings": []}
    local = _local_openai_file(model_name, cache_dir) if pretrained in ("auto", "openai") else None
    if local is not None:
        model = _from_file(model_name, local, cache_dir)
        info["clip_weights"] = os.path.abspath(local)
    elif pretrained == "auto" and "openai" not in open_clip.list_pretrained_tags_by_model(model_name):
        model = None
        info["warnings"].append(f"--clip_pretrained auto: {model_name} has no OpenAI weights")
    elif pretrained == "auto":
        try:
            model = _openai(model_name, cache_dir)
            info["clip_weights"] = "openai"
        except Exception as e:  # offline, no such tag for this model, ...
            model = None
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            info["warnings"].append(f"--clip_pretrained auto: OpenAI weights not obtainable ({reason})")
    elif pretrained == "openai":
        try:
            model = _openai(model_name, cache_dir)
        except Exception as e:
            raise ClipWeightsError(
                f"could not obtain OpenAI weights for {model_name} ({type(e).__name__}: {e}).\n"
                f"On a machine with internet they download to ./{cache_dir}/ on first use. "
                f"Offline, copy the weights file there yourself (e.g. ViT-B-32.pt from "
                f"openaipublic.azureedge.net, or open_clip_pytorch_model.bin from the hub repo "
                f"timm/vit_base_patch32_clip_224.openai) and pass --clip_pretrained /path/to/file, "
                f"or pass --clip_pretrained none for random weights (not semantic).") from e
    elif pretrained == "none":
        model = None
    else:
        if not os.path.isfile(pretrained):
            raise ClipWeightsError(f"{pretrained}: CLIP weights file not found")
        model = _from_file(model_name, pretrained, cache_dir)
        info["clip_weights"] = os.path.abspath(pretrained)
    if model is None:
        # seeded, so that evaluate.py/test.py rebuild the very CLIP a run was trained with
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model = open_clip.create_model(model_name, pretrained=None)
        info.update(clip_weights="none (random init)", clip_random_init=True)
        info["warnings"].append(RANDOM_INIT_WARNING)
        warnings.warn(RANDOM_INIT_WARNING, stacklevel=2)
        print(f"\n{'!' * 80}\n!! {RANDOM_INIT_WARNING}\n{'!' * 80}\n", flush=True)
    model.requires_grad_(False).eval().to(device)
    if torch.device(device).type == "cuda":   # frozen: half precision, bf16 to match the AMP dtype
        model.to(torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
    return model, info


class ClipGuide:
    """Grey images [B, 1, H, W] in [0, 1] -> CLIP logits. Holds the class text features."""

    def __init__(self, model, class_names, device):
        self.model = model
        self.dtype = next(model.parameters()).dtype
        self.image_size = model.visual.image_size
        self.image_size = self.image_size[0] if isinstance(self.image_size, (tuple, list)) else self.image_size
        self.logit_scale = model.logit_scale.exp().clamp(max=100).float()
        tokenizer = open_clip.get_tokenizer("ViT-B-32")  # the same BPE vocabulary for every CLIP
        prompts = [f"image of a {prompt_name(c)}" for c in class_names]
        with torch.no_grad():
            text = model.encode_text(tokenizer(prompts).to(device), normalize=True)
        self.class_features = text.float()                                  # [K, D]

    def image_features(self, images):
        """[B, 1, H, W] in [0,1] -> L2-normalised CLIP features [B, D] (float32)."""
        x = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False, antialias=images.shape[-1] > self.image_size)
        x = ((x - GREY_MEAN) / GREY_STD).expand(-1, 3, -1, -1)
        return F.normalize(self.model.encode_image(x.to(self.dtype)).float(), dim=-1)

    def class_logits(self, images):
        """Zero-shot logits [B, K]: scaled cosine similarity with 'image of a {label}'."""
        return self.logit_scale * self.image_features(images) @ self.class_features.T

    def quality_logits(self, images, prompt_features):
        """[B, 2] logits against the (high, low)-quality prompt features [2, D]."""
        return self.logit_scale * self.image_features(images) @ prompt_features.T


class QualityPrompts(nn.Module):
    """A learned (high-quality, low-quality) prompt pair: n_ctx context vectors each in CLIP's
    token-embedding space, encoded by the frozen text tower (CLIP-LIT)."""

    def __init__(self, clip_model, n_ctx=16, seed=0):
        super().__init__()
        width = clip_model.token_embedding.weight.shape[1]
        g = torch.Generator().manual_seed(seed)
        self.ctx = nn.Parameter(0.02 * torch.randn(2, n_ctx, width, generator=g))  # [2, n_ctx, W]
        tokenizer = open_clip.get_tokenizer("ViT-B-32")
        # dummy prompt of the same layout: <sot> X X ... X . <eot>; the X's are replaced by ctx
        tokens = tokenizer([" ".join(["X"] * n_ctx) + "."])                        # [1, 77]
        self.register_buffer("tokens", tokens.to(clip_model.token_embedding.weight.device), persistent=False)
        self.eot_index = int(tokens.argmax(dim=-1))          # EOT has the largest token id
        object.__setattr__(self, "clip", clip_model)          # frozen, not part of our state

    def forward(self):
        """-> L2-normalised text features [2, D] for (high, low) quality."""
        clip = self.clip
        dtype = clip.token_embedding.weight.dtype
        with torch.no_grad():
            embedded = clip.token_embedding(self.tokens).expand(2, -1, -1)          # [2, 77, W]
        n_ctx = self.ctx.shape[1]
        x = torch.cat([embedded[:, :1], self.ctx.to(dtype), embedded[:, 1 + n_ctx:]], dim=1)
        x = x + clip.positional_embedding.to(dtype)
        # the causal mask must be passed explicitly, else it silently vanishes
        x = clip.transformer(x, attn_mask=clip.attn_mask)
        x = clip.ln_final(x)[:, self.eot_index]                                     # [2, W]
        proj = clip.text_projection
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return F.normalize(x.float(), dim=-1)
