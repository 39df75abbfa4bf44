"""`import anatomist.compat` makes `transformer_lens` and its classic module paths anatomist's own.

Each case runs in a fresh interpreter, so the finder and the `sys.modules` entries it creates
never leak into other tests.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")


def run_python(
    code: str, *args: str, path: list[str] | None = None, cwd: Path | None = None
) -> str:
    """Run `code` (or, with args, a command line) in a fresh interpreter; return its stdout."""
    env_path = ":".join([*(path or []), SRC])
    command = [sys.executable, *(args or ("-c", textwrap.dedent(code)))]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": env_path,
            "HF_HUB_OFFLINE": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PATH": "/usr/bin:/bin",
        },
        cwd=cwd,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


# classic path -> (name to import from it, the anatomist object it must be)
CLASSIC_NAMES = [
    ("transformer_lens", "HookedTransformer", "anatomist.model.transformer.HookedTransformer"),
    ("transformer_lens", "HookedTransformerConfig", "anatomist.config.TransformerConfig"),
    ("transformer_lens", "ActivationCache", "anatomist.cache.ActivationCache"),
    ("transformer_lens", "FactoredMatrix", "anatomist.analysis.factored_matrix.FactoredMatrix"),
    ("transformer_lens", "HookedEncoder", "anatomist.model.encoder.HookedEncoder"),
    (
        "transformer_lens",
        "HookedEncoderDecoder",
        "anatomist.model.encoder_decoder.HookedEncoderDecoder",
    ),
    ("transformer_lens", "SVDInterpreter", "anatomist.analysis.svd.SVDInterpreter"),
    ("transformer_lens", "HookedRootModule", "anatomist.hooks.HookedRootModule"),
    ("transformer_lens", "utils", "anatomist.utils"),
    ("transformer_lens", "patching", "anatomist.analysis.patching"),
    ("transformer_lens", "evals", "anatomist.analysis.evals"),
    ("transformer_lens", "head_detector", "anatomist.analysis.head_detector"),
    ("transformer_lens.train", "train", "anatomist.train.train"),
    ("transformer_lens.train", "HookedTransformerTrainConfig", "anatomist.train.TrainingConfig"),
    ("transformer_lens", "hook_points", "anatomist.hooks"),
    ("transformer_lens.HookedTransformer", "HookedTransformer", "anatomist.HookedTransformer"),
    ("transformer_lens.HookedTransformer", "HookedRootModule", "anatomist.HookedRootModule"),
    ("transformer_lens.HookedTransformer", "Output", "anatomist.Output"),
    ("transformer_lens.HookedTransformer", "Loss", "torch.Tensor"),
    (
        "transformer_lens.HookedTransformerConfig",
        "HookedTransformerConfig",
        "anatomist.config.HookedTransformerConfig",
    ),
    ("transformer_lens.config", "HookedTransformerConfig", "anatomist.HookedTransformerConfig"),
    (
        "transformer_lens.config.hooked_transformer_config",
        "HookedTransformerConfig",
        "anatomist.HookedTransformerConfig",
    ),
    ("transformer_lens.ActivationCache", "ActivationCache", "anatomist.ActivationCache"),
    ("transformer_lens.FactoredMatrix", "FactoredMatrix", "anatomist.FactoredMatrix"),
    ("transformer_lens.hook_points", "HookPoint", "anatomist.HookPoint"),
    ("transformer_lens.hook_points", "LensHandle", "anatomist.LensHandle"),
    ("transformer_lens.HookedEncoder", "HookedEncoder", "anatomist.HookedEncoder"),
    ("transformer_lens.SVDInterpreter", "SVDInterpreter", "anatomist.SVDInterpreter"),
    ("transformer_lens.utils", "get_act_name", "anatomist.utils.get_act_name"),
    (
        "transformer_lens.past_key_value_caching",
        "HookedTransformerKeyValueCache",
        "anatomist.model.kv_cache.KVCache",
    ),
    (
        "transformer_lens.past_key_value_caching",
        "HookedTransformerKeyValueCacheEntry",
        "anatomist.model.kv_cache.KVCacheEntry",
    ),
    ("transformer_lens.cache.key_value_cache", "TransformerLensKeyValueCache", "anatomist.KVCache"),
    (
        "transformer_lens.cache.key_value_cache_entry",
        "TransformerLensKeyValueCacheEntry",
        "anatomist.model.kv_cache.KVCacheEntry",
    ),
    (
        "transformer_lens.components.mlps.can_be_used_as_mlp",
        "CanBeUsedAsMLP",
        "anatomist.model.mlp.CanBeUsedAsMLP",
    ),
    (
        "transformer_lens.loading_from_pretrained",
        "get_official_model_name",
        "anatomist.loading.names.get_official_model_name",
    ),
    (
        "transformer_lens.patching",
        "get_act_patch_resid_pre",
        "anatomist.patching.get_act_patch_resid_pre",
    ),
]


def test_every_classic_path_is_an_anatomist_object() -> None:
    checks = "\n".join(
        f"import {module}\n"
        f"from {module} import {name} as got\n"
        f"want = _resolve({anatomist!r})\n"
        f"assert got is want, ({module!r}, {name!r}, got, want)"
        for module, name, anatomist in CLASSIC_NAMES
    )
    prelude = textwrap.dedent(
        """
        import importlib
        import anatomist.compat

        def _resolve(dotted):
            module, _, attr = dotted.rpartition(".")
            try:
                return importlib.import_module(dotted)
            except ImportError:
                return getattr(importlib.import_module(module), attr)
        """
    )
    out = run_python(prelude + checks + "\nprint('ok')")
    assert out.startswith("ok")


def test_modules_keep_anatomist_identity_and_classes_stay_on_the_package() -> None:
    out = run_python(
        """
        import anatomist.compat
        import transformer_lens
        import transformer_lens.HookedTransformer  # the submodule, imported after the package
        import transformer_lens.utils as tl_utils
        import anatomist.utils
        from anatomist.model.mlp import MLP, GatedMLP
        from anatomist.model.moe import MoE
        from transformer_lens.components.mlps.can_be_used_as_mlp import CanBeUsedAsMLP

        # The class, not the module, is the package attribute, as in the classic package.
        assert isinstance(transformer_lens.HookedTransformer, type)
        assert transformer_lens.HookedTransformer.__name__ == "HookedTransformer"
        assert tl_utils is anatomist.utils
        assert anatomist.utils.__name__ == "anatomist.utils"  # not renamed by the alias
        assert anatomist.utils.__spec__.name == "anatomist.utils"
        assert all(issubclass(c, CanBeUsedAsMLP) for c in (MLP, GatedMLP, MoE))
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_unknown_classic_module_fails_with_a_clear_message() -> None:
    out = run_python(
        """
        import anatomist.compat
        try:
            import transformer_lens.model_bridge
        except ModuleNotFoundError as error:
            print(error.name, "|", error)
        """
    )
    name, message = out.split("|", 1)
    assert name.strip() == "transformer_lens.model_bridge"
    assert "no anatomist equivalent" in message and "docs/compat.md" in message


