"""HookedEncoderDecoder (T5) against Hugging Face computing the same thing.

Tiny random-init T5ForConditionalGeneration checkpoints are saved and loaded by path: the
original T5 (ReLU MLP, tied and rescaled unembedding), T5 v1.1 / Flan-T5 (gated GELU, separate
``lm_head``, no rescaling), and an asymmetric one (more decoder than encoder layers, few
position buckets so that the logarithmic buckets are used).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import anatomist
from anatomist.families.registry import UnsupportedArchitectureError
from anatomist.families.t5 import EncoderDecoderOnlyError
from anatomist.model.generate import sample_logits
from anatomist.model.positions import relative_position_bucket
from tests.helpers import WORDS, save_tiny, tiny_gpt2

VOCAB = 101


def t5_config(**overrides: Any) -> transformers.T5Config:
    settings: dict[str, Any] = dict(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=4,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    settings.update(overrides)
    return transformers.T5Config(**settings)


def t5_tokenizer() -> Any:
    """A word-level tokenizer that appends </s> like T5's (<pad>=0, </s>=1), no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def save_t5(folder: Path, separate_lm_head: bool = False, **overrides: Any) -> Any:
    """Save a tiny T5 with weights large enough that greedy decoding does not just repeat one
    token; return the Hugging Face model read back from the folder (the reference)."""
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(t5_config(**overrides))
    with torch.no_grad():
        for name, param in hf.named_parameters():
            if not name.endswith("layer_norm.weight"):
                param.normal_(0.0, 0.3)
            else:
                param.uniform_(0.5, 1.5)
    save_tiny(hf, folder)
    if separate_lm_head:  # as T5 v1.1 / Flan-T5 checkpoints: an lm_head of its own, no rescale
        weights = load_file(folder / "model.safetensors")
        weights["lm_head.weight"] = torch.randn(VOCAB, hf.config.d_model) * 0.3
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((folder / "config.json").read_text())
        config["tie_word_embeddings"] = False
        config.pop("scale_decoder_outputs", None)
        (folder / "config.json").write_text(json.dumps(config))
    t5_tokenizer().save_pretrained(folder)
    return transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()


def assert_close(ours: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """Max abs difference within `tol`, relative to the reference's largest entry when that is
    above 1 (float32 rounding grows with the magnitude of T5 v1.1's unnormalized residuals)."""
    scale = max(1.0, float(expected.detach().abs().max()))
    assert float((ours - expected).detach().abs().max()) <= tol * scale


VARIANTS = {
    "t5": {},
    "t5-v1.1": dict(separate_lm_head=True, feed_forward_proj="gated-gelu"),
    "asymmetric": dict(
        num_decoder_layers=3, relative_attention_num_buckets=8, relative_attention_max_distance=12
    ),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, anatomist.HookedEncoderDecoder]:
    folder = tmp_path_factory.mktemp(f"t5-{request.param}")
    hf = save_t5(folder, **VARIANTS[request.param])
    return hf, anatomist.HookedEncoderDecoder.from_pretrained(folder, progress=False)


def encoder_decoder_tokens(batch: int = 2, enc: int = 20, dec: int = 9) -> tuple[Any, Any]:
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, VOCAB, (batch, enc), generator=gen)
    decoder = torch.randint(3, VOCAB, (batch, dec), generator=gen)
    decoder[:, 0] = 0
    return tokens, decoder


def test_logits_match_hugging_face(pair: tuple[Any, anatomist.HookedEncoderDecoder]) -> None:
    hf, model = pair
    tokens, decoder = encoder_decoder_tokens()
    with torch.no_grad():
        expected = hf(input_ids=tokens, decoder_input_ids=decoder).logits
        ours = model(tokens, decoder)
    assert ours.shape == expected.shape
    assert_close(ours, expected)


