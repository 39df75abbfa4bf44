"""Peak memory of loading a 1.1B-parameter bfloat16 Llama with weight processing.

    python -m benchmarks.big_load --folder /tmp/big_llama          # writes, measures, deletes
    python -m benchmarks.big_load --folder /tmp/big_llama --keep   # keeps the folder

Writes a Llama checkpoint with random bfloat16 weights (TinyLlama-1.1B's shapes: hidden 2048,
22 layers, MLP 5632, vocab 32000, 32 heads, 4 key/value heads, untied embeddings) as several
safetensors shards with an index and a config.json, one shard in memory at a time; no tokenizer.
Then each loader runs in a fresh process: anatomist's `from_pretrained(folder,
dtype="bfloat16")` (default processing), the same split with half the blocks and the unembedding
on the meta device (the CPU's peak against the plan's CPU share), and transformers'
`AutoModelForCausalLM`. A process's
peak (``VmHWM``) is measured above its resident set after the imports (``VmRSS``), and given in
bytes and as a multiple of the bfloat16 weight bytes, right after loading and again after
reading one value of every 4 KiB page of the weights: a loader that keeps the safetensors files
memory-mapped (transformers does, when the dtype matches) has only the pages it touched resident.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

HIDDEN, LAYERS, MLP, VOCAB, HEADS, KV_HEADS = 2048, 22, 5632, 32000, 32, 4
LAYERS_PER_SHARD = 4

PROBE = """
import json, torch
torch.set_num_threads(2)
import transformers, anatomist

def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024

baseline = status("VmRSS")
{code}
loaded = status("VmHWM")
with torch.no_grad():  # read one value per 4 KiB page: memory-mapped weights become resident
    for p in m.parameters():
        p.reshape(-1)[:: 4096 // p.element_size()].float().sum()
on_cpu = sum(p.numel() * p.element_size() for p in m.parameters() if p.device.type == "cpu")
print(json.dumps({{"baseline": baseline, "peak": loaded, "touched": status("VmHWM"),
                  "cpu_bytes": on_cpu}}))
"""

LOADERS = {
    "anatomist": "m = anatomist.HookedTransformer.from_pretrained({folder!r}, dtype='bfloat16', "
    "progress=False)",
    "transformers": "m = transformers.AutoModelForCausalLM.from_pretrained({folder!r}, "
    "dtype=torch.bfloat16)",
    # A split load: blocks 11-21 and the unembedding on the meta device, which holds nothing, so
    # the CPU's peak shows whether each weight goes straight to its device (peak ~ the plan's
    # CPU share) or through the CPU first (peak ~ the whole model).
    "anatomist-split": "m = anatomist.HookedTransformer.from_pretrained({folder!r}, "
    "dtype='bfloat16', progress=False, device_map={{'': 'cpu', "
    "**{{f'blocks.{{i}}': 'meta' for i in range(11, 22)}}, 'ln_final': 'meta', 'unembed': 'meta'}})",
}


def _layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    d_head = HIDDEN // HEADS
    prefix = f"model.layers.{i}."
    return {
        prefix + "input_layernorm.weight": (HIDDEN,),
        prefix + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
        prefix + "self_attn.k_proj.weight": (KV_HEADS * d_head, HIDDEN),
        prefix + "self_attn.v_proj.weight": (KV_HEADS * d_head, HIDDEN),
        prefix + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        prefix + "post_attention_layernorm.weight": (HIDDEN,),
        prefix + "mlp.gate_proj.weight": (MLP, HIDDEN),
        prefix + "mlp.up_proj.weight": (MLP, HIDDEN),
        prefix + "mlp.down_proj.weight": (HIDDEN, MLP),
    }


def _shards() -> list[dict[str, tuple[int, ...]]]:
    """The checkpoint's tensor names and shapes, shard by shard."""
    shards: list[dict[str, tuple[int, ...]]] = [{"model.embed_tokens.weight": (VOCAB, HIDDEN)}]
    for first in range(0, LAYERS, LAYERS_PER_SHARD):
        shard: dict[str, tuple[int, ...]] = {}
        for i in range(first, min(first + LAYERS_PER_SHARD, LAYERS)):
            shard.update(_layer_shapes(i))
        shards.append(shard)
    shards.append({"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)})
    return shards


def write_checkpoint(folder: Path, seed: int = 0) -> int:
    """Write the checkpoint into `folder`; return its weight bytes."""
    import transformers
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    config = transformers.LlamaConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        intermediate_size=MLP,
        vocab_size=VOCAB,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(folder)
    gen = torch.Generator().manual_seed(seed)
    shards = _shards()
    weight_map, total = {}, 0
    for n, names in enumerate(shards, 1):
        file = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in names.items():
            if len(shape) == 1:  # norm weights around 1, as trained ones are
                t = 1.0 + 0.1 * torch.randn(shape, generator=gen)
            else:
                t = 0.02 * torch.randn(shape, generator=gen)
            tensors[name] = t.to(torch.bfloat16)
            weight_map[name] = file
            total += tensors[name].nbytes
        save_file(tensors, str(folder / file), metadata={"format": "pt"})
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return total


def measure(loader: str, folder: Path) -> dict[str, int]:
    """Baseline resident set and peak of one fresh process that runs `loader` on `folder`."""
    from benchmarks.processes import run_script

    script = PROBE.format(code=LOADERS[loader].format(folder=str(folder)))
    return {key: int(value) for key, value in run_script(script).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, required=True, help="where to write the checkpoint")
    parser.add_argument("--keep", action="store_true", help="keep the folder afterwards")
    parser.add_argument(
        "--loaders", default="anatomist,anatomist-split,transformers", help="comma-separated"
    )
    args = parser.parse_args()
    if args.folder.exists() and any(args.folder.iterdir()):
        raise SystemExit(f"{args.folder} is not empty; give a new folder.")
    try:
        weights = write_checkpoint(args.folder)
        print(f"weights: {weights} bytes ({weights / 2**30:.2f} GiB, {weights // 2:,} parameters)")
        for loader in args.loaders.split(","):
            r = measure(loader, args.folder)
            above = r["peak"] - r["baseline"]
            touched = r["touched"] - r["baseline"]
            print(
                f"{loader:>15}: peak {r['peak'] / 2**30:.2f} GiB, baseline "
                f"{r['baseline'] / 2**30:.2f} GiB, above baseline {above} bytes "
                f"= {above / weights:.2f}x the bf16 weights; after reading every weight page "
                f"{touched} bytes = {touched / weights:.2f}x; weights on the CPU "
                f"{r['cpu_bytes']} bytes, peak {above / r['cpu_bytes']:.2f}x them"
            )
    finally:
        if not args.keep:
            shutil.rmtree(args.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
