"""Build a tiny, randomly initialised Llama checkpoint that real vLLM can serve offline.

It produces nonsense text fast (about 1.6 M parameters), which is all the development path
and the conformance tests need: the real server, real tokenisation, real streaming and real
metrics. Nothing is downloaded: the byte-level BPE tokenizer is trained on the Python standard
library's own source files, and the weights come from a seeded random initialisation.

Run it with the vLLM CPU virtualenv's interpreter (it needs torch, tokenizers, transformers)::

    python serving/vllm/cpu/tiny_model.py OUT_DIR [--vocab 4096] [--hidden 128] [--layers 2]

Re-running is cheap: when ``OUT_DIR/infermeter-tiny-model.json`` records the same parameters
the build is skipped. ``--force`` rebuilds.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MANIFEST = "infermeter-tiny-model.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>")
# One turn per message, closed by the end-of-sequence token; the assistant prompt at the end.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS_FILES = 300


@dataclass(frozen=True)
class TinySpec:
    """Shape of the tiny model; recorded in the manifest so a change triggers a rebuild."""

    vocab: int = 4096
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    max_positions: int = 2048
    seed: int = 0
    corpus_files: int = CORPUS_FILES


def is_built(out: Path, spec: TinySpec) -> bool:
    """True when ``out`` holds a complete build made with ``spec``."""
    manifest = out / MANIFEST
    if not manifest.is_file() or not all((out / name).is_file() for name in REQUIRED_FILES):
        return False
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(recorded.get("spec") == asdict(spec))


def corpus(limit: int = CORPUS_FILES) -> list[str]:
    """Local text to train the tokenizer on: the standard library's Python sources."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(str(p) for p in stdlib.glob("*.py"))[:limit]
    if not files:
        raise SystemExit(f"no Python sources under {stdlib} to train the tokenizer on")
    return files


def build_tokenizer(out: Path, spec: TinySpec) -> Any:
    """Train a byte-level BPE tokenizer offline and save it (with the chat template)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train(corpus(spec.corpus_files), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=spec.max_positions,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(out))
    # Older transformers write the template to a side file only; vLLM reads tokenizer_config.
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return tokenizer


def build_model(out: Path, spec: TinySpec, tokenizer: Any) -> int:
    """Save a seeded random Llama in safetensors; returns its parameter count."""
    import torch
    import transformers

    # Runs in the vLLM CPU venv, whose transformers differs from the project's: untyped here.
    hf: Any = transformers
    torch.manual_seed(spec.seed)
    config = hf.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.hidden * 4,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = hf.LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(str(out), safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def build(out: Path, spec: TinySpec, force: bool = False) -> str:
    """Build the model into ``out`` unless an identical build is there; returns a summary."""
    if not force and is_built(out, spec):
        return f"tiny model already built in {out}"
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    tokenizer = build_tokenizer(out, spec)
    params = build_model(out, spec, tokenizer)
    manifest = {"spec": asdict(spec), "parameters": params, "vocab": len(tokenizer)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return f"built tiny Llama in {out}: {params / 1e6:.2f} M parameters, vocab {len(tokenizer)}"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    defaults = TinySpec()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="directory to write the model into")
    parser.add_argument("--vocab", type=int, default=defaults.vocab, help="BPE vocabulary size")
    parser.add_argument("--hidden", type=int, default=defaults.hidden, help="hidden size")
    parser.add_argument("--layers", type=int, default=defaults.layers, help="decoder layers")
    parser.add_argument("--heads", type=int, default=defaults.heads, help="attention heads")
    parser.add_argument(
        "--max-positions", type=int, default=defaults.max_positions, help="context window"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="weight init seed")
    parser.add_argument(
        "--corpus-files",
        type=int,
        default=defaults.corpus_files,
        help="standard-library source files to train the tokenizer on",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if already built")
    args = parser.parse_args(argv)
    spec = TinySpec(
        args.vocab,
        args.hidden,
        args.layers,
        args.heads,
        args.max_positions,
        args.seed,
        args.corpus_files,
    )
    print(build(args.out.resolve(), spec, force=args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