def test_every_block_matches_hidden_states(
    pair: tuple[Any, anatomist.HookedEncoderDecoder],
) -> None:
    hf, model = pair
    tokens, decoder = encoder_decoder_tokens()
    with torch.no_grad():
        out = hf(input_ids=tokens, decoder_input_ids=decoder, output_hidden_states=True)
        _, cache = model.run_with_cache(tokens, decoder)
    # Hugging Face's last hidden state of a stack is after its final norm.
    for stack, states in (
        ("encoder", out.encoder_hidden_states),
        ("decoder", out.decoder_hidden_states),
    ):
        n = len(getattr(model, stack))
        assert len(states) == n + 1
        for i in range(n - 1):
            assert_close(cache[f"{stack}.{i}.hook_resid_post"], states[i + 1])
        final_ln = getattr(model, f"{stack}_final_ln")
        last = final_ln(cache[f"{stack}.{n - 1}.hook_resid_post"])
        assert_close(last, states[n])
    encoded = model.encoder_output(tokens)
    assert (encoded - out.encoder_last_hidden_state).abs().max() <= 1e-5


def test_padded_encoder_input(pair: tuple[Any, anatomist.HookedEncoderDecoder]) -> None:
    hf, model = pair
    tokens, decoder = encoder_decoder_tokens()
    mask = torch.ones_like(tokens)
    mask[1, 13:] = 0
    tokens[1, 13:] = 0
    with torch.no_grad():
        ours = model(tokens, decoder, one_zero_attention_mask=mask)
        expected = hf(input_ids=tokens, attention_mask=mask, decoder_input_ids=decoder).logits
        alone = model(tokens[1:, :13], decoder[1:])
    assert_close(ours, expected)
    assert (ours[1:] - alone).abs().max() <= 1e-5


def test_explicit_attention_path_equals_fused(
    pair: tuple[Any, anatomist.HookedEncoderDecoder],
) -> None:
    _, model = pair
    tokens, decoder = encoder_decoder_tokens()
    mask = torch.ones_like(tokens)
    mask[0, 15:] = 0
    fused = model(tokens, decoder, one_zero_attention_mask=mask)
    logits, cache = model.run_with_cache(tokens, decoder, one_zero_attention_mask=mask)
    assert_close(logits, fused)
    self_pattern = cache["decoder.1.attn.hook_pattern"]
    assert torch.allclose(self_pattern.sum(-1), torch.ones(()), atol=1e-5)
    assert self_pattern.triu(diagonal=1).abs().max() == 0  # the decoder is causal
    assert cache["encoder.1.attn.hook_pattern"].triu(diagonal=1).abs().max() > 0  # not causal
    cross = cache["decoder.0.cross_attn.hook_pattern"]
    assert cross.shape == (2, model.cfg.n_heads, decoder.shape[1], tokens.shape[1])
    assert cross[0, :, :, 15:].abs().max() == 0  # padding is never attended to


def test_hook_names_and_shapes(pair: tuple[Any, anatomist.HookedEncoderDecoder]) -> None:
    _, model = pair
    tokens, decoder = encoder_decoder_tokens(batch=2, enc=11, dec=5)
    _, cache = model.run_with_cache(tokens, decoder)
    d, h = model.cfg.d_model, model.cfg.n_heads
    assert cache["hook_embed"].shape == (2, 11, d)
    assert cache["hook_decoder_embed"].shape == (2, 5, d)
    assert cache["encoder.0.attn.hook_rel_pos_bias"].shape == (1, h, 11, 11)
    assert cache["decoder.0.attn.hook_rel_pos_bias"].shape == (1, h, 5, 5)
    assert "encoder.1.attn.hook_rel_pos_bias" not in cache  # only layer 0 owns the table
    assert cache["decoder.1.hook_cross_attn_out"].shape == (2, 5, d)
    assert cache["decoder.1.hook_resid_mid_cross"].shape == (2, 5, d)
    assert cache["decoder.0.cross_attn.hook_k"].shape == (2, 11, h, model.cfg.d_head)
    assert cache["encoder_final_ln.hook_normalized"].shape == (2, 11, d)
    # resid_mid_cross = resid_mid + cross_attn_out; resid_post = resid_mid_cross + mlp_out
    mid = cache["decoder.1.hook_resid_mid"] + cache["decoder.1.hook_cross_attn_out"]
    assert torch.allclose(mid, cache["decoder.1.hook_resid_mid_cross"])
    post = cache["decoder.1.hook_resid_mid_cross"] + cache["decoder.1.hook_mlp_out"]
    assert torch.allclose(post, cache["decoder.1.hook_resid_post"])


