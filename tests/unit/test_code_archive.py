"""The trial code snapshot: what goes in, determinism, the size limit and safe extraction."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from shared.code_archive import (
    CodeArchiveError,
    IgnoreRules,
    SecretInCodeError,
    build_code_archive,
    extract_code_archive,
)


def write(root: Path, rel: str, content: str = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return tar.getnames()


@pytest.fixture()
def code_dir(tmp_path: Path) -> Path:
    root = tmp_path / "code"
    for rel in ("trial.py", "lib/model.py", "lib/__pycache__/model.cpython-311.pyc", ".git/HEAD",
                "data/train.csv", "ckpt/a.ckpt", "keep.ckpt", "drop.ckpt", "top.txt", "lib/top.txt",
                "logs/run1/out.log", "notes/readme.md"):
        write(root, rel)
    return root


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "ignored"),
    [
        ("*.ckpt", "a.ckpt", False, True),
        ("*.ckpt", "deep/er/a.ckpt", False, True),
        ("*.ckpt", "a.ckpt.txt", False, False),
        ("data/", "data", True, True),
        ("data/", "data", False, False),  # a trailing slash matches folders only
        ("data/", "sub/data", True, True),
        ("/top.txt", "top.txt", False, True),
        ("/top.txt", "lib/top.txt", False, False),
        ("lib/*.py", "lib/model.py", False, True),
        ("lib/*.py", "lib/sub/model.py", False, False),  # '*' stops at '/'
        ("lib/*.py", "x/lib/model.py", False, False),  # an inner '/' anchors at the root
        ("**/cache", "a/b/cache", True, True),
        ("**/cache", "cache", True, True),
        ("logs/**", "logs/run1/out.log", False, True),
        ("a/**/z.txt", "a/z.txt", False, True),
        ("a/**/z.txt", "a/b/c/z.txt", False, True),
        ("file?.txt", "file1.txt", False, True),
        ("file?.txt", "file10.txt", False, False),
        ("run[0-9].log", "run7.log", False, True),
        ("run[!0-9].log", "run7.log", False, False),
        ("# comment", "# comment", False, False),
        ("\\#hash", "#hash", False, True),
    ],
)
def test_ignore_patterns(pattern: str, path: str, is_dir: bool, ignored: bool) -> None:
    assert IgnoreRules([pattern]).ignored(path, is_dir) is ignored


def test_last_matching_pattern_wins_and_negation_reincludes() -> None:
    rules = IgnoreRules(["*.ckpt", "!keep.ckpt"])
    assert rules.ignored("drop.ckpt", False)
    assert not rules.ignored("keep.ckpt", False)


def test_archive_contents_follow_defaults_and_ignore_files(code_dir: Path) -> None:
    write(code_dir, ".nniignore", "# big things\ndata/\n*.ckpt\n!keep.ckpt\n/top.txt\nlogs/\n")
    write(code_dir, ".amlignore", "notes\n")
    got = names(build_code_archive(code_dir))
    assert got == sorted(got), "entries are sorted"
    # ckpt/ is kept as an (empty) folder: only its .ckpt files are excluded.
    assert set(got) == {
        ".amlignore", ".nniignore", "ckpt", "keep.ckpt", "lib", "lib/model.py", "lib/top.txt", "trial.py",
    }


def test_file_inside_an_excluded_folder_cannot_be_reincluded(code_dir: Path) -> None:
    write(code_dir, ".nniignore", "ckpt/\n!ckpt/a.ckpt\n")
    assert "ckpt/a.ckpt" not in names(build_code_archive(code_dir))


def test_archive_is_deterministic(code_dir: Path) -> None:
    first = build_code_archive(code_dir)
    os.utime(code_dir / "trial.py", (1_000_000, 1_000_000))
    assert build_code_archive(code_dir) == first, "same files, same bytes (times are not recorded)"
    write(code_dir, "trial.py", "changed")
    assert build_code_archive(code_dir) != first


def test_round_trip_keeps_content_executable_bit_and_inner_links(code_dir: Path, tmp_path: Path) -> None:
    script = write(code_dir, "run.sh", "#!/bin/sh\necho hi\n")
    script.chmod(0o755)
    (code_dir / "model_link.py").symlink_to("lib/model.py")
    outside = write(tmp_path, "outside/shared.py", "shared = 1\n")
    (code_dir / "shared.py").symlink_to(outside)
    dest = tmp_path / "dest"
    extract_code_archive(build_code_archive(code_dir), dest)
    assert (dest / "trial.py").read_text() == "x"
    assert os.access(dest / "run.sh", os.X_OK)
    assert not os.access(dest / "trial.py", os.X_OK)
    assert (dest / "model_link.py").is_symlink() and (dest / "model_link.py").read_text() == "x"
    assert not (dest / "shared.py").is_symlink(), "a link out of the code folder is stored as its content"
    assert (dest / "shared.py").read_text() == "shared = 1\n"
    assert not (dest / ".git").exists() and not (dest / "lib" / "__pycache__").exists()


def test_oversized_code_folder_is_refused_naming_size_and_nniignore(code_dir: Path) -> None:
    write(code_dir, "data/big.bin", "0" * 300_000)
    with pytest.raises(CodeArchiveError) as info:
        build_code_archive(code_dir, max_bytes=200_000)
    message = str(info.value)
    assert "0.3 MB" in message and ".nniignore" in message and "data/ (0.3 MB)" in message
    write(code_dir, ".nniignore", "data/\n")
    build_code_archive(code_dir, max_bytes=200_000)  # excluding it fixes it


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        build_code_archive(tmp_path / "missing")


# ---------------------------------------------------------------- hostile archives


def hostile(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, content in members:
            info.size = len(content) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(content) if info.isfile() else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ([(entry("/etc/evil"), b"x")], "absolute"),
        ([(entry("a/../../evil"), b"x")], "'..'"),
        ([(entry("link", tarfile.SYMTYPE, "../outside"), b"")], "outside"),
        ([(entry("link", tarfile.SYMTYPE, "/etc/passwd"), b"")], "outside"),
        ([(entry("sub/link", tarfile.SYMTYPE, "../../x"), b"")], "outside"),
        ([(entry("hard", tarfile.LNKTYPE, "../x"), b"")], "'..'|outside"),
        ([(entry("dev", tarfile.CHRTYPE), b"")], "not a file"),
        ([(entry("fifo", tarfile.FIFOTYPE), b"")], "not a file"),
    ],
)
def test_unsafe_archives_are_refused_before_writing(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes]], says: str
) -> None:
    ok = (entry("fine.txt"), b"fine")
    dest = tmp_path / "dest"
    with pytest.raises(CodeArchiveError, match=says):
        extract_code_archive(hostile(ok, *members), dest)
    assert list(dest.iterdir()) == [], "nothing is extracted from an unsafe archive"


def test_inner_relative_link_is_allowed(tmp_path: Path) -> None:
    data = hostile((entry("sub/a.txt"), b"a"), (entry("sub/b.txt", tarfile.SYMTYPE, "a.txt"), b""))
    extract_code_archive(data, tmp_path / "dest")
    assert (tmp_path / "dest" / "sub" / "b.txt").read_text() == "a"


def test_garbage_is_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(CodeArchiveError, match="not a valid code archive"):
        extract_code_archive(b"definitely not gzip", tmp_path / "dest")


# ---------------------------------------------------------------- no secret in an archive

KEY = "c2VjcmV0LWtleS1vZi10aGUtc2hhcmVkLXN0b3JhZ2U="


def test_an_excluded_file_is_never_packed(code_dir: Path) -> None:
    config = write(code_dir, "config_aml.yml", f"storage_account_key: {KEY}\n")
    assert "config_aml.yml" in names(build_code_archive(code_dir))
    assert "config_aml.yml" not in names(build_code_archive(code_dir, exclude=[config]))


def test_a_secrets_value_in_any_file_refuses_the_archive_naming_file_and_secret(code_dir: Path) -> None:
    write(code_dir, "lib/settings.py", f"KEY = '{KEY}'\n")
    with pytest.raises(SecretInCodeError) as caught:
        build_code_archive(code_dir, secrets={"sharedStorage.storageAccountKey": KEY})
    message = str(caught.value)
    assert str(code_dir / "lib/settings.py") in message and "sharedStorage.storageAccountKey" in message
    assert KEY not in message  # the message names the secret, never shows it


def test_a_secret_spanning_two_read_chunks_is_found(code_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.code_archive as archive

    monkeypatch.setattr(archive, "_SCAN_CHUNK", 16)
    write(code_dir, "data/blob.txt", "x" * 10 + KEY + "y" * 40)
    with pytest.raises(SecretInCodeError, match=r"blob\.txt contains the value of AZURE_CLIENT_SECRET"):
        build_code_archive(code_dir, secrets={"AZURE_CLIENT_SECRET": KEY})


def test_ignored_files_may_hold_secrets_and_short_values_are_not_searched(code_dir: Path) -> None:
    write(code_dir, ".nniignore", "secrets/\n")
    write(code_dir, "secrets/key.txt", KEY)
    write(code_dir, "trial.py", "x = 'guest'\n")
    build_code_archive(code_dir, secrets={"key": KEY, "short": "guest"})


def test_a_file_count_limit(code_dir: Path) -> None:
    count = len([n for n in names(build_code_archive(code_dir)) if "." in n.rsplit("/", 1)[-1]])
    with pytest.raises(CodeArchiveError, match=r"holds \d+ files, over the limit of 3"):
        build_code_archive(code_dir, max_files=3)
    build_code_archive(code_dir, max_files=count + 10)
