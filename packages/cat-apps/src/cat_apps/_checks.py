"""Checks that need no model: every front-end runs them before anything heavy is imported or loaded,
so a mistake costs a fraction of a second instead of minutes of loading, sampling and searching.

Two kinds of failure, two exit codes (see :mod:`cat_apps._cli`): :class:`UsageError` (exit 2) for
a command line that is wrong as written (a value out of range, a malformed value, options that
conflict); :class:`CLIError` (exit 1) for a command line that is well formed but names a file,
folder or model that does not fit (missing, unreadable, not UTF-8, a regular file where a
directory must go, a read-only parent, a length beyond what the model's config allows).
"""

from __future__ import annotations

import codecs
import os
import tempfile
from pathlib import Path
from typing import Any

from cat_apps._cli import CLIError, UsageError

#: calibration / text file kinds the readers accept (cat_core.calib reads the same)
TEXT_KINDS = (".txt", ".json", ".jsonl", ".csv", ".parquet")
_UTF8_CHUNK = 1 << 20


def at_least(value: int | None, minimum: int, opt: str) -> None:
    """``opt`` (as the user typed it) must be >= ``minimum``; None means 'not given'."""
    if value is not None and value < minimum:
        raise UsageError(f"{opt} must be >= {minimum}, got {value}")


def group_size(arg: str, opt: str = "--group-size") -> int | str:
    """'auto', -1 or a positive multiple of 32 (what QuantConfig accepts); whether it divides
    every layer is checked once the model's layers are known."""
    if arg == "auto":
        return "auto"
    try:
        g = int(arg)
    except ValueError:
        raise UsageError(f"{opt} must be an integer, -1 or 'auto', got {arg!r}") from None
    if g != -1 and (g <= 0 or g % 32):
        raise UsageError(f"{opt} must be -1, 'auto' or a positive multiple of 32 (group_size={g} is not)")
    return g


# ----------------------------------------------------------------------------- output paths


