"""In-process sections: forward, forward with no-op hooks, run_with_cache, generation."""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from benchmarks.flops import forward_flops
from benchmarks.harness import Measurement, interleaved, interleaved_times
from benchmarks.subjects import (
    ModelFolder,
    Subject,
    anatomist_subject,
    hf_subject,
    load_hf,
    nnsight_subject,
    transformer_lens_subjects,
)


def subjects_for(
    model: ModelFolder, device: str, dtype: torch.dtype
) -> tuple[list[Subject], object]:
    """Every library's adapter on `model`, anatomist first; also the HF sdpa model (generation)."""
    hf_sdpa = load_hf(model, device, dtype, "sdpa")
    subjects = [
        anatomist_subject(model, device, dtype),
        hf_subject(hf_sdpa, "sdpa"),
        hf_subject(load_hf(model, device, dtype, "eager"), "eager"),
    ]
    subjects += transformer_lens_subjects(model, device, dtype)
    nn = nnsight_subject(hf_sdpa, model)
    if nn is not None:
        subjects.append(nn)
    return subjects, hf_sdpa


def _sync(device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def run_model_sections(
    model: ModelFolder,
    shapes: list[tuple[int, int, int]],
    device: str,
    dtype: torch.dtype,
    log: Callable[[str], None],
    gemm_gflops: float | None = None,
) -> list[Measurement]:
    """Forward, hooked forward and caching on `model` for each (batch, seq, repeats) shape.

    The cache sections run on the first (smallest) shape only: caching everything at 8x512
    would hold gigabytes per library. With `gemm_gflops` (this machine's GEMM rate, GFLOP/s)
    each anatomist forward also gets a ``flops`` row: its FLOPs counted from the config
    (benchmarks/flops.py) over its time, and the fraction of the GEMM rate that is."""
    subjects, _ = subjects_for(model, device, dtype)
    log(f"  {model.name}: " + ", ".join(s.library for s in subjects))
    sync = _sync(device)
    rows: list[Measurement] = []
    generator = torch.Generator().manual_seed(0)
    for index, (batch, seq, repeats) in enumerate(shapes):
        ids = torch.randint(0, model.d_vocab, (batch, seq), generator=generator).to(device)
        shape = f"{batch}x{seq}"
        jobs: dict[str, Callable[[], object]] = {}
        for s in subjects:
            jobs[f"{s.library}|forward"] = _job(s.forward, ids, sync)
        for s in subjects:
            if s.hooked is not None:
                jobs[f"{s.library}|hooked"] = _job(s.hooked, ids, sync)
        # The big shape is timed for the headline comparisons only (anatomist, HF sdpa).
        if index > 0:
            jobs = {k: v for k, v in jobs.items() if k.split("|")[0] in ("anatomist", "HF sdpa")}
        log(f"    {shape}: {len(jobs)} jobs x {repeats} repeats")
        with torch.inference_mode():
            # The small shape warmed everything up; a warm-up round of the big one would cost
            # as much as a repeat.
            medians = interleaved(jobs, repeats, warmup=0 if index > 0 else 1)
        for key, seconds in medians.items():
            library, job = key.split("|")
            section = "forward" if job == "forward" else "hooks"
            name = f"forward {shape}" if job == "forward" else f"no-op hook per layer {shape}"
            rows.append(Measurement(section, name, model.name, library, seconds, repeats=repeats))
            if job == "forward" and library == "anatomist" and gemm_gflops:
                rows.append(_flops_row(model, subjects[0], batch, seq, seconds, gemm_gflops))
        if index == 0:
            rows += _cache_rows(model, subjects, ids, repeats, sync, log)
        gc.collect()
    return rows


def _flops_row(
    model: ModelFolder, ours: Subject, batch: int, seq: int, seconds: float, gemm_gflops: float
) -> Measurement:
    gflop = forward_flops(ours.config, batch, seq) / 1e9
    rate = gflop / seconds
    extra = {"gflop": gflop, "of_gemm": rate / gemm_gflops}
    return Measurement(
        "flops",
        f"FLOP rate, forward {batch}x{seq}",
        model.name,
        "anatomist",
        rate,
        "GFLOP/s",
        0,
        extra,
    )


def _job(
    fn: Callable[[Tensor], object], ids: Tensor, sync: Callable[[], None]
) -> Callable[[], object]:
    def run() -> object:
        out = fn(ids)
        sync()
        return out

    return run


PAIRED_ROUNDS = 3  # cache_all rounds per repeat (see _cache_rows)


def _cache_rows(
    model: ModelFolder,
    subjects: list[Subject],
    ids: Tensor,
    repeats: int,
    sync: Callable[[], None],
    log: Callable[[str], None],
) -> list[Measurement]:
    """run_with_cache of everything and of one activation per layer. Caching everything is
    timed round-robin with each library's own forward, and its ``added_ms`` is the median over
    rounds of (cache time - forward time) in the same round: what caching adds, measured where
    a slow spell of the machine hits both alike (the best times of two separate runs can be
    tens of ms apart on a shared machine, as much as the overhead itself). It gets
    `PAIRED_ROUNDS` times the repeats: a median of 7 differences still moved by +-10 ms (0.34
    to 0.54 of the bridge's overhead in two runs of the same code)."""
    rows = []
    shape = f"{ids.shape[0]}x{ids.shape[1]}"
    for kind in ("cache_all", "cache_layer"):
        jobs: dict[str, Callable[[], object]] = {}
        sizes: dict[str, int] = {}
        for s in subjects:
            fn = getattr(s, kind)
            if fn is None:
                continue
            with torch.inference_mode():
                sizes[s.library] = fn(ids)  # also a warm-up
            jobs[s.library] = _job(fn, ids, sync)
            if kind == "cache_all":
                jobs[f"{s.library}|forward"] = _job(s.forward, ids, sync)
        rounds = repeats * PAIRED_ROUNDS if kind == "cache_all" else repeats
        log(f"    {kind} {shape}: {len(jobs)} jobs x {rounds} repeats")
        with torch.inference_mode():
            times = interleaved_times(jobs, rounds)
        label = "run_with_cache all" if kind == "cache_all" else "run_with_cache resid_post"
        for library in sizes:
            seconds = min(times[library])
            extra = {"cache_mb": sizes[library] / 2**20}
            if kind == "cache_all":
                paired = zip(times[library], times[f"{library}|forward"], strict=True)
                extra["added_ms"] = 1e3 * statistics.median(c - f for c, f in paired)
            rows.append(
                Measurement(
                    "cache", f"{label} {shape}", model.name, library, seconds, "ms", rounds, extra
                )
            )
        gc.collect()
    return rows


def run_generation(
    model: ModelFolder, new_tokens: int, repeats: int, device: str, dtype: torch.dtype
) -> list[Measurement]:
    """Greedy generation with the KV cache, anatomist vs transformers, same prompt and length."""
    import anatomist

    ours = anatomist.HookedTransformer.from_pretrained_no_processing(
        str(model.path), device=device, dtype=dtype, progress=False
    )
    hf = load_hf(model, device, dtype, "sdpa")
    tokens = ours.to_tokens("The history of the printing press begins")
    outputs: dict[str, Tensor] = {}

    def run_hf() -> None:
        outputs["HF sdpa"] = hf.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )

    def run_ours() -> None:
        outputs["anatomist"] = ours.generate(
            tokens, max_new_tokens=new_tokens, do_sample=False, stop_at_eos=False, verbose=False
        )

    with torch.inference_mode():
        medians = interleaved({"anatomist": run_ours, "HF sdpa": run_hf}, repeats)
    same = float(torch.equal(outputs["anatomist"].cpu(), outputs["HF sdpa"].cpu()))
    workload = f"greedy generate {new_tokens} tokens"
    rows = [
        Measurement(
            "generate",
            workload,
            model.name,
            library,
            new_tokens / seconds,
            "tokens/s",
            repeats,
            {"same_tokens": same},
        )
        for library, seconds in medians.items()
    ]
    rows += sampled_generation(model.name, ours, hf, new_tokens, repeats)
    return rows


