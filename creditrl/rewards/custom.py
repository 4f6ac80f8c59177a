"""User-defined reward functions named in the recipe, checked at start-up.

    reward:
      fns:
        - {name: custom, function: my_rewards.py:brevity, kwargs: {target: 50}}     # a local file
        - {name: custom, function: my_pkg.rewards:judge, weight: 0.5}              # an importable module

Two signatures are accepted:

    def brevity(sample, target):           # first parameter named `sample`: gets the RewardSample
    def judge(response, answer):           # parameters named after RewardSample fields get those fields

`kwargs` from the recipe are passed as keyword arguments. The function returns a number, a `RewardResult`,
or a dict with "score" (and optionally "reason"). Loading happens when the reward is built, so a missing file,
an import error, a missing function, an async function or a parameter that can not be filled is reported
before training starts, naming the recipe's `function:` value. Relative file paths are resolved against the
working directory when the config is loaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from creditrl.rewards.base import REWARDS, RewardConfigError, RewardResult, RewardSample

SAMPLE_FIELDS = [f.name for f in dataclasses.fields(RewardSample)]


def _load_file(path: str, ref: str):
    if not os.path.isfile(path):
        raise RewardConfigError(f"custom reward '{ref}': file {path} does not exist. Fix: correct the path in "
                                f"function: (relative paths are from the directory you run creditrl in)")
    digest = hashlib.sha1(path.encode()).hexdigest()[:8]
    name = f"creditrl_user_reward_{os.path.splitext(os.path.basename(path))[0]}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - any error in the user's file, reported with its origin
        raise RewardConfigError(f"custom reward '{ref}': importing {path} failed: {type(e).__name__}: {e}. Fix "
                                f"the file (it must import without errors).") from None
    sys.modules[name] = module
    return module


def load_function(ref: str) -> Callable:
    """The callable named by `module.path:function` or `file.py:function`."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise RewardConfigError(f"custom reward function {ref!r} must look like 'module.path:function' or "
                                "'path/to/file.py:function'")
    if target.endswith(".py"):
        module = _load_file(target, ref)
    else:
        try:
            module = importlib.import_module(target)
        except (Exception, SystemExit) as e:  # noqa: BLE001
            raise RewardConfigError(f"custom reward '{ref}': importing module {target} failed: "
                                    f"{type(e).__name__}: {e}. Fix: check the module name and that it is "
                                    f"importable from the working directory") from None
    fn = getattr(module, attr, None)
    if fn is None:
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise RewardConfigError(f"custom reward '{ref}': {target} has no attribute '{attr}'. "
                                f"Callables there: {', '.join(names) or '(none)'}")
    if not callable(fn):
        raise RewardConfigError(f"custom reward '{ref}': {attr} is a {type(fn).__name__}, not a function")
    if inspect.iscoroutinefunction(fn):
        raise RewardConfigError(f"custom reward '{ref}': async functions are not supported; use a plain def")
    return fn


def make_caller(fn: Callable, kwargs: dict[str, Any], ref: str) -> Callable[[RewardSample], Any]:
    """Adapt `fn` to `fn(sample)`, checking now that every parameter can be filled."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as e:
        raise RewardConfigError(f"custom reward '{ref}': can not read its signature ({e})") from None
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    unknown_kwargs = [k for k in kwargs if k not in named and not var_kw]
    if unknown_kwargs:
        raise RewardConfigError(f"custom reward '{ref}': kwargs {unknown_kwargs} are not parameters of the "
                                f"function (its parameters: {', '.join(p.name for p in params)})")
    if params and params[0].name == "sample":
        rest = [p for p in params[1:] if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        missing = [p.name for p in rest if p.name not in kwargs]
        if missing:
            raise RewardConfigError(f"custom reward '{ref}': parameters {missing} have no value; give them "
                                    "in kwargs: {...} or a default")
        return lambda sample: fn(sample, **kwargs)
    fields = [p.name for p in params if p.name in SAMPLE_FIELDS and p.name not in kwargs]
    required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    missing = [p.name for p in required if p.name not in SAMPLE_FIELDS and p.name not in kwargs]
    if missing or any(p.kind is p.POSITIONAL_ONLY for p in required):
        raise RewardConfigError(
            f"custom reward '{ref}': parameter(s) {missing or [p.name for p in required]} can not be filled. "
            f"Write `def f(sample, ...)`, or name parameters after RewardSample fields ({', '.join(SAMPLE_FIELDS)})"
            " and give any others in kwargs")
    return lambda sample: fn(**{name: getattr(sample, name) for name in fields}, **kwargs)


def as_reward_result(value: Any) -> RewardResult | float:
    if isinstance(value, dict):
        if "score" not in value:
            raise TypeError(f"a reward dict needs a 'score' key, got keys {sorted(value)}")
        return RewardResult(float(value["score"]), str(value.get("reason", "")))
    return value


@dataclass
class CustomRewardConfig:
    function: str = ""  # "module.path:function" or "path/to/file.py:function" (required)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments passed to the function

    def __post_init__(self):
        if not self.function:
            raise ValueError("custom reward: set function: 'module.path:function' or 'file.py:function'")
        target, sep, attr = self.function.rpartition(":")
        if sep and target.endswith(".py") and not os.path.isabs(target):
            self.function = f"{os.path.abspath(target)}:{attr}"  # workers may run from another directory


@REWARDS.register("custom", CustomRewardConfig)
def custom(cfg: CustomRewardConfig):
    """A user function named `module:function` or `file.py:function`, signature-checked at start-up."""
    call = make_caller(load_function(cfg.function), cfg.kwargs, cfg.function)

    def score(sample: RewardSample) -> RewardResult | float:
        return as_reward_result(call(sample))

    return score
