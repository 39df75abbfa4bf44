"""Hook points: named places in a model where activations can be read, edited or replaced.

A `HookPoint` is an identity module placed on an activation. With no hook attached it returns its
input untouched and costs one module call. `HookedRootModule` gives any `nn.Module` tree the classic
hook API: add hooks by name or predicate, forward or backward, permanent or temporary, nested
`hooks()` contexts, `run_with_hooks` and `run_with_cache`.

A hook function has the signature ``fn(activation, hook) -> Tensor | None``; returning a tensor
replaces the activation (it must keep the activation's shape, dtype and device).

Threads: hooks added through `hooks()`, `run_with_hooks` and `run_with_cache` belong to the thread
that added them and fire only in forward passes that thread runs (and in the backward passes of
what those forwards computed), so several threads can serve one model with their own hooks.
Hooks added with `add_hook` / `add_perma_hook` fire in every thread. Context levels are counted
per thread.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.modules.module import (
    _global_backward_hooks,
    _global_backward_pre_hooks,
    _global_forward_hooks,
    _global_forward_pre_hooks,
)
from torch.utils.hooks import RemovableHandle

from anatomist.model.state_dict import AtomicLoadMixin

HookFunction = Callable[..., Any]
NamesFilter = None | str | Sequence[str] | Callable[[str], bool]
Direction = Literal["fwd", "bwd", "both"]
DeviceType = torch.device | None


class HookShapeError(ValueError):
    """A hook returned a tensor whose shape differs from the activation it replaces."""


class UnknownHookError(KeyError):
    """A hook name matched no hook point of the model."""

    def __str__(self) -> str:  # KeyError repr-quotes its message; show it plainly.
        return str(self.args[0])


class HookDisabledError(ValueError):
    """An opt-in hook point was asked for while the option that makes it fire is off."""


class HookDtypeError(TypeError):
    """A hook returned a tensor whose dtype differs from the activation (or gradient) it
    replaces. Replacements are never cast: a float64 or int64 tensor would either spread through
    the rest of the forward pass or fail deep in a matmul."""


class HookDeviceError(TypeError):
    """A hook returned a tensor on another device than the activation (or gradient) it
    replaces."""


# Adding and removing hooks rebuild a hook point's lists of handles; threads that add or remove
# hooks at the same time take turns here so that no handle is lost. Forward passes never take it.
_HOOKS_LOCK = threading.RLock()


@dataclass
class LensHandle:
    """A hook attached to a `HookPoint`, with the bookkeeping needed to remove it selectively.

    The first four fields are the classic ones (``hook`` is torch's handle, ``user_hook`` the
    function as given to ``add_hook``)."""

    hook: RemovableHandle
    is_permanent: bool = False
    context_level: int | None = None
    user_hook: HookFunction | None = None
    direction: Literal["fwd", "bwd"] = "fwd"
    thread: int | None = None  # the thread the hook fires in (threading.get_ident()); None: all

    def fires_here(self) -> bool:
        """Whether the hook fires in the calling thread."""
        return self.thread is None or self.thread == threading.get_ident()

    def remove(self) -> None:
        self.hook.remove()


# anatomist's first name for the same class.
HookHandle = LensHandle


class _HasHooks:
    """``hook_point.has_hooks``: true when a hook would fire in the calling thread's forward
    pass (``if hook_point.has_hooks:``), and callable with the classic filters
    (``hook_point.has_hooks(dir="fwd", including_permanent=False, level=2)``)."""

    __slots__ = ("_point",)

    def __init__(self, point: HookPoint) -> None:
        self._point = point

    def __bool__(self) -> bool:
        return self._point.hooked_here()

    def __call__(
        self,
        dir: Direction = "both",
        including_permanent: bool = True,
        level: int | None = None,
    ) -> bool:
        """Whether a hook in direction `dir` fires in the calling thread, counting permanent
        hooks only with `including_permanent` and, with `level`, only hooks of that `hooks()`
        context level."""
        entries = _entries(self._point, dir)
        return any(
            e.fires_here()
            and (including_permanent or not e.is_permanent)
            and (level is None or e.context_level == level)
            for e in entries
        )

    def __eq__(self, other: object) -> bool:
        return bool(self) == other if isinstance(other, bool) else NotImplemented

    def __hash__(self) -> int:
        return hash(bool(self))

    def __repr__(self) -> str:
        return repr(bool(self))


def _entries(point: HookPoint, dir: str) -> list[LensHandle]:
    if dir not in ("fwd", "bwd", "both"):
        raise ValueError(f"Direction must be 'fwd', 'bwd' or 'both', got {dir!r}.")
    return (point.fwd_hooks if dir != "bwd" else []) + (point.bwd_hooks if dir != "fwd" else [])


class HookPoint(nn.Module):
    """An identity module that marks a named activation.

    `name` is set by the root module (`HookedRootModule.setup`). `opt_in`, when set, names the config
    flag (e.g. ``"use_attn_result"``) without which this hook point never fires.
    """

    # run_with_cache's savers, (thread, fn(tensor, hook)): they store this point's final
    # activation (after every hook) without torch's hook machinery, which costs ~10 us per hook
    # point to add, call and remove. Replaced, never mutated, so a forward pass in another
    # thread can read it while one thread attaches or removes its own. A class default, so a
    # subclass that skips this __init__ still works.
    _savers: tuple[tuple[int, HookFunction], ...] = ()

    def __init__(self, opt_in: str | None = None) -> None:
        super().__init__()
        self.name: str | None = None
        self.opt_in = opt_in
        self.ctx: dict[Any, Any] = {}
        self.fwd_hooks: list[LensHandle] = []
        self.bwd_hooks: list[LensHandle] = []

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        # Most hook points have no hook at a given forward: skip nn.Module's call machinery
        # (~3 us each, ~20 per layer) unless some hook, ours or a global torch one, would run.
        if (
            self._forward_hooks
            or self._forward_pre_hooks
            or self._backward_hooks
            or self._backward_pre_hooks
            or _global_forward_hooks
            or _global_forward_pre_hooks
            or _global_backward_hooks
            or _global_backward_pre_hooks
            or args
            or kwargs
        ):
            x = super().__call__(x, *args, **kwargs)
        if self._savers:
            thread = threading.get_ident()
            for owner, save in self._savers:
                if owner == thread:
                    save(x, self)
        return x

    def forward(self, x: Tensor) -> Tensor:
        if self.bwd_hooks and isinstance(x, Tensor) and x.requires_grad:
            # Give this hook point its own autograd node. Consecutive hook points often pass the
            # very same tensor along (``blocks.0.hook_resid_post`` -> ``blocks.1.hook_resid_pre``);
            # gradient hooks registered on one shared tensor would run in forward order, so a
            # downstream hook's replacement gradient would not reach the upstream hook. With an
            # alias per hook point they run in backward order, like the activations' own grads.
            return x.view_as(x)
        return x

    def hooked_here(self) -> bool:
        """Whether any hook (ours or a raw torch forward hook) would see this activation in a
        forward pass of the calling thread: ``bool(has_hooks)``, without building the callable."""
        if self._savers:
            thread = threading.get_ident()
            if any(owner == thread for owner, _ in self._savers):
                return True
        if not self._forward_hooks:
            return False
        if len(self._forward_hooks) > len(self.fwd_hooks) + len(self.bwd_hooks):
            return True  # a raw torch hook, registered without add_hook
        return any(e.fires_here() for e in self.fwd_hooks) or any(
            e.fires_here() for e in self.bwd_hooks
        )

    @property
    def has_hooks(self) -> _HasHooks:
        """Truthy when any hook (ours or a raw torch forward hook) would see this activation in a
        forward pass of the calling thread (another thread's hooks do not count: they must not
        switch this thread to the explicit attention or norm paths). Call it with the classic
        filters: ``has_hooks(dir="both", including_permanent=True, level=None)``."""
        return _HasHooks(self)

    def add_hook(
        self,
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
        thread: int | None = None,
    ) -> LensHandle:
        """Attach `hook` (``fn(tensor, hook=self)``) to this point, forward or backward.

        A forward hook that returns a tensor replaces the activation; a backward hook that returns
        a tensor replaces the gradient flowing back through it. Hooks run in the order they were
        added; `prepend` puts this one first. With `thread` (an id from ``threading.get_ident()``)
        the hook fires only in forward passes run by that thread.
        """
        if dir == "fwd":
            wrapper = self._forward_wrapper(hook, thread)
        elif dir == "bwd":
            wrapper = self._backward_wrapper(hook, thread)
        else:
            raise ValueError(f"Hook direction must be 'fwd' or 'bwd', got {dir!r}.")
        with _HOOKS_LOCK:
            handle = self.register_forward_hook(wrapper, prepend=prepend)
            entry = LensHandle(handle, is_permanent, level, user_hook=hook)
            entry.direction, entry.thread = dir, thread
            entries = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
            if prepend:
                entries.insert(0, entry)
            else:
                entries.append(entry)
        return entry

    def add_perma_hook(self, hook: HookFunction, dir: Literal["fwd", "bwd"] = "fwd") -> LensHandle:
        """`add_hook` with ``is_permanent=True``: the hook stays through `remove_hooks` and
        ``reset_hooks`` unless they are called with ``including_permanent=True``."""
        return self.add_hook(hook, dir=dir, is_permanent=True)

    def _forward_wrapper(self, hook: HookFunction, thread: int | None) -> Callable[..., Any]:
        def run(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> Tensor | None:
            if thread is not None and thread != threading.get_ident():
                return None  # another thread's hook
            result = hook(output, hook=self)
            if result is None:
                return None
            self._check_replacement(hook, result, output, "activation")
            return result

        return run

    def _backward_wrapper(self, hook: HookFunction, thread: int | None) -> Callable[..., Any]:
        # Register a tensor hook on the activation as it passes: it receives the gradient of the
        # loss with respect to exactly this activation (torch's module backward hooks see module
        # inputs/outputs and break on in-place edits; a tensor hook does not). The thread that
        # ran the forward decides, so the backward pass may run anywhere.
        def run(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            if not output.requires_grad:
                return
            if thread is not None and thread != threading.get_ident():
                return

            def on_grad(grad: Tensor) -> Tensor | None:
                result = hook(grad, hook=self)
                if result is None:
                    return None
                self._check_replacement(hook, result, grad, "gradient")
                return result

            output.register_hook(on_grad)

        return run

    def _check_replacement(self, hook: HookFunction, new: Any, old: Tensor, what: str) -> None:
        """A replacement must be a tensor of the replaced one's shape, dtype and device. Runs
        only when a hook returns something, so hooks that return None cost nothing here."""
        fn = getattr(hook, "__qualname__", None) or repr(hook)
        if not isinstance(new, Tensor):
            raise TypeError(
                f"Hook {fn} on {self.name!r} returned {type(new).__name__}; a hook must return a "
                f"tensor (to replace the {what}) or None."
            )
        if new.shape != old.shape:
            raise HookShapeError(
                f"Hook {fn} on {self.name!r} returned shape {tuple(new.shape)} but the {what} "
                f"has shape {tuple(old.shape)}; a replacement must keep the shape."
            )
        if new.dtype != old.dtype:
            raise HookDtypeError(
                f"Hook {fn} on {self.name!r} returned a {new.dtype} tensor but the {what} is "
                f"{old.dtype}; a replacement must keep the dtype (it is not cast for you). "
                f"Return `replacement.to({what}.dtype)`."
            )
        if new.device != old.device:
            raise HookDeviceError(
                f"Hook {fn} on {self.name!r} returned a tensor on {new.device} but the {what} is "
                f"on {old.device}; a replacement must stay on the {what}'s device. Return "
                f"`replacement.to({what}.device)`."
            )

    def remove_hooks(
        self,
        dir: Direction = "fwd",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove this point's hooks in direction `dir` ("fwd", "bwd" or "both").

        Permanent hooks stay unless `including_permanent`; with `level`, only hooks added at that
        `hooks()` context level are removed: the calling thread's level (levels are counted per
        thread), and hooks of every thread added with that `level` by hand.
        """
        if dir not in ("fwd", "bwd", "both"):
            raise ValueError(f"Direction must be 'fwd', 'bwd' or 'both', got {dir!r}.")

        def keep(entry: LensHandle) -> bool:
            if entry.is_permanent and not including_permanent:
                return True
            if level is not None and (entry.context_level != level or not entry.fires_here()):
                return True
            entry.remove()
            return False

        if not self.fwd_hooks and not self.bwd_hooks:
            return  # most hook points, when a run's hooks are removed from all of them
        with _HOOKS_LOCK:
            # In place: assigning a new list would go through nn.Module.__setattr__ (~3 us).
            if dir in ("fwd", "both"):
                self.fwd_hooks[:] = [e for e in self.fwd_hooks if keep(e)]
            if dir in ("bwd", "both"):
                self.bwd_hooks[:] = [e for e in self.bwd_hooks if keep(e)]

    def clear_context(self) -> None:
        self.ctx.clear()

    def layer(self) -> int:
        """The block index in this hook's name (``blocks.3.attn.hook_q`` -> 3,
        ``decoder.1.hook_resid_pre`` -> 1)."""
        if self.name is None:
            raise ValueError("This HookPoint has no name yet; call setup() on the root module.")
        parts = self.name.split(".")
        if len(parts) < 2 or not parts[1].isdigit():
            raise ValueError(f"Hook {self.name!r} does not belong to a block.")
        return int(parts[1])

    def __repr__(self) -> str:
        bits = [] if self.name is None else [f"name={self.name!r}"]
        bits += [
            f"{len(hooks)} {d}"
            for d, hooks in (("fwd", self.fwd_hooks), ("bwd", self.bwd_hooks))
            if hooks
        ]
        return f"HookPoint({', '.join(bits)})"