def _writable(folder: Path) -> bool:
    """Whether a directory can be created in ``folder``: tried, not inferred from mode bits
    (which root ignores and a read-only mount overrides)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cat-probe-", dir=folder))
    except OSError:
        return False
    return True


def _creatable_dir(path: Path, opt: str) -> None:
    """``path`` (absent) can be created: its nearest existing ancestor is a writable directory."""
    anc = path.parent
    while not anc.exists():
        if anc.is_symlink():  # a dangling link: mkdir would fail on it
            raise CLIError(f"{opt} {path}: {anc} is a broken symbolic link")
        anc = anc.parent
    if not anc.is_dir():
        raise CLIError(f"{opt} {path}: {anc} is a file, not a directory")
    if not _writable(anc):
        raise CLIError(f"{opt} {path}: cannot create it, {anc} is not writable")


def output_dir(arg: str, opt: str = "--out", *, overwrite: bool = False, replace: bool = True) -> Path:
    """A directory this command will write.

    ``replace``: the command writes a new directory beside it and renames it into place (so the
    parent must be writable, and an existing one is refused without ``overwrite``); else files
    are written into it, existing or not."""
    path = Path(arg).expanduser().absolute()
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise CLIError(f"{opt} {path} exists and is not a directory")
        if replace and not overwrite:
            raise CLIError(f"output directory {path} already exists; pass --overwrite to replace it")
        target = path.parent if replace else path
        if not _writable(target):
            raise CLIError(f"{opt} {path}: cannot write there, {target} is not writable")
        return path
    _creatable_dir(path, opt)
    return path


def output_file(arg: str, opt: str) -> Path:
    """A file this command will write (replacing an existing one)."""
    path = Path(arg).expanduser().absolute()
    if path.is_dir():
        raise CLIError(f"{opt} {path} is a directory; give a file name")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise CLIError(f"{opt} {path} is not writable")
        return path
    _creatable_dir(path, opt)
    return path


# ----------------------------------------------------------------------------- input text


def _utf8(path: Path, opt: str) -> None:
    """Decode the whole file incrementally (a 1 GB file costs ~1 s, a bad byte at its end is
    still found); the message names the file, the option and the byte offset."""
    dec = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_UTF8_CHUNK):
                try:
                    dec.decode(chunk)
                except UnicodeDecodeError as e:
                    raise CLIError(f"{opt} {path}: not UTF-8 text (byte {offset + e.start}: {e.reason})") from None
                offset += len(chunk)
            dec.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise CLIError(f"{opt} {path}: not UTF-8 text (truncated character at its end: {e.reason})") from None
    except OSError as e:
        raise CLIError(f"{opt} {path}: cannot read it ({e.strerror or e})") from None


def _readable_file(path: Path, opt: str, plain_text_fallback: bool = False) -> None:
    suffix = path.suffix.lower()
    if plain_text_fallback and suffix not in TEXT_KINDS:
        suffix = ".txt"  # read as plain text whatever its name
    if suffix not in TEXT_KINDS:
        raise CLIError(f"{opt} {path}: unsupported file kind {suffix or '(no suffix)'!r}; "
                       f"expected one of {', '.join(TEXT_KINDS)}")
    if not os.access(path, os.R_OK):
        raise CLIError(f"{opt} {path}: not readable")
    if suffix == ".txt":
        _utf8(path, opt)


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith((".", "/", "~")) or Path(spec).suffix.lower() in TEXT_KINDS
            or (os.sep in spec and spec.count("/") != 1))


def text_source(spec: str, opt: str, *, folders: bool = True, plain_text_fallback: bool = False) -> str:
    """A local text file or folder (checked: exists, readable, UTF-8 for .txt), else a dataset
    name (returned as is: :func:`dataset_network` checks the network). ``folders``: a folder is
    accepted (all its files checked); ``plain_text_fallback``: a file of any other suffix is read
    as plain text. Returns 'file', 'dir' or 'dataset'."""
    path = Path(spec).expanduser()
    if path.is_file():
        _readable_file(path, opt, plain_text_fallback)
        return "file"
    if path.is_dir() and not folders:
        raise CLIError(f"{opt} {path} is a folder; give a file")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_KINDS)
        if not files:
            raise CLIError(f"{opt} {path}: no {', '.join(TEXT_KINDS)} files in this folder")
        kinds = {".json" if p.suffix.lower() == ".jsonl" else p.suffix.lower() for p in files}
        if len(kinds) > 1:
            raise CLIError(f"{opt} {path}: mixed file kinds {sorted(kinds)}; use one kind")
        for p in files:
            _readable_file(p, opt)
        return "dir"
    if path.exists() or path.is_symlink():
        raise CLIError(f"{opt} {spec}: neither a file nor a folder")
    if _looks_like_path(spec):
        raise CLIError(f"{opt} {spec}: no such file or folder")
    return "dataset"


def dataset_network(spec: str, opt: str) -> None:
    """A dataset hub name needs the network (or HF_HUB_OFFLINE and a cached copy): say so now."""
    from cat_apps._models import _hub_host, _offline_env, network_reachable

    if not _offline_env() and not network_reachable(_hub_host()):
        raise CLIError(f"{opt} {spec!r}: a dataset name, but there is no network ({_hub_host()} unreachable); "
                       f"give a local file or folder")


# ----------------------------------------------------------------------------- the model's config


def fits_context(cfg: dict | None, value: int, opt: str) -> None:
    """``value`` tokens fit the model's ``max_position_embeddings`` (when its config states one)."""
    if not cfg:
        return
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    limit = text.get("max_position_embeddings") or cfg.get("max_position_embeddings")
    if isinstance(limit, int) and limit > 0 and value > limit:
        raise CLIError(f"{opt} {value} exceeds the model's max_position_embeddings={limit}")

