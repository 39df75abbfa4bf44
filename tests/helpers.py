"""Builders for tiny Hugging Face models and the comparisons the parity tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers

import anatomist


def save_tiny(model: Any, folder: Path) -> Path:
    """Randomise every parameter (biases and norm weights too, so nothing hides behind a
    zero or a one) and save the model as a safetensors folder."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(
                    torch.randn_like(p) * 0.1 + (1.0 if "norm" in name or "ln" in name else 0.0)
                )
            else:
                p.normal_(0, 0.2)
    model.eval()
    model.save_pretrained(folder)
    return folder


def tiny_gpt2(folder: Path, **overrides: Any) -> transformers.PreTrainedModel:
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, n_positions=64, vocab_size=101, **overrides
    )
    model = transformers.GPT2LMHeadModel(cfg)
    save_tiny(model, folder)
    return model


def tiny_llama(folder: Path, **overrides: Any) -> transformers.PreTrainedModel:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings))
    save_tiny(model, folder)
    return model


def tiny_llama_folder(folder: Path) -> Path:
    """A tiny grouped-query Llama and the word-level tokenizer saved in `folder`, a model
    folder any loader (and a subprocess) can read."""
    tiny_llama(folder, num_key_value_heads=2)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def random_tokens(vocab: int, batch: int = 2, pos: int = 12, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, pos), generator=gen)


def hf_logits(hf: Any, tokens: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    with torch.no_grad():
        return hf(tokens, **kwargs).logits


def load(folder: Path, processing: bool = False, **kwargs: Any) -> anatomist.HookedTransformer:
    loader = (
        anatomist.HookedTransformer.from_pretrained
        if processing
        else anatomist.HookedTransformer.from_pretrained_no_processing
    )
    return loader(folder, progress=False, **kwargs)


WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "and",
    "ran",
    "to",
    "house",
    "big",
    "small",
    "red",
    "blue",
    "when",
    "mary",
    "john",
    "went",
    "store",
    "gave",
    "drink",
    "bottle",
    "milk",
    "of",
    "in",
    "is",
    "was",
]


def tiny_tokenizer(vocab_size: int = 101) -> Any:
    """A word-level fast tokenizer (no download): <bos>=0, <eos>=1, <pad>=2, then words."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<bos>": 0, "<eos>": 1, "<pad>": 2, "<unk>": 3}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    assert len(vocab) <= vocab_size
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


# --- native random-init models (no Hugging Face involved) ---------------------------------------


def randomize_small_params(model: torch.nn.Module, seed: int = 123) -> None:
    """Random biases and norm weights, so nothing hides behind a zero or a one."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1].lstrip("_")
            if leaf == "b" or leaf.startswith("b_"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif leaf == "w":
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)


def gpt2_like() -> anatomist.HookedTransformer:
    cfg = anatomist.TransformerConfig(
        n_layers=2, d_model=32, n_ctx=32, d_head=8, d_vocab=50, act_fn="gelu_new", seed=0
    )
    model = anatomist.HookedTransformer(cfg)
    randomize_small_params(model)
    return model


def llama_like() -> anatomist.HookedTransformer:
    cfg = anatomist.TransformerConfig(
        n_layers=2,
        d_model=32,
        n_ctx=32,
        d_head=8,
        n_heads=4,
        d_vocab=50,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        gated_mlp=True,
        n_key_value_heads=2,
        seed=0,
    )
    model = anatomist.HookedTransformer(cfg)
    randomize_small_params(model)
    return model


BUILDERS = {"gpt2": gpt2_like, "llama": llama_like}
