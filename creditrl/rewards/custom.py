"""User-defined reward functions named in the recipe, checked at start-up.

    reward:
      fns:
        - {name: custom, function: my_rewards.py:brevity, kwargs: {target: 50}}     # a local file
        - {name: custom, function: my_pkg.rewards:judge, weight: 0.5}              # an importable module
        - {name: custom, function: trl_rewards.py:accuracy_reward}                 # a TRL-style batch function

Three signatures are accepted:

    def brevity(sample, target):           # first parameter named `sample`: gets the RewardSample
    def judge(response, answer):           # parameters named after RewardSample fields get those fields
    def accuracy_reward(prompts, completions, solution, **kwargs):   # TRL GRPOTrainer's form, one call per batch

The per-sample forms return a number, a `RewardResult`, or a dict with "score" (and optionally "reason"); they run
in the reward executor (`reward.executor`) with `reward.timeout_s` per sample. Every dataset column of the
sample's row is in `sample.meta`.

The batch form (first two parameters `prompts` and `completions`, as in TRL's `GRPOTrainer`) is called once per
step with keyword arguments, in the trainer process, with `reward.timeout_s` x the number of samples as its
time limit:

- `prompts`: for chat data the prompt conversation (a list of {role, content} messages, system turn included),
  else the prompt text the model saw;
- `completions`: for chat data `[{"role": "assistant", "content": text}]` per sample, else the text;
- `completion_ids`: the response's token ids;
- every dataset column except `prompt`, `completion` and `completion_ids` as a list over the batch (TRL passes
  columns the same way), e.g. `solution`, `reward_model`, `extra_info`;
- the recipe's `kwargs`.

Only the names the function declares are passed unless it takes `**kwargs`. It returns one value per sample: a
number, or None where the reward does not apply to that sample (TRL's convention: it adds 0 to the weighted sum
and is not counted as a failure). A parameter that no column fills ends the run at the first step with a message
naming the function, the parameter and the columns. `trainer_state` (TRL's) is not provided.

Loading happens when the reward is built, so a missing file, an import error, a missing function, an async
function or a parameter that can not be filled is reported before training starts, naming the recipe's
`function:` value. Relative file paths are resolved against the working directory when the config is loaded.
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

from creditrl.rewards.base import REWARDS, RewardConfigError, RewardResult, RewardSample, as_result

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


def _parameters(fn: Callable, ref: str) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError) as e:
        raise RewardConfigError(f"custom reward '{ref}': can not read its signature ({e})") from None


def is_batch_function(fn: Callable, ref: str) -> bool:
    """TRL's form: the first two parameters are `prompts` and `completions`."""
    return [p.name for p in _parameters(fn, ref)[:2]] == ["prompts", "completions"]


def make_caller(fn: Callable, kwargs: dict[str, Any], ref: str) -> Callable[[RewardSample], Any]:
    """Adapt `fn` to `fn(sample)` (or, for a TRL-style batch function, a `BatchCaller`), checking now that
    every parameter can be filled."""
    params = _parameters(fn, ref)
    if is_batch_function(fn, ref):
        return BatchCaller(fn, kwargs, ref)
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


BATCH_PROVIDED = ("prompts", "completions", "completion_ids")
NOT_A_COLUMN = ("prompt", "completion", "completion_ids")  # row columns TRL does not pass on either


class BatchCaller:
    """A TRL-style `f(prompts, completions, **kwargs)` reward as a `BatchRewardFn` (see module docstring)."""

    def __init__(self, fn: Callable, kwargs: dict[str, Any], ref: str):
        params = _parameters(fn, ref)
        self.fn, self.kwargs, self.ref = fn, dict(kwargs), ref
        self.var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
        self.names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self.required = [p.name for p in params
                         if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                         and p.name not in BATCH_PROVIDED and p.name not in self.kwargs]
        if any(p.kind is p.POSITIONAL_ONLY for p in params):
            raise RewardConfigError(f"custom reward '{ref}': positional-only parameters can not be passed by name; "
                                    f"TRL-style functions are called with keyword arguments")
        unknown = [k for k in kwargs if k not in self.names and not self.var_kw]
        if unknown:
            raise RewardConfigError(f"custom reward '{ref}': kwargs {unknown} are not parameters of the function "
                                    f"(its parameters: {', '.join(p.name for p in params)})")

    def arguments(self, samples: list[RewardSample]) -> dict[str, Any]:
        """The keyword arguments of one call on `samples` (only the declared names unless `**kwargs`)."""
        args: dict[str, Any] = {
            "prompts": [s.prompt if s.messages is None else [dict(m) for m in s.messages] for s in samples],
            "completions": [s.response if s.messages is None else [{"role": "assistant", "content": s.response}]
                            for s in samples],
            "completion_ids": [s.response_ids for s in samples],
        }
        columns = [c for c in dict.fromkeys(k for s in samples for k in s.meta) if c not in NOT_A_COLUMN]
        for c in columns:
            args[c] = [s.meta.get(c) for s in samples]
        missing = [n for n in self.required if n not in args]
        if missing:
            raise RewardConfigError(
                f"custom reward '{self.ref}': parameter(s) {missing} are not dataset columns (columns: "
                f"{', '.join(columns) or '(none)'}) nor given in kwargs. Fix: rename them after a column, give them "
                f"a default, or set them in the recipe's kwargs: {{...}}")
        args.update(self.kwargs)
        return args if self.var_kw else {k: v for k, v in args.items() if k in self.names}

    def score_batch(self, samples: list[RewardSample]) -> list[RewardResult]:
        values = self.fn(**self.arguments(samples))
        if values is None or isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
            raise TypeError(f"a batch reward must return one value per sample (a list), got {type(values).__name__}")
        values = list(values.tolist() if hasattr(values, "tolist") else values)
        if len(values) != len(samples):
            raise ValueError(f"returned {len(values)} values for {len(samples)} samples")
        return [RewardResult(0.0, reason="not applicable (None)") if v is None else as_result(as_reward_result(v))
                for v in values]

    def __call__(self, sample: RewardSample) -> RewardResult | float:
        return self.score_batch([sample])[0]


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
    if isinstance(call, BatchCaller):
        return call

    def score(sample: RewardSample) -> RewardResult | float:
        return as_reward_result(call(sample))

    return score
