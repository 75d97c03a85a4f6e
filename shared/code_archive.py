"""The trial code snapshot: a deterministic tar.gz of ``trialCodeDirectory``, and its safe extraction.

What goes in follows NNI: everything under the folder except what ``.nniignore`` (and, as
Azure ML does, ``.amlignore``) excludes with gitignore-style patterns, plus ``__pycache__``
and ``.git``. Supported patterns: ``#`` comments, ``*``/``?``/``[...]`` globs, ``**``,
a trailing ``/`` for folders only, a leading or inner ``/`` to anchor at the code folder,
and ``!`` to re-include (a file inside an excluded folder stays excluded, as in git).

The archive is the same bytes for the same files: entries sorted, owners and times zeroed.

No secret leaves in it: files named in ``exclude`` (the experiment's config file, which may
hold a storage key) are never packed, and packing refuses (:class:`SecretInCodeError`,
naming the file and the secret) when any packed file contains the value of a known secret.
An archive may also be held to a file count (Azure ML's snapshot limit, see ``max_files``).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import stat
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "AML_RUNTIME_FILES",
    "AML_SNAPSHOT_MAX_BYTES",
    "AML_SNAPSHOT_MAX_FILES",
    "DEFAULT_EXCLUDES",
    "IGNORE_FILES",
    "MAX_ALGORITHM_CODE_BYTES",
    "MAX_ARCHIVE_BYTES",
    "MIN_SECRET_CHARS",
    "CodeArchiveError",
    "IgnoreRules",
    "SecretInCodeError",
    "build_code_archive",
    "extract_code_archive",
]

#: NNI refuses trial code folders above 100 MB; so do we (sum of file sizes before compression).
MAX_ARCHIVE_BYTES = 100 * 1024 * 1024
#: A custom tuner's or assessor's code folder is code, not data: a smaller bound.
MAX_ALGORITHM_CODE_BYTES = 20 * 1024 * 1024
IGNORE_FILES = (".nniignore", ".amlignore")
DEFAULT_EXCLUDES = ("__pycache__/", ".git/")
#: Azure ML's snapshot limits (azureml-core 1.61, ``azureml/_restclient/constants.py``:
#: SNAPSHOT_MAX_FILES, SNAPSHOT_MAX_SIZE_BYTES); checked at ``tunebus create`` for platform aml.
AML_SNAPSHOT_MAX_FILES = 2000
AML_SNAPSHOT_MAX_BYTES = 300 * 1024 * 1024
#: Files tunebus adds to every AML snapshot (the nni shim, the run script, .amlignore), rounded up.
AML_RUNTIME_FILES = 32
#: Secret values shorter than this are not searched for: they would match ordinary text.
MIN_SECRET_CHARS = 8
_SCAN_CHUNK = 1024 * 1024


class CodeArchiveError(ValueError):
    """The code folder cannot be archived (too big), or an archive is unsafe to extract."""


class SecretInCodeError(CodeArchiveError):
    """A file to pack holds the value of a secret (a storage key, a client secret)."""


# ---------------------------------------------------------------- ignore patterns


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negated: bool
    dir_only: bool


def _glob_to_regex(glob: str) -> str:
    """Translate one gitignore glob (already without '!' and trailing '/') to a regex body."""
    out: list[str] = []
    i = 0
    while i < len(glob):
        char = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("/**", i) and i + 3 == len(glob):
            out.append("/.*")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[" and (end := glob.find("]", i + 2)) != -1:
            body = glob[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif char == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
        else:
            out.append(re.escape(char))
            i += 1
    return "".join(out)


def _parse_rule(line: str) -> _Rule | None:
    line = line.rstrip("\n").rstrip()
    if not line or line.startswith("#"):
        return None
    negated = line.startswith("!")
    if negated:
        line = line[1:]
    if line.startswith("\\"):  # "\#file" and "\!file" name files starting with those characters
        line = line[1:]
    dir_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    body = _glob_to_regex(line.lstrip("/"))
    prefix = "" if anchored else "(?:.*/)?"
    return _Rule(re.compile(f"^{prefix}{body}$"), negated, dir_only)


class IgnoreRules:
    """An ordered list of gitignore-style patterns; the last one that matches a path decides."""

    def __init__(self, patterns: list[str]) -> None:
        self.rules = [rule for rule in map(_parse_rule, patterns) if rule is not None]

    @classmethod
    def for_code_dir(cls, code_dir: Path) -> IgnoreRules:
        """The defaults plus the patterns of the folder's ``.nniignore`` and ``.amlignore``."""
        patterns = list(DEFAULT_EXCLUDES)
        for name in IGNORE_FILES:
            path = code_dir / name
            if path.is_file():
                patterns += path.read_text(encoding="utf-8", errors="replace").splitlines()
        return cls(patterns)

    def ignored(self, rel_path: str, is_dir: bool) -> bool:
        """Whether ``rel_path`` (posix, relative to the code folder) is excluded."""
        verdict = False
        for rule in self.rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.match(rel_path):
                verdict = not rule.negated
        return verdict