def fake_transformer_lens(root: Path) -> Path:
    """A stand-in for an installed transformer-lens 4.x: a package without HookedTransformer."""
    package = root / "site" / "transformer_lens"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("BRIDGE_ONLY = True\nVERSION = '4.0.0'\n")
    (package / "utils.py").write_text("REAL = True\n")
    return root / "site"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_an_installed_transformer_lens_is_shadowed_and_left_untouched(tmp_path: Path) -> None:
    site = fake_transformer_lens(tmp_path)
    before = snapshot(site)
    out = run_python(
        """
        import transformer_lens
        assert transformer_lens.BRIDGE_ONLY  # without compat, the installed package
        del transformer_lens
        import sys
        for name in [n for n in sys.modules if n.startswith("transformer_lens")]:
            del sys.modules[name]
        import anatomist.compat
        import transformer_lens, transformer_lens.utils
        from anatomist import HookedTransformer
        assert transformer_lens.HookedTransformer is HookedTransformer
        assert not hasattr(transformer_lens, "BRIDGE_ONLY")
        assert not hasattr(transformer_lens.utils, "REAL")
        print("ok")
        """,
        path=[str(site)],
    )
    assert out.strip() == "ok"
    assert snapshot(site) == before  # nothing on disk changed


def test_a_transformer_lens_imported_before_compat_is_replaced_with_a_warning(
    tmp_path: Path,
) -> None:
    site = fake_transformer_lens(tmp_path)
    out = run_python(
        """
        import warnings
        import transformer_lens.utils
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import anatomist.compat
        assert any("imported before anatomist.compat" in str(w.message) for w in caught), caught
        import transformer_lens
        import anatomist
        assert transformer_lens.HookedTransformer is anatomist.HookedTransformer
        assert transformer_lens.utils is anatomist.utils
        print("ok")
        """,
        path=[str(site)],
    )
    assert out.strip() == "ok"


