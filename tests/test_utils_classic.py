"""The rest of the classic ``utils`` names: init helpers, tensor helpers, activations, overridable
defaults, devices, hub helpers, tokenizer helpers and the ``transformer_lens.utilities`` paths."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from anatomist import utils
from anatomist.analysis.evals import DatasetUnavailableError

SRC = str(Path(__file__).resolve().parents[1] / "src")


# --- weight initialisation -----------------------------------------------------------------------


def test_calc_fan_in_and_fan_out_reads_right_multiplying_layouts() -> None:
    assert utils.calc_fan_in_and_fan_out(torch.empty(7)) == (1, 7)
    assert utils.calc_fan_in_and_fan_out(torch.empty(3, 5)) == (3, 5)
    assert utils.calc_fan_in_and_fan_out(torch.empty(4, 16, 8)) == (16, 32)  # [h, d_model, d_head]
    for shape in ((), (2, 2, 2, 2)):
        with pytest.raises(ValueError, match="fan in and fan out"):
            utils.calc_fan_in_and_fan_out(torch.empty(shape))


@pytest.mark.parametrize("nonlinearity, gain", [("linear", 1.0), ("relu", math.sqrt(2.0))])
def test_kaiming_init_std_and_bounds(nonlinearity: str, gain: float) -> None:
    torch.manual_seed(0)
    w = utils.init_kaiming_uniform_(torch.empty(2000, 300), nonlinearity=nonlinearity)
    std = gain / math.sqrt(2000)
    assert w.std().item() == pytest.approx(std, rel=0.02)
    assert w.abs().max().item() <= math.sqrt(3) * std + 1e-7  # U(-a, a) with a = sqrt(3) std
    assert w.abs().max().item() == pytest.approx(math.sqrt(3) * std, rel=0.01)
    n = utils.init_kaiming_normal_(torch.empty(3, 2000, 100), nonlinearity=nonlinearity)
    assert n.std().item() == pytest.approx(std, rel=0.02)
    # fan_out of [3, 2000, 100] is 3 * 100; the extra gain multiplies.
    out = utils.init_kaiming_normal_(
        torch.empty(3, 2000, 100), nonlinearity=nonlinearity, gain=2.0, mode="fan_out"
    )
    assert out.std().item() == pytest.approx(2.0 * gain / math.sqrt(300), rel=0.02)
    with pytest.raises(ValueError, match="mode must be"):
        utils.init_kaiming_uniform_(torch.empty(3, 3), mode="fan_avg")


def test_xavier_init_std() -> None:
    torch.manual_seed(0)
    u = utils.init_xavier_uniform_(torch.empty(1000, 500))
    assert u.std().item() == pytest.approx(math.sqrt(2 / 1500), rel=0.02)
    assert u.abs().max().item() <= math.sqrt(6 / 1500) + 1e-7
    n = utils.init_xavier_normal_(torch.empty(2, 1000, 100), gain=3.0)
    assert n.std().item() == pytest.approx(3.0 * math.sqrt(2 / (1000 + 200)), rel=0.02)
    # In place, on a Parameter, and the same draw for the same seed.
    p = nn.Parameter(torch.empty(50, 40))
    torch.manual_seed(1)
    assert utils.init_xavier_uniform_(p) is p
    first = p.detach().clone()
    torch.manual_seed(1)
    utils.init_xavier_uniform_(p)
    assert torch.equal(p.detach(), first)


# --- tensors -------------------------------------------------------------------------------------


def test_transpose_and_cumsum() -> None:
    t = torch.arange(24.0).reshape(2, 3, 4)
    assert utils.transpose(t).shape == (2, 4, 3)
    assert torch.equal(utils.transpose(t)[1, 2, 0], t[1, 0, 2])
    x = torch.tensor([[1, 0, 2, 3], [0, 0, 1, 0]])
    assert utils.get_cumsum_along_dim(x, -1).tolist() == [[1, 1, 3, 6], [0, 0, 1, 1]]
    assert utils.get_cumsum_along_dim(x, -1, reverse=True).tolist() == [[6, 5, 5, 3], [1, 1, 1, 0]]
    assert utils.get_cumsum_along_dim(x, 0, reverse=True).tolist() == [[1, 0, 3, 3], [0, 0, 1, 0]]


def test_get_offset_position_ids_counts_real_tokens() -> None:
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert utils.get_offset_position_ids(0, mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert utils.get_offset_position_ids(3, mask).tolist() == [[1, 2], [3, 4]]


def test_repeat_along_head_dimension_clones_or_views() -> None:
    x = torch.randn(2, 3, 4)
    copies = utils.repeat_along_head_dimension(x, n_heads=5)
    assert copies.shape == (2, 3, 5, 4)
    for h in range(5):
        assert torch.equal(copies[:, :, h], x)
    copies[0, 0, 0, 0] = 100.0
    assert x[0, 0, 0] != 100.0 and copies[0, 0, 1, 0] != 100.0  # own memory per head
    view = utils.repeat_along_head_dimension(x, n_heads=5, clone_tensor=False)
    x[1, 2, 3] = -7.0
    assert (view[1, 2, :, 3] == -7.0).all()  # shares the input's memory


def test_filter_dict_by_prefix() -> None:
    d = {"blocks.0.attn.W_Q": 1, "blocks.0.mlp.W_in": 2, "blocks.01.x": 3, "blocks.1.ln": 4}
    assert utils.filter_dict_by_prefix(d, "blocks.0") == {"attn.W_Q": 1, "mlp.W_in": 2}
    assert utils.filter_dict_by_prefix(d, "blocks.0.") == {"attn.W_Q": 1, "mlp.W_in": 2}
    assert utils.filter_dict_by_prefix(d, "nothing") == {}


def test_check_structure_reports_order_mismatches(capsys: pytest.CaptureFixture[str]) -> None:
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    utils.check_structure(a, a * 10)
    assert capsys.readouterr().out.strip() == "PASSED"
    utils.check_structure(a, torch.tensor([[3.0, 2.0], [1.0, 4.0]]))  # rows 0/1 reorder
    assert "row mismatch: [0]" in capsys.readouterr().out
    utils.check_structure(a, torch.tensor([[2.0, 1.0], [4.0, 3.0]]))  # only columns reorder
    assert "column mismatch: [0]" in capsys.readouterr().out
    with pytest.raises(ValueError, match="one shape"):
        utils.check_structure(a, torch.ones(3, 3))
    with pytest.raises(AssertionError):  # as the classic
        utils.check_structure(a[0], a[0])


def test_to_numpy_upcasts_bfloat16_and_names_bad_types() -> None:
    out = utils.to_numpy(torch.tensor([1.5, -2.0], dtype=torch.bfloat16))
    assert out.dtype == np.float32 and out.tolist() == [1.5, -2.0]
    assert utils.to_numpy(torch.tensor([1.0], dtype=torch.float16)).dtype == np.float16
    with pytest.raises(TypeError, match="invalid type: dict"):
        utils.to_numpy({"a": 1})
    with pytest.raises(ValueError):  # the classic raised ValueError
        utils.to_numpy(object())


def test_composition_scores_shape_error_is_also_an_assertion_error() -> None:
    left = utils.FactoredMatrix(torch.randn(4, 2), torch.randn(2, 4))
    right = utils.FactoredMatrix(torch.randn(5, 2), torch.randn(2, 5))
    with pytest.raises(AssertionError, match="left.rdim == right.ldim"):
        utils.composition_scores(left, right)
    with pytest.raises(ValueError):
        utils.composition_scores(left, right)


def test_get_matrix_corner_is_the_product_corner() -> None:
    a, b = torch.randn(5, 2), torch.randn(2, 6)
    corner = utils.get_matrix_corner(utils.FactoredMatrix(a, b), n=3)
    assert torch.allclose(corner, (a @ b)[:3, :3])


# --- activation functions ------------------------------------------------------------------------


def test_activation_functions_match_their_formulas() -> None:
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    tanh_gelu = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    for fn in (utils.gelu_new, utils.gelu_fast, utils.gelu_pytorch_tanh):
        assert torch.allclose(fn(x), tanh_gelu, atol=1e-12)
    rows = torch.randn(3, 5)
    assert torch.allclose(utils.solu(rows), rows * rows.exp() / rows.exp().sum(-1, keepdim=True))
    # xIELU with alpha_p = alpha_n = 0.8, beta = 0.5.
    expected = torch.where(
        x > 0, 0.8 * x * x + 0.5 * x, (torch.expm1(x.clamp(max=-1e-6)) - x) * 0.8 + 0.5 * x
    )
    assert torch.allclose(utils.xielu(x), expected, atol=1e-9)
    assert set(utils.SUPPORTED_ACTIVATIONS) >= {"solu_ln", "gelu_new", "relu", "silu", "gelu"}
    assert utils.ACTIVATION_FN_DICT is utils.SUPPORTED_ACTIVATIONS


# --- overridable defaults -----------------------------------------------------------------------


def test_override_or_use_default_value_and_nested_attrs() -> None:
    assert utils.override_or_use_default_value(True) is True
    assert utils.override_or_use_default_value(True, utils.USE_DEFAULT_VALUE) is True
    assert utils.override_or_use_default_value(True, False) is False
    assert utils.override_or_use_default_value("left", "right") == "right"
    obj = SimpleNamespace(a=SimpleNamespace(b=SimpleNamespace(c=1)), top=0)
    assert utils.get_nested_attr(obj, "a.b.c") == 1
    utils.set_nested_attr(obj, "a.b.c", 2)
    utils.set_nested_attr(obj, "top", 3)
    assert obj.a.b.c == 2 and obj.top == 3
    with pytest.raises(AttributeError):
        utils.get_nested_attr(obj, "a.missing")


def _model_with_defaults(tokenizer: bool = True) -> Any:
    cfg = SimpleNamespace(default_prepend_bos=True, default_padding_side="right")
    return SimpleNamespace(
        cfg=cfg, tokenizer=SimpleNamespace(padding_side="right") if tokenizer else None
    )


def test_locally_overriden_defaults_sets_and_restores() -> None:
    model = _model_with_defaults()
    with utils.LocallyOverridenDefaults(model, prepend_bos=False, padding_side="left"):
        assert model.cfg.default_prepend_bos is False
        assert model.cfg.default_padding_side == "left"
        assert model.tokenizer.padding_side == "left"
    assert model.cfg.default_prepend_bos is True
    assert model.cfg.default_padding_side == "right" and model.tokenizer.padding_side == "right"
    # None keeps the default; the defaults come back after an exception too.
    override = utils.LocallyOverridenDefaults(model, prepend_bos=None, padding_side="left")
    with pytest.raises(RuntimeError), override:
        assert model.cfg.default_prepend_bos is True
        raise RuntimeError
    assert model.cfg.default_padding_side == "right"
    # Without a tokenizer only the config changes.
    bare = _model_with_defaults(tokenizer=False)
    with utils.LocallyOverridenDefaults(bare, padding_side="left"):
        assert bare.cfg.default_padding_side == "left"
    assert bare.tokenizer is None


def test_locally_overriden_defaults_refuses_unknown_settings() -> None:
    model = _model_with_defaults()
    with pytest.raises(ValueError, match="'fold_ln' is not a default"):
        utils.LocallyOverridenDefaults(model, fold_ln=True)
    with pytest.raises(AssertionError, match="padding_side must be one of"):  # as the classic
        utils.LocallyOverridenDefaults(model, padding_side="middle")
    with pytest.raises(utils.InvalidOverrideError):
        utils.LocallyOverridenDefaults(model, prepend_bos=1.5)


# --- environment ---------------------------------------------------------------------------------


def test_is_library_available() -> None:
    assert utils.is_library_available("json") and utils.is_library_available("torch")
    assert not utils.is_library_available("surely_not_a_module_4821")


def test_get_device_and_mps_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert utils.get_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: True)
    monkeypatch.delenv("TRANSFORMERLENS_ALLOW_MPS", raising=False)
    assert utils.get_device() == "cpu"  # MPS only when opted in
    monkeypatch.setenv("TRANSFORMERLENS_ALLOW_MPS", "1")
    assert utils.get_device() == "mps"

    monkeypatch.delenv("TRANSFORMERLENS_ALLOW_MPS")
    monkeypatch.setattr(utils, "_mps_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        utils.warn_if_mps("cpu")
        utils.warn_if_mps(torch.device("mps"))
        utils.warn_if_mps("mps")  # once per process
    assert len(caught) == 1 and "MPS" in str(caught[0].message)


def test_move_to_and_update_config(capsys: pytest.CaptureFixture[str]) -> None:
    model = nn.Linear(2, 2)
    model.cfg = SimpleNamespace(device="cuda", dtype=torch.float32)  # type: ignore[assignment]
    assert utils.move_to_and_update_config(model, torch.device("cpu")) is model
    assert model.cfg.device == "cpu" and "Moving model to device" in capsys.readouterr().out
    utils.move_to_and_update_config(model, torch.float64, print_details=False)
    assert model.cfg.dtype == torch.float64 and model.weight.dtype == torch.float64
    assert capsys.readouterr().out == ""


def test_print_gpu_mem_prints_gib(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 3 * 2**30)
    utils.print_gpu_mem("step")
    assert capsys.readouterr().out.strip() == "step ~ 3.00 GiB allocated on GPU."


# --- the hub -------------------------------------------------------------------------------------


def test_select_compatible_kwargs() -> None:
    def f(a: int, b: int = 0, *, c: int = 1) -> None: ...

    assert utils.select_compatible_kwargs({"a": 1, "c": 2, "z": 3}, f) == {"a": 1, "c": 2}


def test_download_file_from_hf_loads_by_extension(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from huggingface_hub.errors import LocalEntryNotFoundError

    from anatomist.loading import hub_files

    (tmp_path / "cfg.json").write_text(json.dumps({"d_model": 8}))
    torch.save({"w": torch.ones(2)}, tmp_path / "weights.pth")
    (tmp_path / "notes.txt").write_text("hi")
    calls: list[dict[str, Any]] = []

    def fake_download(
        repo_id: str, filename: str, subfolder: str, cache_dir: Any, revision: Any = None
    ) -> str:
        calls.append({"repo_id": repo_id, "revision": revision})
        if filename == "missing.json":
            raise LocalEntryNotFoundError("not cached")
        return str(tmp_path / filename)

    monkeypatch.setattr(hub_files, "hf_hub_download", fake_download)
    assert utils.download_file_from_hf("org/repo", "cfg.json", revision="main") == {"d_model": 8}
    assert calls[-1] == {"repo_id": "org/repo", "revision": "main"}  # known kwargs passed on
    assert torch.equal(utils.download_file_from_hf("org/repo", "weights.pth")["w"], torch.ones(2))
    assert utils.download_file_from_hf("org/repo", "notes.txt") == str(tmp_path / "notes.txt")
    utils.download_file_from_hf("org/repo", "cfg.json", not_a_download_arg=1)  # dropped
    with pytest.raises(utils.HubFileUnavailableError, match="'missing.json' of Hugging Face repo"):
        utils.download_file_from_hf("org/repo", "missing.json")


def test_clear_huggingface_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    (cache / "models--x").mkdir(parents=True)
    from anatomist.loading import hub_files

    monkeypatch.setattr(hub_files, "CACHE_DIR", str(cache))
    utils.clear_huggingface_cache()
    assert not cache.exists()
    utils.clear_huggingface_cache()  # nothing left to delete is fine


def test_get_dataset_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="not one of get_dataset's names"):
        utils.get_dataset("imagenet")
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DatasetUnavailableError, match="needs the 'datasets' package"):
        utils.get_dataset("pile")
    failing = SimpleNamespace(
        load_dataset=lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline"))
    )
    monkeypatch.setitem(sys.modules, "datasets", failing)
    with pytest.raises(DatasetUnavailableError, match="NeelNanda/pile-10k"):
        utils.get_dataset("pile")
    loaded = SimpleNamespace(load_dataset=lambda repo, split, **kw: (repo, split, kw))
    monkeypatch.setitem(sys.modules, "datasets", loaded)
    assert utils.get_dataset("owt", data_dir="x") == (
        "stas/openwebtext-10k",
        "train",
        {"data_dir": "x"},
    )


def test_get_rotary_pct_from_config() -> None:
    assert utils.get_rotary_pct_from_config(None) == 1.0
    assert utils.get_rotary_pct_from_config(SimpleNamespace(rotary_pct=0.25)) == 0.25
    v5 = SimpleNamespace(rope_parameters={"partial_rotary_factor": 0.5})
    assert utils.get_rotary_pct_from_config(v5) == 0.5
    assert utils.get_rotary_pct_from_config(SimpleNamespace(rope_parameters=None)) == 1.0


class _RateLimited(Exception):
    def __init__(self, retry_after: str | None) -> None:
        headers = {} if retry_after is None else {"Retry-After": retry_after}
        self.response = SimpleNamespace(status_code=429, headers=headers)


def test_call_hf_with_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr("time.sleep", waits.append)
    answers: list[Any] = [_RateLimited("7"), _RateLimited(None), "done"]

    def flaky(x: int, *, y: int) -> Any:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return (answer, x, y)

    assert utils.call_hf_with_retry(flaky, 1, y=2, base_delay=4.0) == ("done", 1, 2)
    assert waits[0] == 7.0 and 0.8 * 8.0 <= waits[1] <= 1.2 * 8.0  # Retry-After, then 4 * 2**1
    answers[:] = [_RateLimited(None), _RateLimited(None)]
    with pytest.raises(_RateLimited):
        utils.call_hf_with_retry(flaky, 1, y=2, max_attempts=2)

    def broken() -> None:
        raise KeyError("other")

    waits.clear()
    with pytest.raises(KeyError):
        utils.call_hf_with_retry(broken)
    assert waits == []  # other errors are not retried


def test_enable_hf_retry_wraps_once() -> None:
    import transformers

    names = ("AutoConfig", "AutoModel", "AutoTokenizer", "AutoProcessor")
    saved = {n: vars(getattr(transformers, n))["from_pretrained"] for n in names}
    try:
        utils.enable_hf_retry()
        wrapped = transformers.AutoTokenizer.from_pretrained
        assert wrapped._tl_hf_retry_wrapped
        utils.enable_hf_retry()
        assert transformers.AutoTokenizer.from_pretrained.__func__ is wrapped.__func__
    finally:
        for name, original in saved.items():
            getattr(transformers, name).from_pretrained = original


# --- logits and caches ---------------------------------------------------------------------------


def test_logits_to_df() -> None:
    pytest.importorskip("pandas")
    logits = torch.tensor([0.5, 2.0, -1.0, 1.0])
    probs = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum()
    df = utils.logits_to_df(logits, tokenizer=SimpleNamespace(decode=lambda ids: "abcd"[ids[0]]))
    assert list(df.columns) == ["token_index", "token_string", "logit", "log_prob", "probability"]
    assert df["token_index"].tolist() == [1, 3, 0, 2]
    assert df["token_string"].tolist() == ["b", "d", "a", "c"]
    assert np.allclose(df["probability"], probs[[1, 3, 0, 2]])
    assert np.allclose(df["log_prob"], np.log(probs[[1, 3, 0, 2]]))
    top = utils.logits_to_df(logits, top_k=2)
    assert "token_string" not in top.columns and top["logit"].tolist() == [2.0, 1.0]
    with pytest.raises(ValueError, match=r"logits\[0, -1\]"):
        utils.logits_to_df(torch.zeros(2, 4))


def test_get_pos_offset() -> None:
    assert utils.get_pos_offset(None, batch_size=3) == 0
    entry = SimpleNamespace(past_keys=torch.empty(2, 5, 1, 4))
    assert utils.get_pos_offset(SimpleNamespace(entries=[entry]), batch_size=2) == 5


def test_sample_logits_repetition_penalty_and_classic_errors() -> None:
    logits = torch.tensor([[0.0, 10.0, 9.0, -1.0]])
    seen = torch.tensor([[1, 3]])
    # 10 / 100 = 0.1 falls below token 2's 9: greedy picks 2.
    assert utils.sample_logits(
        logits, temperature=0.0, tokens=seen, repetition_penalty=100.0
    ).tolist() == [2]
    assert utils.sample_logits(logits, temperature=0.0, tokens=seen).tolist() == [1]
    with pytest.raises(AssertionError, match="need tokens"):
        utils.sample_logits(logits, freq_penalty=1.0)
    with pytest.raises(AssertionError, match="top_k"):
        utils.sample_logits(logits, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        utils.sample_logits(logits, top_p=1.5)


# --- tokenizer helpers ---------------------------------------------------------------------------


def _tok(padding_side: str = "right") -> Any:
    from tests.helpers import tiny_tokenizer

    tok = tiny_tokenizer()  # <bos>=0, <eos>=1, <pad>=2
    tok.padding_side = padding_side
    return tok


def test_get_attention_mask_masks_only_the_padded_end() -> None:
    pad = 2
    right = torch.tensor([[0, 5, pad, 6, pad, pad], [0, 5, 6, 7, 8, 9]])  # a pad inside the text
    assert utils.get_attention_mask(_tok("right"), right, prepend_bos=True).tolist() == [
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1],
    ]
    left = torch.tensor([[pad, pad, 0, 5, pad, 6], [0, 5, 6, 7, 8, 9]])
    assert utils.get_attention_mask(_tok("left"), left, prepend_bos=True).tolist() == [
        [0, 0, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
    ]
    # BOS and pad share an id (GPT-2): the last leading pad is the BOS when it was prepended.
    shared = SimpleNamespace(padding_side="left", pad_token_id=9, bos_token_id=9)
    ids = torch.tensor([[9, 9, 9, 4, 5], [9, 3, 4, 5, 6]])
    assert utils.get_attention_mask(shared, ids, prepend_bos=True).tolist() == [
        [0, 0, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ]
    assert utils.get_attention_mask(shared, ids, prepend_bos=False)[0].tolist() == [0, 0, 0, 1, 1]
    assert (
        utils.get_attention_mask(None, ids, prepend_bos=True).tolist()
        == torch.ones_like(ids).tolist()
    )
    no_pad = SimpleNamespace(padding_side="left", pad_token_id=None, bos_token_id=0)
    assert bool(utils.get_attention_mask(no_pad, ids, prepend_bos=True).all())


def test_get_tokens_with_bos_removed() -> None:
    right = torch.tensor([[0, 5, 6, 2], [0, 7, 2, 2]])
    assert utils.get_tokens_with_bos_removed(_tok("right"), right).tolist() == [
        [5, 6, 2],
        [7, 2, 2],
    ]
    left = torch.tensor([[2, 0, 5, 6], [0, 7, 8, 9]])
    assert utils.get_tokens_with_bos_removed(_tok("left"), left).tolist() == [[2, 5, 6], [7, 8, 9]]
    batched = torch.stack([left, left])  # [2, 2, 4]: any leading axes
    assert utils.get_tokens_with_bos_removed(_tok("left"), batched).shape == (2, 2, 3)
    shared = SimpleNamespace(padding_side="left", pad_token_id=9, bos_token_id=9)
    ids = torch.tensor([[9, 9, 4, 9], [9, 3, 4, 5]])  # row 0: BOS is the second 9
    assert utils.get_tokens_with_bos_removed(shared, ids).tolist() == [[9, 4, 9], [3, 4, 5]]
    with pytest.raises(ValueError, match="row 1 holds no BOS"):
        utils.get_tokens_with_bos_removed(_tok("left"), torch.tensor([[0, 5], [5, 6]]))


def test_bos_prepending_helpers() -> None:
    assert utils.get_input_with_manually_prepended_bos("<s>", "hi") == "<s>hi"
    assert utils.get_input_with_manually_prepended_bos("<s>", ["a", "b"]) == ["<s>a", "<s>b"]
    tok = _tok()
    assert tok("the cat")["input_ids"][0] != tok.bos_token_id
    with_bos = utils.get_tokenizer_with_bos(tok)
    assert with_bos is not tok
    assert with_bos("the cat")["input_ids"] == [tok.bos_token_id, *tok("the cat")["input_ids"]]
    assert utils.get_tokenizer_with_bos(with_bos) is with_bos  # already adds BOS
    assert tok("the cat")["input_ids"][0] != tok.bos_token_id  # the original is untouched


# --- the classic module paths --------------------------------------------------------------------


def test_transformer_lens_utilities_paths_are_anatomist_utils() -> None:
    code = """
        import importlib, pkgutil
        import anatomist.compat
        from anatomist import utils
        import transformer_lens.utilities as utilities
        import transformer_lens.utils as tl_utils
        assert tl_utils is utils
        from transformer_lens.utilities.tensors import filter_dict_by_prefix, to_numpy
        assert to_numpy is utils.to_numpy
        package = anatomist.compat.transformer_lens.utilities
        count = 0
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module("transformer_lens.utilities." + info.name)
            for name in module.__all__:
                if name == "_apply_repetition_penalty":
                    continue
                assert getattr(module, name) is getattr(utils, name), (info.name, name)
                assert getattr(utilities, name) is getattr(utils, name), name
                count += 1
        print(count)
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 50


def test_test_prompt_prints_the_classic_header_lines(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_utils import _StubTokenizerModel

    stub = _StubTokenizerModel(torch.randn(1, 10, 11))
    utils.test_prompt("ab", "cd", stub, prepend_space_to_answer=False, top_k=1)
    lines = capsys.readouterr().out.splitlines()
    # The stub's BOS is id 0, which reads "a".
    assert lines[:2] == ["Tokenized prompt: ['a', 'a', 'b']", "Tokenized answer: ['c', 'd']"]
    utils.test_prompt("ab", ["c", "de"], stub, top_k=1)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "Tokenized answers: [[' '], [' ']]"  # one line, first tokens only


def test_download_file_from_hf_retries_a_rate_limited_download(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from anatomist.loading import hub_files

    (tmp_path / "cfg.json").write_text("{}")
    answers: list[Any] = [_RateLimited("0"), str(tmp_path / "cfg.json")]

    def fake_download(**kwargs: Any) -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    monkeypatch.setattr(hub_files, "hf_hub_download", fake_download)
    monkeypatch.setattr("time.sleep", lambda s: None)
    assert utils.download_file_from_hf("org/repo", "cfg.json") == {}
    assert answers == []