# ---------------------------------------------------------------- building


@dataclass(frozen=True)
class _Entry:
    rel: str
    path: Path
    kind: str  # "dir" | "file" | "symlink"
    size: int = 0
    link_target: str = ""


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _collect(code_dir: Path, rules: IgnoreRules, excluded: frozenset[Path] = frozenset()) -> list[_Entry]:
    """Every entry to archive, sorted; folders are pruned as soon as they are excluded."""
    root = code_dir.resolve()
    entries: list[_Entry] = []
    for dirpath, dirnames, filenames in os.walk(code_dir):
        base = Path(dirpath)
        rel_base = base.relative_to(code_dir).as_posix()
        rel_base = "" if rel_base == "." else rel_base + "/"
        kept_dirs = []
        for name in sorted(dirnames):
            path, rel = base / name, rel_base + name
            if rules.ignored(rel, is_dir=True):
                continue
            if path.is_symlink():
                target = path.resolve()
                if _inside(target, root):  # a link inside the tree stays a link; else it is dropped
                    entries.append(_Entry(rel, path, "symlink", link_target=os.readlink(path)))
                continue
            entries.append(_Entry(rel, path, "dir"))
            kept_dirs.append(name)
        dirnames[:] = kept_dirs
        for name in sorted(filenames):
            path, rel = base / name, rel_base + name
            if rules.ignored(rel, is_dir=False) or path.resolve() in excluded:
                continue
            if path.is_symlink() and _inside(path.resolve(), root):
                entries.append(_Entry(rel, path, "symlink", link_target=os.readlink(path)))
            elif path.is_file():  # follows a link out of the tree: its content is what the trial needs
                entries.append(_Entry(rel, path, "file", size=path.stat().st_size))
    return sorted(entries, key=lambda e: e.rel)