def test_uninstall_restores_the_installed_package(tmp_path: Path) -> None:
    site = fake_transformer_lens(tmp_path)
    out = run_python(
        """
        import anatomist.compat
        import transformer_lens
        assert not hasattr(transformer_lens, "BRIDGE_ONLY")
        anatomist.compat.uninstall()
        import transformer_lens
        assert transformer_lens.BRIDGE_ONLY
        anatomist.compat.install()
        import transformer_lens
        assert not hasattr(transformer_lens, "BRIDGE_ONLY")
        print("ok")
        """,
        path=[str(site)],
    )
    assert out.strip() == "ok"


def test_python_m_anatomist_compat_runs_a_script_unchanged(tmp_path: Path) -> None:
    script = tmp_path / "classic.py"
    (tmp_path / "helper_mod.py").write_text("VALUE = 7\n")
    script.write_text(
        textwrap.dedent(
            """
            import sys
            import helper_mod  # the script's own folder is importable, as with `python script.py`
            from transformer_lens import HookedTransformer, HookedTransformerConfig
            cfg = HookedTransformerConfig(n_layers=1, d_model=8, n_ctx=4, d_head=4, d_vocab=10,
                                          act_fn="relu")
            model = HookedTransformer(cfg)
            print(type(model).__module__, sys.argv[1:], helper_mod.VALUE, __name__)
            """
        )
    )
    out = run_python("", "-m", "anatomist.compat", str(script), "a", "--b")
    assert out.split() == ["anatomist.model.transformer", "['a',", "'--b']", "7", "__main__"]


def test_python_m_anatomist_compat_runs_a_module(tmp_path: Path) -> None:
    (tmp_path / "classic_module.py").write_text(
        "import sys\nimport transformer_lens.utils as u\nprint(u.__name__, sys.argv[1:])\n"
    )
    out = run_python(
        "", "-m", "anatomist.compat", "-m", "classic_module", "x", path=[str(tmp_path)]
    )
    assert out.split() == ["anatomist.utils", "['x']"]


@pytest.mark.parametrize("argv", [[], ["-m"]])
def test_python_m_anatomist_compat_usage(argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "anatomist.compat", *argv],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert done.returncode == 2 and "usage: python -m anatomist.compat" in done.stderr


def test_a_classic_training_script_runs_on_anatomist() -> None:
    out = run_python(
        """
        import torch
        import anatomist.compat
        from transformer_lens import HookedTransformer, HookedTransformerConfig
        from transformer_lens.train import HookedTransformerTrainConfig, train

        cfg = HookedTransformerConfig(n_layers=1, d_model=16, d_head=4, n_ctx=8, d_vocab=10,
                                      act_fn="relu", seed=0)
        model = HookedTransformer(cfg)
        tokens = torch.randint(0, 10, (32, 8), generator=torch.Generator().manual_seed(0))
        config = HookedTransformerTrainConfig(num_epochs=3, batch_size=8, lr=1e-2, seed=0,
                                              print_every=None, progress=False)
        print(type(train(model, config, tokens)).__module__)
        """
    )
    assert out.strip() == "anatomist.model.transformer"