def is_hooked(point: nn.Module) -> bool:
    """Whether the module at a hook point's place must see its activation: a `HookPoint` with a
    hook that fires in this thread, or any other module put in its place (SAELens swaps a hook
    point for an SAE wrapper). Models skip computing an activation nobody reads only when this
    is False."""
    return point.hooked_here() if isinstance(point, HookPoint) else True


class HookIntrospectionMixin:
    """`list_hooks` for any class with a ``hook_dict`` (an attribute or a property)."""

    def list_hooks(
        self,
        name_filter: NamesFilter = None,
        dir: Direction = "both",
        including_permanent: bool = True,
    ) -> dict[str, list[LensHandle]]:
        """The hooks attached to each hook point that `name_filter` selects (None: all; a name,
        names, or a predicate), by hook name; hook points without hooks are left out. Each
        `LensHandle` holds the function as given (``user_hook``). Hooks of every thread."""
        if name_filter is None:
            selected: Callable[[str], bool] = lambda name: True  # noqa: E731
        elif callable(name_filter):
            selected = name_filter
        elif isinstance(name_filter, str):
            selected = name_filter.__eq__
        else:
            selected = set(name_filter).__contains__
        hook_dict: dict[str, HookPoint] = getattr(self, "hook_dict")  # noqa: B009
        found = {}
        for name, point in hook_dict.items():
            if not selected(name):
                continue
            handles = [e for e in _entries(point, dir) if including_permanent or not e.is_permanent]
            if handles:
                found[name] = handles
        return found