def _human(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def _too_big(code_dir: Path, entries: list[_Entry], total: int, limit: int, what: str) -> CodeArchiveError:
    by_top: dict[str, int] = {}
    for entry in entries:
        top = entry.rel.split("/", 1)[0] + ("/" if "/" in entry.rel else "")
        by_top[top] = by_top.get(top, 0) + entry.size
    largest = sorted(by_top.items(), key=lambda kv: -kv[1])[:5]
    listing = ", ".join(f"{name} ({_human(size)})" for name, size in largest)
    return CodeArchiveError(
        f"{what} {code_dir} holds {_human(total)} of files, over the {_human(limit)} limit; "
        f"list what is not needed (data, checkpoints, logs) in {code_dir / '.nniignore'}. "
        f"Largest entries: {listing}"
    )


def _tar_info(entry: _Entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(entry.rel)
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif entry.kind == "symlink":
        info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, entry.link_target
    else:
        executable = entry.path.stat().st_mode & stat.S_IXUSR
        info.mode = 0o755 if executable else 0o644
        info.size = entry.size
    return info


def _holds(path: Path, needles: list[bytes]) -> bytes | None:
    """The first of ``needles`` found in the file, read in chunks (a needle may span two)."""
    overlap = max(len(n) for n in needles) - 1
    tail = b""
    with path.open("rb") as source:
        while chunk := source.read(_SCAN_CHUNK):
            window = tail + chunk
            for needle in needles:
                if needle in window:
                    return needle
            tail = window[-overlap:] if overlap else b""
    return None


def _check_no_secret(code_dir: Path, entries: list[_Entry], secrets: Mapping[str, str]) -> None:
    by_value = {value.encode(): name for name, value in secrets.items()
                if value and len(value) >= MIN_SECRET_CHARS}
    if not by_value:
        return
    needles = list(by_value)
    for entry in entries:
        if entry.kind != "file":
            continue
        found = _holds(entry.path, needles)
        if found is not None:
            raise SecretInCodeError(
                f"{code_dir / entry.rel} contains the value of {by_value[found]}; tunebus never uploads "
                f"a secret (it would reach Azure ML's snapshot and the code archive): remove it from "
                f"that file or list the file in {code_dir / '.nniignore'}"
            )


def _too_many(code_dir: Path, count: int, limit: int) -> CodeArchiveError:
    return CodeArchiveError(
        f"trial code directory {code_dir} holds {count} files, over the limit of {limit} "
        f"(Azure ML's snapshot limit, with tunebus's own files); list what trials do not need "
        f"in {code_dir / '.nniignore'}"
    )


def build_code_archive(code_dir: Path, *, max_bytes: int = MAX_ARCHIVE_BYTES, max_files: int | None = None,
                       exclude: Iterable[Path] = (), secrets: Mapping[str, str] | None = None,
                       what: str = "trial code directory") -> bytes:
    """A tar.gz of ``code_dir`` (paths relative to it), minus what the ignore files exclude.

    ``exclude`` names files never packed (the experiment's config file); ``secrets`` maps a
    secret's name to its value, and no packed file may contain a value. Raises
    :class:`CodeArchiveError` when the files add up to more than ``max_bytes`` (naming the size
    and the largest entries) or number more than ``max_files``, :class:`SecretInCodeError`
    naming the file and the secret, and NotADirectoryError when ``code_dir`` is not a folder.
    ``what`` names the folder in those messages (a custom tuner's codeDirectory is packed too).
    """
    code_dir = Path(code_dir)
    if not code_dir.is_dir():
        raise NotADirectoryError(f"{what} {code_dir} is not a folder")
    excluded = frozenset(Path(p).resolve() for p in exclude)
    entries = _collect(code_dir, IgnoreRules.for_code_dir(code_dir), excluded)
    total = sum(e.size for e in entries)
    if total > max_bytes:
        raise _too_big(code_dir, entries, total, max_bytes, what)
    files = sum(1 for e in entries if e.kind != "dir")
    if max_files is not None and files > max_files:
        raise _too_many(code_dir, files, max_files)
    _check_no_secret(code_dir, entries, secrets or {})
    buffer = io.BytesIO()
    # mtime=0 and no file name in the gzip header: the same files give the same bytes.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = _tar_info(entry)
            if entry.kind == "file":
                with entry.path.open("rb") as source:
                    tar.addfile(info, source)
            else:
                tar.addfile(info)
    return buffer.getvalue()


# ---------------------------------------------------------------- extracting


def _check_member(member: tarfile.TarInfo, dest: Path) -> None:
    name = member.name
    pure = PurePosixPath(name)
    if pure.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise CodeArchiveError(f"unsafe archive entry {name!r}: absolute path")
    if ".." in pure.parts:
        raise CodeArchiveError(f"unsafe archive entry {name!r}: '..' in path")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise CodeArchiveError(f"unsafe archive entry {name!r}: not a file, folder or link")
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        base = dest / pure.parent if member.issym() else dest
        target = Path(os.path.normpath(base / link))
        if link.is_absolute() or not _inside(target, dest):
            raise CodeArchiveError(
                f"unsafe archive entry {name!r}: links outside the folder ({member.linkname})"
            )


def extract_code_archive(data: bytes, dest: Path, *, max_bytes: int | None = None) -> None:
    """Unpack an archive made by :func:`build_code_archive` into ``dest`` (created if needed).

    Refuses, with :class:`CodeArchiveError` and before writing anything, archives with absolute
    paths, ``..`` components, links pointing outside ``dest``, or devices and fifos, and, with
    ``max_bytes``, archives whose files add up to more than that.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise CodeArchiveError(f"not a valid code archive: {exc}") from exc
    with tar:
        for member in members:
            _check_member(member, root)
        total = sum(member.size for member in members if member.isfile())
        if max_bytes is not None and total > max_bytes:
            raise CodeArchiveError(f"the archive's files add up to {_human(total)}, over the limit of "
                                   f"{_human(max_bytes)}")
        try:
            # The "data" filter re-checks the above and drops modes that should not be kept.
            tar.extractall(root, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise CodeArchiveError(f"unsafe archive entry: {exc}") from exc