SAMPLED_PROMPTS = (
    "Once upon a time",
    "The history of the printing press begins in",
    "Photosynthesis is the process by which green plants and some other organisms",
    "In the middle of the nineteenth century, the railway transformed how people in small "
    "towns travelled, traded and thought about distance, because",
)


def sampled_generation(
    model_name: str,
    ours: Any,
    hf: Any,
    new_tokens: int,
    repeats: int,
    prompts: tuple[str, ...] = SAMPLED_PROMPTS,
) -> list[Measurement]:
    """A batch of prompts of different lengths (4), left-padded, the same ids and mask for both
    libraries, sampled with temperature 0.8, top-k 50, top-p 0.9, KV cache, no stop before
    `new_tokens` (transformers: ``min_new_tokens``); tokens/s counts every row's new tokens."""
    tokens, mask = ours.tokenize_with_mask(list(prompts), padding_side="left")
    if mask is None:
        raise ValueError("the sampled-generation prompts must differ in length (padding)")
    tok = ours.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = ours.cfg.device or "cpu"
    tokens, mask = tokens.to(device), mask.to(device)
    settings: dict[str, Any] = dict(do_sample=True, temperature=0.8, top_k=50, top_p=0.9)
    lengths: dict[str, int] = {}

    def run_hf() -> None:
        torch.manual_seed(0)
        out = hf.generate(
            tokens,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad,
            **settings,
        )
        lengths["HF sdpa"] = out.shape[1] - tokens.shape[1]

    def run_ours() -> None:
        torch.manual_seed(0)
        out = ours.generate(
            tokens,
            attention_mask=mask,
            max_new_tokens=new_tokens,
            stop_at_eos=False,
            verbose=False,
            **settings,
        )
        lengths["anatomist"] = out.shape[1] - tokens.shape[1]

    with torch.inference_mode():
        best = interleaved({"anatomist": run_ours, "HF sdpa": run_hf}, repeats)
    batch = tokens.shape[0]
    workload = f"sampled generate {batch}x{new_tokens} tokens"
    return [
        Measurement(
            "generate",
            workload,
            model_name,
            library,
            batch * new_tokens / seconds,
            "tokens/s",
            repeats,
            {"new_tokens": float(lengths[library])},
        )
        for library, seconds in best.items()
    ]