def test_ablating_cross_attention_changes_the_output(
    pair: tuple[Any, anatomist.HookedEncoderDecoder],
) -> None:
    _, model = pair
    tokens, decoder = encoder_decoder_tokens()
    clean = model(tokens, decoder)
    hooks = [
        (f"decoder.{i}.hook_cross_attn_out", lambda x, hook: torch.zeros_like(x))
        for i in range(len(model.decoder))
    ]
    ablated = model.run_with_hooks(tokens, decoder, fwd_hooks=hooks)
    assert (ablated - clean).abs().max() > 1e-3
    # Without cross-attention the decoder no longer depends on the encoder input.
    other = model.run_with_hooks(tokens.flip(1), decoder, fwd_hooks=hooks)
    assert (other - ablated).abs().max() <= 1e-5


def test_opt_in_hooks_leave_logits_unchanged(
    pair: tuple[Any, anatomist.HookedEncoderDecoder],
) -> None:
    _, model = pair
    tokens, decoder = encoder_decoder_tokens()
    base = model(tokens, decoder)
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    model.set_use_hook_mlp_in(True)
    try:
        logits, cache = model.run_with_cache(tokens, decoder)
    finally:
        model.set_use_split_qkv_input(False)
        model.set_use_attn_result(False)
        model.set_use_hook_mlp_in(False)
    assert_close(logits, base)
    result = cache["decoder.0.cross_attn.hook_result"]
    assert result.shape == (2, decoder.shape[1], model.cfg.n_heads, model.cfg.d_model)
    assert torch.allclose(result.sum(2), cache["decoder.0.hook_cross_attn_out"], atol=1e-5)
    assert cache["encoder.1.hook_q_input"].shape[2] == model.cfg.n_heads
    assert "decoder.1.hook_mlp_in" in cache
    model.set_use_attn_in(True)
    try:
        logits, cache = model.run_with_cache(tokens, decoder)
    finally:
        model.set_use_attn_in(False)
    assert_close(logits, base)
    assert "decoder.0.hook_cross_attn_in" in cache


def greedy_both(
    hf: Any, model: anatomist.HookedEncoderDecoder, tokens: Any, mask: Any, eos: int | None
) -> tuple[Any, Any]:
    """Greedy generation of 8 tokens by transformers and by us, stopping at `eos` (None: never)."""
    expected = hf.generate(
        tokens,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=8,
        eos_token_id=eos,
        use_cache=False,
    )
    ours = model.generate(
        tokens,
        one_zero_attention_mask=mask,
        do_sample=False,
        max_new_tokens=8,
        stop_at_eos=eos is not None,
        eos_token_id=eos,
        verbose=False,
    )
    return ours, expected


def test_greedy_generation_matches_hugging_face(
    pair: tuple[Any, anatomist.HookedEncoderDecoder],
) -> None:
    hf, model = pair
    tokens, _ = encoder_decoder_tokens(batch=2, enc=10)
    mask = torch.ones_like(tokens)
    mask[1, 7:] = 0
    ours, expected = greedy_both(hf, model, tokens, mask, eos=None)
    assert torch.equal(ours, expected)
    assert len(set(ours[:, 1:].flatten().tolist())) > 2  # not a degenerate repetition
    # Stopping: take a token row 0 produces as its end-of-sequence token; row 0 stops there
    # and is padded, row 1 goes on (or stops where it meets the token), as in Hugging Face.
    ours, expected = greedy_both(hf, model, tokens, mask, eos=int(expected[0, 3]))
    assert torch.equal(ours, expected)


def test_text_input_and_string_generation(tmp_path: Path) -> None:
    save_t5(tmp_path)
    model = anatomist.HookedEncoderDecoder.from_pretrained(tmp_path, progress=False)
    tokens, mask = model.to_tokens(["the cat sat", "a dog"])
    assert tokens[0].tolist()[-1] == 1 and tokens[1, 2].item() == 1  # </s> appended
    assert mask.tolist()[1] == [1, 1, 1, 0]
    from_text = model(["the cat sat", "a dog"])
    from_ids = model(tokens, torch.zeros(2, 1, dtype=torch.long), one_zero_attention_mask=mask)
    assert torch.equal(from_text, from_ids)
    text = model.generate("the cat sat", max_new_tokens=5, do_sample=False, verbose=False)
    assert isinstance(text, str)
    ids = model.generate(tokens[:1], max_new_tokens=5, do_sample=False, verbose=False)
    assert text == model.tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)


