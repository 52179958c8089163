"""Download and unpack the HPatches releases: resumable, checked, and never half-written.

``download_release(name, out)`` fetches one release archive with HTTP Range resume, checks its size and digest,
and unpacks it into ``out/<folder>`` through a temporary folder and one rename. What exists under a final name is
complete:

* ``<archive>.part`` is the only partial file: the bytes received so far, kept so that a rerun (or the next retry
  after a cut connection) asks for the rest with ``Range: bytes=<size>-``. A server that ignores the range (200)
  restarts it from zero; one that answers 416 is told nothing more is missing, and the digest decides.
* The archive gets its final name only after its size (``Content-Length`` / ``Content-Range``) and digests match;
  a wrong digest deletes the ``.part`` (those bytes are not the release) and says which digest differed.
* Extraction goes to ``out/.<folder>.tmp-*`` with tarfile's ``data`` filter (no absolute paths, no ``..``, no links
  out of the folder, no devices), the layout is checked, a marker ``.tripletkit-download.json`` (URL, SHA-256,
  file count) is written, and the folder is renamed to ``out/<folder>``. A failure removes the temporary folder;
  the archive is kept when the failure was the machine's (a full disk: the rerun unpacks it without downloading
  again) and deleted when it was the archive's (`BadArchiveError`).
  A folder that exists with the marker is complete and is skipped; one without it is refused, never merged.

Digests: the HPatches authors publish none. The patch release's MD5 (``0ab830d3…``) comes from two torch dataset
classes that download it; no SHA-256 of any release is known to us, so ``--sha256`` pins one (the command prints
the SHA-256 of every archive it accepts, to pin it next time).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import shutil
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tripletkit.training import atomic_write_text

__all__ = ["RELEASES", "Release", "DownloadError", "BadArchiveError", "fetch", "unpack", "download_release"]

CHUNK = 1 << 20
MARKER = ".tripletkit-download.json"


@dataclass(frozen=True)
class Release:
    url: str
    archive: str  # file name of the archive under --out
    folder: str  # the folder it unpacks to under --out
    member_prefix: str | None  # only members under this archive path, with the prefix removed (None: as they are)
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None
    layout: str = "patches"  # what `check_layout` expects


BENCHMARK_COMMIT = "e0c993c7756d26129fef47f752f79e4cfe6681aa"
RELEASES: dict[str, Release] = {
    # the patch release: <seq>/<type>.png, 65×65 patches stacked in columns (116 sequences)
    "patches": Release(
        url="http://icvl.ee.ic.ac.uk/vbalnt/hpatches/hpatches-release.tar.gz",
        archive="hpatches-release.tar.gz",
        folder="hpatches-release",
        member_prefix="hpatches-release/",
        md5="0ab830d37fceb2b4c86cb1cc6cc79a61",
        layout="patches",
    ),
    # the image-sequence release: <seq>/1.ppm … 6.ppm and H_1_2 … H_1_6; feeds `prepare.py extract --sequences`
    "sequences": Release(
        url="http://icvl.ee.ic.ac.uk/vbalnt/hpatches/hpatches-sequences-release.tar.gz",
        archive="hpatches-sequences-release.tar.gz",
        folder="hpatches-sequences-release",
        member_prefix="hpatches-sequences-release/",
        layout="sequences",
    ),
    # the benchmark's task files (splits, verification pairs, retrieval queries) at a pinned commit
    "tasks": Release(
        url=f"https://github.com/hpatches/hpatches-benchmark/archive/{BENCHMARK_COMMIT}.tar.gz",
        archive=f"hpatches-benchmark-{BENCHMARK_COMMIT[:12]}.tar.gz",
        folder="hpatches-tasks",
        member_prefix=f"hpatches-benchmark-{BENCHMARK_COMMIT}/tasks/",
        layout="tasks",
    ),
}


class DownloadError(RuntimeError):
    """A download or unpacking that did not complete; the message says why and what was left (at most a .part)."""


class BadArchiveError(DownloadError):
    """The archive itself is wrong (unsafe member, not a tar, another layout): it is deleted, not kept for a retry."""


def _progress(total: int | None, initial: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=quiet)


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "tripletkit-hpatches"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            return None  # nothing after `offset`: the .part may be whole; the size and digest decide
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: cannot connect ({reason})") from None


def _total_from(response, offset: int) -> tuple[int, int | None]:
    """(where the body starts, the full size or None) from a 200 or 206 response."""
    if response.status == 206:
        rng = response.headers.get("Content-Range", "")  # bytes START-END/TOTAL
        try:
            span, total = rng.split(" ", 1)[1].split("/")
            start = int(span.split("-")[0])
        except (IndexError, ValueError):
            raise DownloadError(f"{response.url}: 206 with an unreadable Content-Range {rng!r}") from None
        if start != offset:
            raise DownloadError(f"{response.url}: asked for bytes from {offset}, the server sent from {start}")
        return start, None if total == "*" else int(total)
    length = response.headers.get("Content-Length")
    return 0, int(length) if length is not None else None


def _digests(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    retries: int = 5,
    timeout: float = 60.0,
    quiet: bool = False,
) -> str:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), check it, and return its SHA-256.

    A connection cut mid-stream (or a timeout) is retried up to ``retries`` times from the bytes already on disk.
    Raises `DownloadError` for HTTP errors, a size or digest mismatch, a full disk, or a stream that keeps breaking.
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    attempts = 0
    total: int | None = None
    while True:
        offset = part.stat().st_size if part.exists() else 0
        response = _open(url, offset, timeout)
        if response is not None:
            start, total = _total_from(response, offset)
            mode = "ab" if start else "wb"  # a 200 to a range request: the server restarts, and so do we
            received = start
            try:
                with (
                    response,
                    part.open(mode) as f,
                    _progress(total, start, dest.name, quiet) as bar,
                ):
                    try:
                        while block := response.read(CHUNK):
                            f.write(block)
                            received += len(block)
                            bar.update(len(block))
                    except http.client.IncompleteRead as cut:  # keep what did arrive: the resume starts after it
                        f.write(cut.partial)
                        received += len(cut.partial)
                        raise
                    finally:
                        f.flush()
                        os.fsync(f.fileno())
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DownloadError(
                        f"{part}: no space left on the device after {received:,} bytes; free space and run the "
                        "same command again to resume"
                    ) from None
                if not isinstance(e, (ConnectionError, socket.timeout, TimeoutError)):
                    raise DownloadError(f"{part}: cannot write ({e.strerror or e})") from None
                attempts += 1
            except http.client.IncompleteRead:
                attempts += 1
            else:
                if total is None or received >= total:
                    break
                attempts += 1  # the server closed the stream early without an error
            if attempts > retries:
                have = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"{url}: the connection broke {attempts} times; {have:,} of "
                    f"{total if total is not None else '?'} bytes are in {part}, and the same command resumes them"
                )
            continue
        break
    have = part.stat().st_size
    expected_size = size if size is not None else total
    if expected_size is not None and have != expected_size:
        part.unlink()
        raise DownloadError(f"{url}: {have:,} bytes received, expected {expected_size:,}; the partial file is removed")
    got_sha, got_md5 = _digests(part)
    for name, want, got in (("SHA-256", sha256, got_sha), ("MD5", md5, got_md5)):
        if want is not None and want.lower() != got:
            part.unlink()
            raise DownloadError(
                f"{url}: {name} is {got}, expected {want.lower()}; the download is removed (a wrong or damaged file)"
            )
    os.replace(part, dest)
    return got_sha


def _is_member(name: str, prefix: str | None) -> bool:
    return prefix is None or (name.startswith(prefix) and len(name) > len(prefix))


def check_layout(root: Path, layout: str) -> int:
    """The number of sequence folders (or task files) if ``root`` has the release's layout; else `DownloadError`."""
    if layout == "tasks":
        files = [p for p in root.rglob("*.csv")]
        if not ((root / "splits.json").exists() or (root / "splits" / "splits.json").exists()) or not files:
            raise BadArchiveError(f"{root}: not the benchmark's tasks layout (splits.json and *.csv files)")
        return len(files)
    sequences = [p for p in root.iterdir() if p.is_dir()]
    if not sequences:
        raise BadArchiveError(f"{root}: no sequence folders in the archive")
    for seq in sequences:
        if layout == "patches":
            from tripletkit_hpatches.descriptors import IMAGE_TYPES

            missing = [t for t in IMAGE_TYPES if not (seq / f"{t}.png").exists()]
        else:
            missing = [n for n in ("1.ppm", "H_1_2") if not (seq / n).exists()]
        if missing:
            raise BadArchiveError(f"{seq}: not the {layout} release's layout (missing {', '.join(missing)})")
    return len(sequences)