class HookedRootModule(HookIntrospectionMixin, AtomicLoadMixin, nn.Module):
    """Base class for models with hook points. Call `setup()` at the end of ``__init__``.

    ``load_state_dict`` is all-or-nothing (`AtomicLoadMixin`)."""

    hook_dict: dict[str, HookPoint]
    mod_dict: dict[str, nn.Module]

    def __init__(self, *args: Any) -> None:
        super().__init__()
        # Set while caching hooks made by get_caching_hooks / add_caching_hooks may be attached;
        # reset_hooks clears it (the classic flag, read by some subclasses).
        self.is_caching = False
        # The nesting depth of `hooks()` blocks, per thread id: two threads nesting blocks on one
        # model must not share (and remove) each other's levels.
        self._context_levels: dict[int, int] = {}
        self.hook_dict = {}
        self.mod_dict = {}

    @property
    def context_level(self) -> int:
        """How many `hooks()` blocks the calling thread is inside."""
        return self._context_levels.get(threading.get_ident(), 0)

    @context_level.setter
    def context_level(self, level: int) -> None:
        # Code written for the classic class sets it (to 0, in its own __init__).
        self._context_levels[threading.get_ident()] = level

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # nn.Module answers a property that raised AttributeError with a generic "has no
            # attribute" message; run the property again so its own explanation surfaces.
            prop = getattr(type(self), name, None)
            if isinstance(prop, property) and prop.fget is not None:
                prop.fget(self)
            raise

    def setup(self) -> None:
        """Name every submodule after its path and index modules (`mod_dict`) and hook points
        (`hook_dict`) by name. Call it again after replacing submodules (a hook point swapped for
        a module holding hook points of its own, as SAE wrappers do) to rebuild both."""
        self.mod_dict = {}
        self.hook_dict = {}
        for name, module in self.named_modules():
            if name == "":
                continue
            module.name = name  # type: ignore[assignment]
            self.mod_dict[name] = module
            if isinstance(module, HookPoint):
                self.hook_dict[name] = module

    def hook_points(self) -> list[HookPoint]:
        """Every hook point, in `hook_dict` order."""
        return list(self.hook_dict.values())

    # --- which hooks are live -------------------------------------------------------------------
    def _opt_in_enabled(self, hook_point: HookPoint) -> bool:
        """Whether an opt-in hook point fires under the current configuration."""
        if hook_point.opt_in is None:
            return True
        cfg = getattr(self, "cfg", None)
        return bool(getattr(cfg, hook_point.opt_in, False))

    def _disabled_message(self, hook_point: HookPoint) -> str:
        flag = hook_point.opt_in
        return (
            f"Hook {hook_point.name!r} is opt-in and currently off, so it never fires. Turn it on "
            f"with model.set_{flag}(True) (or cfg.{flag} = True) before adding hooks or caching."
        )

    def _unknown_hook(self, name: str) -> UnknownHookError:
        from anatomist.utils import get_act_name

        close = difflib.get_close_matches(name, list(self.hook_dict), n=5, cutoff=0.5)
        try:  # a shorthand ("k6", "scale4ln1") names a hook point: suggest its full name first
            full = get_act_name(name)
        except Exception:
            full = name
        if full != name and full in self.hook_dict:
            close = [full, *(c for c in close if c != full)][:5]
        hint = f" Closest hook names: {', '.join(close)}." if close else ""
        return UnknownHookError(
            f"No hook point named {name!r}.{hint} model.hook_dict lists them all; "
            f"utils.get_act_name builds names from shorthands."
        )

    def resolve_hook_names(self, names_filter: NamesFilter, strict: bool = True) -> list[str]:
        """The hook point names selected by `names_filter` (None, a name, names, or predicate).

        Explicitly named hooks must exist and be enabled (errors otherwise); predicates and None
        silently skip opt-in hooks that are off.
        """
        if names_filter is None:
            return [n for n, hp in self.hook_dict.items() if self._opt_in_enabled(hp)]
        if isinstance(names_filter, str):
            names_filter = [names_filter]
        if callable(names_filter):
            predicate = names_filter
            return [
                n for n, hp in self.hook_dict.items() if self._opt_in_enabled(hp) and predicate(n)
            ]
        if not isinstance(names_filter, Iterable):
            raise TypeError(
                "names_filter must be None, a hook name, a list of hook names or a predicate "
                f"fn(name) -> bool; got {type(names_filter).__name__} {names_filter!r}."
            )
        names = list(names_filter)
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"names_filter entries must be hook names (str), got {n!r}.")
            if n not in self.hook_dict:
                raise self._unknown_hook(n)
            if strict and not self._opt_in_enabled(self.hook_dict[n]):
                raise HookDisabledError(self._disabled_message(self.hook_dict[n]))
        return names

    # --- adding and removing hooks --------------------------------------------------------------
    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Attach `hook` to the hook point `name`, or to every hook point whose name passes it,
        each through `check_and_add_hook`.

        The hook fires in every thread's forward passes (`hooks()` and `run_with_hooks` add hooks
        for the calling thread only)."""
        for hook_name in self.resolve_hook_names(name):
            self.check_and_add_hook(
                self.hook_dict[hook_name],
                hook_name,
                hook,
                dir=dir,
                is_permanent=is_permanent,
                level=level,
                prepend=prepend,
            )

    def check_and_add_hook(
        self,
        hook_point: HookPoint,
        hook_point_name: str,
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        level: int | None = None,
        prepend: bool = False,
    ) -> None:
        """Run `check_hooks_to_add`, then attach `hook` to `hook_point` (`add_hook` calls this
        for every hook point it selects; subclasses override it to attach hooks differently)."""
        self.check_hooks_to_add(
            hook_point, hook_point_name, hook, dir=dir, is_permanent=is_permanent, prepend=prepend
        )
        hook_point.add_hook(hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend)

    def check_hooks_to_add(
        self,
        hook_point: HookPoint,
        hook_point_name: str,
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> None:
        """Refuse a hook by raising; runs before every hook `add_hook`, `hooks()`,
        `run_with_hooks` and `run_with_cache` attach. Accepts everything; override to check."""

    def add_perma_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFunction,
        dir: Literal["fwd", "bwd"] = "fwd",
    ) -> None:
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def reset_hooks(
        self,
        clear_contexts: bool = True,
        direction: Direction = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove hooks from every hook point (permanent ones only when asked; with `level`, only
        those of that `hooks()` level) and, with `clear_contexts`, empty every ``hook.ctx``."""
        if clear_contexts:
            self.clear_contexts()
        self.remove_all_hook_fns(direction, including_permanent, level)
        self.is_caching = False

    def remove_all_hook_fns(
        self,
        direction: Direction = "both",
        including_permanent: bool = False,
        level: int | None = None,
    ) -> None:
        """Remove hooks from every hook point, leaving contexts alone (see `reset_hooks`)."""
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent, level=level)

    def clear_contexts(self) -> None:
        for hp in self.hook_dict.values():
            hp.clear_context()

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFunction]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFunction]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
    ) -> Iterator[HookedRootModule]:
        """Add hooks for the duration of a ``with`` block; nested blocks stack.

        The hooks fire only in forward passes run by the calling thread (and in the backward
        passes of what those computed). Leaving a block removes only the hooks that block added
        (unless `reset_hooks_end` is False, in which case they stay until removed by hand).
        """
        # Resolve every name first: a bad one fails before anything is attached.
        resolved = [
            (self.resolve_hook_names(name), fn, direction)
            for direction, pairs in (("fwd", fwd_hooks), ("bwd", bwd_hooks))
            for name, fn in _hook_pairs(pairs, f"{direction}_hooks")
        ]
        for names, fn, direction in resolved:
            for name in names:
                self.check_hooks_to_add(self.hook_dict[name], name, fn, dir=direction)  # type: ignore[arg-type]
        thread = threading.get_ident()
        level = self._context_levels.get(thread, 0) + 1
        self._context_levels[thread] = level
        # Hooks that outlive the block are not tied to its level: a later sibling block reuses
        # the level number and must not remove them when it exits.
        hook_level = level if reset_hooks_end else None
        try:
            for names, fn, direction in resolved:
                for name in names:
                    self.hook_dict[name].add_hook(
                        fn,
                        dir=direction,  # type: ignore[arg-type]
                        level=hook_level,
                        thread=thread,
                    )
            yield self
        finally:
            if reset_hooks_end:
                self.reset_hooks(clear_contexts, including_permanent=False, level=level)
            if level == 1:
                del self._context_levels[thread]
            else:
                self._context_levels[thread] = level - 1

    def run_with_hooks(
        self,
        *model_args: Any,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFunction]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFunction]] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **model_kwargs: Any,
    ) -> Any:
        """Run the model once with the given hooks, then remove them.

        Backward hooks attach to the activations of this run as they are computed, so they fire
        when you call ``.backward()`` on this run's result, even though they are removed from the
        model when the call returns (later runs do not see them).
        """
        with self.hooks(fwd_hooks, bwd_hooks, reset_hooks_end, clear_contexts):
            return self(*model_args, **model_kwargs)

    # --- caching ---------------------------------------------------------------------------------
    def get_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, Tensor] | None = None,
        pos_slice: Any = None,
    ) -> tuple[dict[str, Tensor], list[tuple[str, HookFunction]], list[tuple[str, HookFunction]]]:
        """Hooks that store (detached, optionally moved and sliced) activations in `cache`."""
        from anatomist.utils import Slice

        store: dict[str, Tensor] = {} if cache is None else cache
        names = self.resolve_hook_names(names_filter)
        slicer = None if pos_slice is None else Slice(pos_slice)

        def make_saver(key: str) -> HookFunction:
            if slicer is None and not remove_batch_dim and device is None:

                def save_view(tensor: Tensor, hook: HookPoint) -> None:
                    # A view: nothing later writes into an activation in place, so no copy.
                    store[key] = tensor.detach()

                return save_view

            def save(tensor: Tensor, hook: HookPoint) -> None:
                value = tensor.detach()
                if slicer is not None:
                    position_dim = _position_dim(key, value)
                    if position_dim is not None:
                        value = slicer.apply(value, dim=position_dim)
                if remove_batch_dim:
                    value = value[0]
                if device is not None:
                    value = value.to(device)
                store[key] = value

            return save

        fwd = [(n, make_saver(n)) for n in names]
        bwd = [(n, make_saver(n + "_grad")) for n in names] if incl_bwd else []
        self.is_caching = True
        return store, fwd, bwd

    def add_caching_hooks(
        self,
        names_filter: NamesFilter = None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        cache: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Attach caching hooks (`get_caching_hooks`) to the model, in every thread, until
        ``reset_hooks()``; returns the dict that every later forward (and, with `incl_bwd`,
        backward) pass fills. Runs nothing: `run_with_cache` is the one-call way."""
        store, fwd, bwd = self.get_caching_hooks(
            names_filter, incl_bwd, device, remove_batch_dim, cache
        )
        for direction, pairs in (("fwd", fwd), ("bwd", bwd)):
            for name, fn in pairs:
                self.add_hook(name, fn, dir=direction)  # type: ignore[arg-type]
        return store

    def cache_all(
        self,
        cache: dict[str, Tensor] | None,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
    ) -> dict[str, Tensor]:
        """Deprecated (as in the classic library): ``add_caching_hooks(None, ...)``."""
        logging.warning("cache_all is deprecated: use add_caching_hooks or run_with_cache.")
        return self.add_caching_hooks(None, incl_bwd, device, remove_batch_dim, cache)

    def cache_some(
        self,
        cache: dict[str, Tensor] | None,
        names: NamesFilter,
        incl_bwd: bool = False,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
    ) -> dict[str, Tensor]:
        """Deprecated (as in the classic library): ``add_caching_hooks(names, ...)``."""
        logging.warning("cache_some is deprecated: use add_caching_hooks or run_with_cache.")
        return self.add_caching_hooks(names, incl_bwd, device, remove_batch_dim, cache)

    def run_with_cache(
        self,
        *model_args: Any,
        names_filter: NamesFilter = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice: Any = None,
        return_cache_object: bool = True,
        **model_kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run the model and return ``(output, cache)`` of the activations `names_filter` selects.

        With ``incl_bwd=True`` the output must be a scalar (e.g. ``return_type="loss"``); its
        backward pass runs here and gradients are stored under ``name + "_grad"``.
        """
        store, fwd, bwd = self.get_caching_hooks(
            names_filter, incl_bwd, device, remove_batch_dim, pos_slice=pos_slice
        )
        # Forward savers that leave with this call are not torch hooks (see HookPoint._savers);
        # they still pass check_hooks_to_add, and run after every hook attached before them.
        savers, fwd = (fwd, []) if reset_hooks_end else ([], fwd)
        with self.hooks(fwd, bwd, reset_hooks_end, clear_contexts), self._saving(savers):
            output = self(*model_args, **model_kwargs)
            if incl_bwd:
                target = getattr(output, "loss", output)
                if not isinstance(target, Tensor) or target.numel() != 1:
                    raise ValueError(
                        "run_with_cache(incl_bwd=True) runs the backward pass from the model's "
                        "output, which must be a scalar: pass return_type='loss' (or 'both')."
                    )
                target.backward()
        if return_cache_object:
            return output, self._make_cache(store, has_batch_dim=not remove_batch_dim)
        return output, store

    @contextmanager
    def _saving(self, savers: list[tuple[str, HookFunction]]) -> Iterator[None]:
        """Attach `savers` (hook name, fn) for the calling thread for the duration of the block."""
        for name, fn in savers:
            self.check_hooks_to_add(self.hook_dict[name], name, fn, dir="fwd")
        thread = threading.get_ident()
        attached: list[tuple[HookPoint, tuple[int, HookFunction]]] = []
        try:
            with _HOOKS_LOCK:
                for name, fn in savers:
                    point, entry = self.hook_dict[name], (thread, fn)
                    object.__setattr__(point, "_savers", (*point._savers, entry))
                    attached.append((point, entry))
            yield
        finally:
            with _HOOKS_LOCK:
                for point, entry in attached:
                    kept = tuple(e for e in point._savers if e is not entry)
                    object.__setattr__(point, "_savers", kept)

    def _make_cache(self, store: dict[str, Tensor], has_batch_dim: bool) -> Any:
        from anatomist.cache import ActivationCache

        return ActivationCache(store, self, has_batch_dim=has_batch_dim)


def _hook_pairs(pairs: Any, argument: str) -> list[tuple[Any, HookFunction]]:
    """`pairs` as a list of ``(name or predicate, fn)``, refusing anything else by name before a
    hook is attached (a bad entry used to fail with 'not enough values to unpack', or in the
    middle of the forward pass when fn was not callable)."""
    if isinstance(pairs, tuple) and len(pairs) == 2 and callable(pairs[1]):
        raise TypeError(
            f"{argument} must be a list of (name, fn) pairs; got a single pair. Wrap it in a "
            f"list: {argument}=[(name, fn)]."
        )
    checked = []
    for entry in pairs:
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise TypeError(f"{argument} entries must be (name, fn) pairs, got {entry!r}.")
        name, fn = entry
        if not callable(fn):
            raise TypeError(
                f"{argument} entry for {name!r} has a {type(fn).__name__} where the hook function "
                "fn(activation, hook) belongs."
            )
        checked.append((name, fn))
    return checked


# Hooks whose tensors are [batch, head, query_pos, key_pos]: the position axis is the query axis.
_QK_HOOKS = ("hook_attn_scores", "hook_pattern")


def _position_dim(name: str, tensor: Tensor) -> int | None:
    """The position axis of a cached activation (before any batch-dim removal); None for
    activations without one (a mixture-of-experts expert sees only its routed tokens)."""
    base = name.removesuffix("_grad")
    if ".experts." in base:
        return None
    if base.endswith(_QK_HOOKS):
        return 2
    return 1 if tensor.dim() > 1 else 0
