"""Token reducers: how a detector is made to run on fewer tokens, one module per method.

A reducer is a `ReducerSpec` (a registered name and its options), resolved here into a
`bavit.pipeline.Pipeline` subclass that the method's module defines, in the spirit of
ToMe's `tome/patch/timm.py`: the user's detector is wrapped, not rewritten, and each
module's docstring lists what it changes. Every reducer keeps static shapes (a fixed token
count per layer), so every one exports to every target. At keep 1.0 every reducer is the
dense detector: the sweep measures keep 1.0 once, as `none`.

The CLI (`--reducer bavit:dilate=3,bg_share=0.25`), the artifact cache key, the settings
--resume checks and every result row come from the spec: `ReducerSpec.label` names a
model, `ReducerSpec.options` holds every option with its value, defaults included.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bavit.pipeline import Pipeline

DENSE = "none"


@dataclass(frozen=True)
class ReducerSpec:
    name: str
    options: tuple[tuple[str, Any], ...] = ()   # every option of the method, sorted by name

    @property
    def label(self) -> str:
        """The name, with the options that differ from the method's defaults: what a row,
        a plot legend and a model id show."""
        defaults = dataclasses.asdict(reducer_class(self.name).Options())
        changed = [f"{k}={_fmt(v)}" for k, v in self.options if defaults.get(k) != v]
        return self.name + (":" + ",".join(changed) if changed else "")

    @property
    def text(self) -> str:
        """Every option spelled out: `parse(spec.text) == spec` (what build processes are sent)."""
        return self.name + (":" + ",".join(f"{k}={_fmt(v)}" for k, v in self.options) if self.options else "")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, **dict(self.options)}

    def typed_options(self) -> Any:
        return reducer_class(self.name).Options(**dict(self.options))


def _fmt(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}" if isinstance(value, float) else str(value)


def registry() -> dict[str, type["Pipeline"]]:
    """name -> the Pipeline class of that method. Imported on first use (the modules import torch)."""
    from bavit.pipeline import Pipeline
    from bavit.reducers import attention, bavit, random, shared, tome

    return {DENSE: Pipeline, "bavit": bavit.BavitPipeline, "bavit-shared": shared.SharedPipeline,
            "random": random.RandomPipeline, "attention": attention.AttentionPipeline, "tome": tome.TomePipeline}


NAMES = (DENSE, "bavit", "bavit-shared", "random", "attention", "tome")


def reducer_class(name: str) -> type["Pipeline"]:
    classes = registry()
    if name not in classes:
        raise ValueError(f"unknown reducer '{name}' (choose from {', '.join(NAMES)})")
    return classes[name]


def _convert(field: dataclasses.Field, text: str, where: str) -> Any:
    kind = field.type if isinstance(field.type, type) else {"int": int, "float": float, "bool": bool,
                                                             "str": str}.get(str(field.type), str)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return kind(text)
    except ValueError:
        raise ValueError(f"{where}: {field.name}={text!r} is not a {kind.__name__}") from None


def parse(text: str) -> ReducerSpec:
    """'name' or 'name:key=value,key=value' -> a validated spec with every option filled in.
    Errors are one line naming the reducer and the option."""
    text = text.strip()
    name, _, rest = text.partition(":")
    cls = reducer_class(name.strip())
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    given: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in fields:
            known = ", ".join(fields) or "none"
            raise ValueError(f"--reducer {text}: unknown option '{part}' for {name} (options: {known})")
        given[key] = _convert(fields[key], value.strip(), f"--reducer {text}")
    try:
        options = cls.Options(**given)   # the method's own checks (ranges) run here
    except (TypeError, ValueError) as err:
        raise ValueError(f"--reducer {text}: {err}") from None
    return ReducerSpec(name.strip(), tuple(sorted(dataclasses.asdict(options).items())))


def parse_list(text: str) -> list[ReducerSpec]:
    """'bavit:dilate=3,bg_share=0.25,random,tome:r=4' -> three specs: a comma-separated part
    'key=value' (no colon) is an option of the reducer before it."""
    groups: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" in part and ":" not in part and groups:
            groups[-1] += ("," if ":" in groups[-1] else ":") + part
        else:
            groups.append(part)
    if not groups:
        raise ValueError("--reducer: no reducer given")
    specs = [parse(g) for g in groups]
    labels = [s.label for s in specs]
    if len(set(labels)) < len(labels):
        raise ValueError(f"--reducer {text}: a reducer is listed twice")
    return specs


def dense() -> ReducerSpec:
    return parse(DENSE)


def build_pipeline(weights: str | None, reducer: Any = None, keep: float = 1.0, seed: int = 0,
                   detector: str = "detector", image_size: int | tuple[int, int] | None = None) -> Pipeline:
    """The pipeline a benchmark cell runs: the detector of `weights` (see `resolve_weights`)
    reduced by `reducer` (a bavit.reducers.ReducerSpec; None: dense) to `keep`."""
    from bavit.detectors import load_detector

    reducer = reducer or dense()
    model, source = load_detector(weights, detector, image_size, seed)
    return reducer_class(reducer.name).create(model, keep, reducer.typed_options(), source).eval()