def unpack(archive: Path, out: Path, release: Release, sha256: str, url: str) -> Path:
    """Unpack ``archive`` into ``out/<release.folder>`` through a temporary folder and one rename."""
    final = out / release.folder
    tmp = Path(tempfile.mkdtemp(prefix=f".{release.folder}.tmp-", dir=out))
    try:
        count = 0
        with tarfile.open(archive, "r:*") as tar:
            prefix = release.member_prefix

            def pick(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
                if not _is_member(member.name, prefix):
                    return None
                if member.islnk() or member.issym():  # the releases hold files and folders only
                    raise BadArchiveError(f"{archive}: {member.name} is a link; the release has none")
                if prefix:
                    member = member.replace(name=member.name[len(prefix) :], deep=False)
                # after the prefix is gone: refuses absolute paths, "..", devices and special files
                return tarfile.data_filter(member, dest)

            try:
                for member in tar:
                    if _is_member(member.name, prefix):
                        tar.extract(member, tmp, filter=pick)
                        count += member.isfile()
            except tarfile.FilterError as e:
                raise BadArchiveError(f"{archive}: unsafe member refused ({e})") from None
            except (tarfile.TarError, EOFError, OSError) as e:
                if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise DownloadError(f"{out}: no space left on the device while unpacking {archive}") from None
                raise BadArchiveError(f"{archive}: cannot unpack ({e})") from None
        if count == 0:
            raise BadArchiveError(f"{archive}: no files under {prefix!r}; not the {release.folder} release")
        units = check_layout(tmp, release.layout)
        atomic_write_text(tmp / MARKER, json.dumps({"url": url, "sha256": sha256, "files": count, "units": units}))
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def download_release(
    name: str,
    out: Path,
    *,
    url: str | None = None,
    sha256: str | None = None,
    keep_archive: bool = False,
    retries: int = 5,
    timeout: float = 60.0,
    quiet: bool = False,
) -> Path:
    """Fetch and unpack release ``name`` (`RELEASES`) into ``out``; returns the unpacked folder.

    ``url`` replaces the official one (a mirror); the known MD5 is then still checked, since a mirror serves the
    same file. ``sha256`` pins the archive's SHA-256. The archive is deleted after unpacking unless
    ``keep_archive``.
    """
    if name not in RELEASES:
        raise ValueError(f"unknown release {name!r}; valid: {', '.join(RELEASES)}")
    release = RELEASES[name]
    out.mkdir(parents=True, exist_ok=True)
    final = out / release.folder
    if final.exists():
        if (final / MARKER).exists():
            if not quiet:
                print(f"{final}: complete (made by an earlier download); nothing to do")
            return final
        raise DownloadError(f"{final} exists but was not made by this command; move it away or choose another --out")
    archive = out / release.archive
    source = url or release.url
    got = None
    if archive.exists():  # an earlier run downloaded it but did not finish unpacking: check it again
        got_sha, got_md5 = _digests(archive)
        want_sha = sha256 or release.sha256
        if (want_sha is None or want_sha.lower() == got_sha) and (release.md5 is None or release.md5 == got_md5):
            got = got_sha
        else:
            archive.unlink()
    if got is None:
        got = fetch(
            source,
            archive,
            sha256=sha256 or release.sha256,
            md5=release.md5,
            size=release.size,
            retries=retries,
            timeout=timeout,
            quiet=quiet,
        )
    if not quiet:
        print(f"{archive.name}: SHA-256 {got} (pin it with --sha256)")
    try:
        folder = unpack(archive, out, release, got, source)
    except BadArchiveError:
        archive.unlink()  # checked bytes, but not a usable release: nothing to resume from
        raise
    if not keep_archive:
        archive.unlink()
    return folder
