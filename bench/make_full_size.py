"""Build a random-weight MusicGen checkpoint in facebook/musicgen-small's exact shapes, for benchmarking.

Nothing can be downloaded from the Hugging Face hub, so this builds `MusicgenForConditionalGeneration` from
musicgen-small's configs (T5-base text encoder, 24-layer / 1024-wide / 4-codebook decoder, 32 kHz EnCodec)
with torch's default init, and writes it the way the published checkpoint is laid out:

    config.json              sub-configs text_encoder / audio_encoder / decoder, "architectures"
    generation_config.json   exactly musicgen-small's (sampling, top_k 250, guidance 3.0)
    model.safetensors        float32, weight-normalised convs as `weight_g` / `weight_v`, ~2.4 GB
    tokenizer.json           copied from tests/fixtures/models/tiny-a (ids < 32128; cost depends on shapes only)

The conventions (names, dropped tied embedding copy, all tensors float32, generation config) follow
tests/fixtures/make_reference.py. The safetensors file is streamed tensor by tensor straight from the
model's own storage, so no second in-memory copy of the ~2.4 GB of weights is made.

    /work/pyref/bin/python bench/make_full_size.py [--out DIR] [--force]

DIR defaults to bench-models/musicgen-small-random under the repository root (git-ignored).
"""

import argparse
import json
import resource
import shutil
import struct
import sys
import time
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from transformers import (
    EncodecConfig,
    GenerationConfig,
    MusicgenConfig,
    MusicgenDecoderConfig,
    MusicgenForConditionalGeneration,
    T5Config,
)
from transformers.utils import logging as hf_logging

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench-models" / "musicgen-small-random"
TOKENIZER_SRC = REPO / "tests" / "fixtures" / "models" / "tiny-a" / "tokenizer.json"
FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json")

NUM_CODEBOOKS = 4
VOCAB = 2048  # decoder vocab == EnCodec codebook size; pad/bos/decoder_start is the extra row 2048

PARAM_SUFFIX_G = ".parametrizations.weight.original0"
PARAM_SUFFIX_V = ".parametrizations.weight.original1"

# facebook/musicgen-small's generation_config.json, field for field
GENERATION_CONFIG = {
    "_from_model_config": False,
    "bos_token_id": VOCAB,
    "decoder_start_token_id": VOCAB,
    "pad_token_id": VOCAB,
    "do_sample": True,
    "guidance_scale": 3.0,
    "max_length": 1500,
    "top_k": 250,
}


def build_config() -> MusicgenConfig:
    text_cfg = T5Config(  # t5-base
        vocab_size=32128,
        d_model=768,
        d_kv=64,
        d_ff=3072,
        num_layers=12,
        num_heads=12,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        feed_forward_proj="relu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.1,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    decoder_cfg = MusicgenDecoderConfig(
        vocab_size=VOCAB,
        hidden_size=1024,
        ffn_dim=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        num_codebooks=NUM_CODEBOOKS,
        max_position_embeddings=2048,
        pad_token_id=VOCAB,
        bos_token_id=VOCAB,
        activation_function="gelu",
        audio_channels=1,
    )
    audio_cfg = EncodecConfig(  # facebook/encodec_32khz
        sampling_rate=32000,
        audio_channels=1,
        hidden_size=128,
        num_filters=64,
        num_residual_layers=1,
        upsampling_ratios=[8, 5, 4, 4],
        norm_type="weight_norm",
        kernel_size=7,
        last_kernel_size=7,
        residual_kernel_size=3,
        dilation_growth_rate=2,
        use_causal_conv=False,
        pad_mode="reflect",
        compress=2,
        num_lstm_layers=2,
        trim_right_ratio=1.0,
        codebook_size=VOCAB,
        target_bandwidths=[2.2],
        use_conv_shortcut=False,
        normalize=False,
        chunk_length_s=None,
        overlap=None,
    )
    assert audio_cfg.num_quantizers == NUM_CODEBOOKS, audio_cfg.num_quantizers
    assert audio_cfg.frame_rate == 50 and audio_cfg.hop_length == 640
    return MusicgenConfig(text_encoder=text_cfg, audio_encoder=audio_cfg, decoder=decoder_cfg)


def published_tensors(model) -> dict:
    """name -> float32 contiguous tensor with the published names; no copies of float32 weights.

    Same conventions as make_reference.published_state_dict: parametrizations.weight.original0/1 become
    weight_g / weight_v, every tensor is float32 (the EnCodec codebook buffers included), and the tied copy
    text_encoder.encoder.embed_tokens.weight is dropped (text_encoder.shared.weight holds it), as
    save_pretrained does.
    """
    out = {}
    for name, t in model.state_dict().items():
        name = name.replace(PARAM_SUFFIX_G, ".weight_g").replace(PARAM_SUFFIX_V, ".weight_v")
        out[name] = t.detach().to(torch.float32).contiguous()  # no-op (no copy) for f32 contiguous tensors
    del out["text_encoder.encoder.embed_tokens.weight"]
    return out


