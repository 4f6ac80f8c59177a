"""Local data sources read with `datasets`: files and `save_to_disk` folders.

An entry of `data.train_files` / `data.eval_files` is one of

- a ``.jsonl`` (JSON Lines) or ``.json`` (JSON Lines or one JSON array) file, a ``.parquet`` file (e.g. verl's
  prepared datasets) or a ``.csv`` file with a header row (`datasets` infers the column types);
- a folder written by ``Dataset.save_to_disk`` (read with ``datasets.load_from_disk``);
- a folder written by ``DatasetDict.save_to_disk``: ``path/to/folder:split`` names the split (only when
  ``path/to/folder`` is an existing folder); without it, train files use the ``train`` split and eval files
  the ``test`` (else ``validation``) split, and anything else is an error listing the splits.

Nothing is downloaded: hub dataset names are not sources (save the dataset to disk first).
"""

from __future__ import annotations

import logging
from pathlib import Path

from creditrl.data.errors import DataError

log = logging.getLogger(__name__)

FILE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SPLITS_FOR = {"train": ("train",), "eval": ("test", "validation")}
SUPPORTED = ".jsonl, .json, .parquet or .csv file, or a folder written by Dataset/DatasetDict.save_to_disk"


def parse_source(spec: str) -> tuple[Path, str | None]:
    """(path, split): ``folder:split`` is split off only when ``folder`` is an existing folder and ``spec``
    itself does not exist."""
    p = Path(spec)
    if not p.exists() and ":" in spec:
        base, split = spec.rsplit(":", 1)
        if split and Path(base).is_dir():
            return Path(base), split
    return p, None


def folder_kind(path: Path) -> str | None:
    """'dict' for a DatasetDict.save_to_disk folder, 'dataset' for a Dataset.save_to_disk folder, else None."""
    if (path / "dataset_dict.json").is_file():
        return "dict"
    if (path / "state.json").is_file() and (path / "dataset_info.json").is_file():
        return "dataset"
    return None


def source_problem(spec: str, key: str = "data.train_files") -> str:
    """'' when `spec` looks readable (exists, supported, not empty), else the problem and its fix (cheap: the
    rows are not read)."""
    path, split = parse_source(spec)
    if not path.exists():
        return (f"data file not found: {path}. Fix: correct {key} in the recipe (relative paths are from the "
                f"directory you run creditrl in: {Path.cwd()}).")
    if path.is_dir():
        kind = folder_kind(path)
        if kind is None:
            return (f"{path} is not a file nor a folder written by Dataset.save_to_disk or DatasetDict.save_to_disk "
                    f"(it has no dataset_info.json + state.json, nor dataset_dict.json). Fix: name the data files in "
                    f"it in {key}, or give a {SUPPORTED}.")
        if split is not None and kind == "dataset":
            return (f"{path} holds one Dataset (no splits), so '{spec}' names a split it does not have. Fix: drop "
                    f"':{split}'.")
        return ""
    kind = FILE_KINDS.get(path.suffix.lower())
    if kind is None:
        return f"data file {path}: unsupported format '{path.suffix}'. Fix: use a {SUPPORTED}."
    if path.stat().st_size == 0:
        return f"data file {path} is empty: it needs at least one row. Fix: fill it in or remove it from {key}."
    return ""


def choose_split(splits: list[str], path: Path, split: str | None, role: str, spec: str, key: str) -> str:
    if split is not None:
        if split not in splits:
            raise DataError(f"data folder {path} has no split '{split}' ({key}: {spec}); its splits are: "
                            f"{', '.join(splits)}. Fix: {path}:<one of them>.")
        return split
    for name in SPLITS_FOR.get(role, ("train",)):
        if name in splits:
            return name
    want = " or ".join(repr(s) for s in SPLITS_FOR.get(role, ("train",)))
    raise DataError(f"data folder {path} ({key}) is a DatasetDict with the splits {', '.join(splits)}, none of which "
                    f"is {want}. Fix: name the split, e.g. {path}:{splits[0]}.")


def read_source(spec: str, role: str = "train", key: str | None = None):
    """(datasets.Dataset, name) of one source; `role` ('train' | 'eval') picks a DatasetDict's split; `name` is
    the file name (or ``folder`` / ``folder/split``) used in row keys ``<name>:<row index>``."""
    from datasets import DatasetDict, load_dataset, load_from_disk

    key = key or ("data.eval_files" if role == "eval" else "data.train_files")
    problem = source_problem(spec, key)
    if problem:
        raise DataError(problem)
    path, split = parse_source(spec)
    if path.is_dir():
        try:
            loaded = load_from_disk(str(path))
        except Exception as e:  # noqa: BLE001 - datasets raises many types for broken folders
            raise DataError(f"could not read data folder {path} with datasets.load_from_disk: {type(e).__name__}: "
                            f"{e}. Fix: write it again with save_to_disk.") from None
        name = path.name
        if isinstance(loaded, DatasetDict):
            split = choose_split(list(loaded), path, split, role, spec, key)
            ds, name = loaded[split], f"{path.name}/{split}"
            log.info("data: %s uses split '%s' of %s", key, split, path)
        else:
            ds = loaded
    else:
        kind = FILE_KINDS[path.suffix.lower()]
        try:
            ds = load_dataset(kind, data_files=str(path), split="train")
        except Exception as e:  # noqa: BLE001 - datasets raises many types for malformed files
            if kind == "csv" and _csv_has_no_rows(path):
                raise DataError(f"data file {path} is empty: it has a header line but no rows. Fix: add rows or "
                                f"remove it from {key}.") from None
            raise DataError(f"could not read data file {path} as {kind}: {type(e).__name__}: {e}") from None
        name = path.name
    if len(ds) == 0:
        raise DataError(f"data file {path} is empty: it needs at least one row")
    return ds, name


def _csv_has_no_rows(path: Path) -> bool:
    with open(path, encoding="utf-8", errors="replace") as fh:
        return sum(1 for line in fh if line.strip()) <= 1