def test_loaders_refuse_the_wrong_kind_of_model(tmp_path: Path) -> None:
    save_t5(tmp_path / "t5")
    with pytest.raises(EncoderDecoderOnlyError, match="HookedEncoderDecoder"):
        anatomist.HookedTransformer.from_pretrained(tmp_path / "t5", progress=False)
    tiny_gpt2(tmp_path / "gpt2")
    with pytest.raises(UnsupportedArchitectureError, match="HookedTransformer"):
        anatomist.HookedEncoderDecoder.from_pretrained(tmp_path / "gpt2", progress=False)


def test_token_input_needs_decoder_input(pair: tuple[Any, anatomist.HookedEncoderDecoder]) -> None:
    _, model = pair
    tokens, _ = encoder_decoder_tokens()
    with pytest.raises(ValueError, match="decoder_input"):
        model(tokens)


def test_weight_views_and_labels(pair: tuple[Any, anatomist.HookedEncoderDecoder]) -> None:
    _, model = pair
    cfg = model.cfg
    assert cfg.n_decoder_layers is not None
    layers = cfg.n_layers + cfg.n_decoder_layers
    assert model.W_Q.shape == (layers, cfg.n_heads, cfg.d_model, cfg.d_head)
    assert torch.equal(model.W_O[cfg.n_layers], model.decoder[0].attn.W_O)
    labels = model.all_head_labels()
    assert len(labels) == layers * cfg.n_heads
    assert labels[0] == "EL0H0" and labels[-1] == f"DL{cfg.n_decoder_layers - 1}H{cfg.n_heads - 1}"


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize(("buckets", "distance"), [(32, 128), (8, 12), (6, 20)])
def test_relative_position_buckets_match_hugging_face(
    bidirectional: bool, buckets: int, distance: int
) -> None:
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 301)[None, :]
    expected = T5Attention._relative_position_bucket(
        relative, bidirectional=bidirectional, num_buckets=buckets, max_distance=distance
    )
    ours = relative_position_bucket(relative, bidirectional, buckets, distance)
    assert torch.equal(ours, expected)


def test_random_init_model_runs_and_trains() -> None:
    cfg = anatomist.TransformerConfig(
        n_layers=1,
        d_model=16,
        n_ctx=32,
        d_head=4,
        d_vocab=20,
        act_fn="relu",
        normalization_type="RMS",
        positional_embedding_type="relative_positional_bias",
        use_attn_scale=False,
        seed=0,
    )
    model = anatomist.HookedEncoderDecoder(cfg)
    tokens = torch.randint(0, 20, (2, 6))
    decoder = torch.randint(0, 20, (2, 4))
    loss = model(tokens, decoder).log_softmax(-1).mean()
    loss.backward()
    assert model.encoder[0].attn.rel_pos_bias.weight.grad is not None
    assert model.decoder[0].cross_attn.W_Q.grad is not None


# --- sampling ------------------------------------------------------------------------------
def test_sampling_rules() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]]).repeat(4000, 1)
    torch.manual_seed(0)
    assert torch.equal(sample_logits(logits, top_k=1), logits.argmax(-1))
    assert torch.equal(sample_logits(logits, temperature=0.0), logits.argmax(-1))
    top2 = sample_logits(logits, top_k=2)
    assert set(top2.tolist()) == {0, 1}
    # top_p keeps the smallest set of most likely tokens whose probability reaches p.
    probs = logits[0].softmax(-1)
    p = float(probs[:2].sum()) - 1e-3  # needs exactly the two best tokens
    nucleus = sample_logits(logits, top_p=p)
    assert set(nucleus.tolist()) == {0, 1}
    share = (nucleus == 0).float().mean()
    assert abs(float(share) - float(probs[0] / probs[:2].sum())) < 0.03
    # temperature sharpens the distribution as it defines: softmax(logits / T)
    cold = sample_logits(logits, temperature=0.5)
    want = (logits[0] / 0.5).softmax(-1)[0]
    assert abs(float((cold == 0).float().mean()) - float(want)) < 0.03
    # the frequency penalty lowers tokens already generated
    seen = torch.zeros(4000, 3, dtype=torch.long)
    penalized = sample_logits(logits, freq_penalty=10.0, tokens=seen)
    assert (penalized == 0).float().mean() < 0.01
    with pytest.raises(ValueError, match="top_p"):
        sample_logits(logits, top_p=0.0)