def write_safetensors_streaming(tensors: dict, path: Path) -> int:
    """Write a safetensors file one tensor at a time (header, then raw little-endian data in name order).

    Equivalent to safetensors.torch.save_file(tensors, path, metadata={"format": "pt"}) for float32 tensors
    (same key order, same 8-byte header padding), but it never builds the whole file in memory.
    """
    assert sys.byteorder == "little"
    names = sorted(tensors)
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for n in names:
        t = tensors[n]
        assert t.dtype == torch.float32 and t.is_contiguous(), n
        size = t.numel() * 4
        header[n] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_suffix(".safetensors.partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for n in names:
            f.write(tensors[n].numpy().data)  # zero-copy view of the tensor's storage
    tmp.rename(path)
    return offset


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def param_counts(model) -> dict:
    counts = {
        "text_encoder": count(model.text_encoder),
        "decoder": count(model.decoder),
        "audio_encoder": count(model.audio_encoder),
    }
    if getattr(model, "enc_to_dec_proj", None) is not None:
        counts["enc_to_dec_proj"] = count(model.enc_to_dec_proj)
    counts["total"] = count(model)
    return counts


def print_counts(counts: dict) -> None:
    for k, v in counts.items():
        print(f"  params {k:16s} {v:>13,d}  ({v / 1e6:.1f} M)")


@torch.no_grad()
def build(out: Path) -> None:
    t0 = time.time()
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(build_config()).eval()
    # the stock init leaves the EnCodec codebooks all-zero (audio independent of the codes); give them values
    # so the decoded audio is a realistic signal. 4 x 2048 x 128 numbers: negligible cost.
    gen = torch.Generator().manual_seed(0)
    for layer in model.audio_encoder.quantizer.layers:
        cb = layer.codebook
        cb.embed.copy_(torch.randn(cb.embed.shape, generator=gen))
        cb.cluster_size.fill_(1.0)
        cb.embed_avg.copy_(cb.embed)
        cb.inited.fill_(1.0)
    model.generation_config = GenerationConfig(**GENERATION_CONFIG)
    print(f"built random model in {time.time() - t0:.1f}s")
    print_counts(param_counts(model))
    assert model.enc_to_dec_proj is not None  # 768 -> 1024, as in musicgen-small

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t1 = time.time()
    # config.json as save_pretrained writes it (it sets "architectures" and "dtype"), without writing weights
    model.config.architectures = [type(model).__name__]
    model.config.dtype = torch.float32
    model.config.save_pretrained(out)
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    shutil.copyfile(TOKENIZER_SRC, out / "tokenizer.json")
    nbytes = write_safetensors_streaming(published_tensors(model), out / "model.safetensors")
    print(f"wrote {nbytes / 1e9:.3f} GB of float32 tensors in {time.time() - t1:.1f}s "
          f"(peak RSS so far {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


@torch.no_grad()
def verify(out: Path) -> None:
    """from_pretrained must load every tensor of the file with no missing / unexpected keys, bit-exactly."""
    t0 = time.time()
    model, info = MusicgenForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    load_s = time.time() - t0
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info.get("mismatched_keys"), info
    sd = model.state_dict()
    with safe_open(out / "model.safetensors", "pt") as f:
        keys = list(f.keys())
        assert f.metadata() == {"format": "pt"}
        assert not any("parametrizations" in k for k in keys)
        n_g = sum(k.endswith(".weight_g") for k in keys)
        n_v = sum(k.endswith(".weight_v") for k in keys)
        assert n_g and n_g == n_v, (n_g, n_v)
        for k in keys:
            name = k.replace(".weight_g", PARAM_SUFFIX_G).replace(".weight_v", PARAM_SUFFIX_V)
            t = f.get_tensor(k)
            assert t.dtype == torch.float32, k
            assert torch.equal(sd[name].to(torch.float32), t), f"{k}: loaded tensor differs from the file"
    assert model.config.decoder.num_codebooks == NUM_CODEBOOKS
    assert model.generation_config.top_k == 250 and model.generation_config.guidance_scale == 3.0
    print(f"verified: from_pretrained in {load_s:.1f}s, {len(keys)} tensors, {n_g} weight_g/weight_v pairs, "
          f"no missing/unexpected keys, every tensor bit-exact")
    print_counts(param_counts(model))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--force", action="store_true", help="rebuild even if the folder already holds all files")
    ap.add_argument("--verify", action="store_true", help="reload with from_pretrained and check (always done "
                    "after a build; with this flag also when the build is skipped)")
    args = ap.parse_args()
    out = args.out.resolve()
    hf_logging.set_verbosity_error()  # pad/bos == vocab_size is intended (MusicGen's extra embedding row)
    hf_logging.disable_progress_bar()

    if not args.force and all((out / f).is_file() for f in FILES):
        print(f"{out} already holds {', '.join(FILES)}; skipping (use --force to rebuild)")
        built = False
    else:
        build(out)
        built = True
    if built or args.verify:
        verify(out)
    for f in FILES:
        print(f"  {f:24s} {(out / f).stat().st_size:>14,d} bytes")
    print(f"model.safetensors: {(out / 'model.safetensors').stat().st_size / 1e9:.3f} GB "
          f"({(out / 'model.safetensors').stat().st_size / 2**30:.3f} GiB)")
    print(f"versions: torch {torch.__version__}, transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
