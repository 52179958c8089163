"""prepare.py download against an HTTP server on 127.0.0.1 that this test starts: small archives in the releases'
layouts, a connection cut mid-stream and resumed with Range, a server that ignores Range, 404, a wrong checksum, a
full disk, an unsafe archive, and a rerun that finds the work done. Nothing half-written is ever left under a final
name."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from tripletkit_hpatches import download as dl
from tripletkit_hpatches.data import write_hpatches_sequence
from tripletkit_hpatches.descriptors import IMAGE_TYPES
from tripletkit_hpatches.prepare import main as prepare_main


class Server:
    """Serves ``files`` (path → bytes) with Range support; ``cuts`` requests are cut after ``cut_at`` bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cut_at = 0
        self.cuts = 0
        self.ignore_range = False
        self.ranges: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                server.ranges.append(self.headers.get("Range"))
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                payload = body[start:]
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if server.cuts > 0:
                    server.cuts -= 1
                    self.wfile.write(payload[: server.cut_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _tar(tree: Path, arcname: str, extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tree, arcname=arcname)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _patch_release(tmp_path: Path, sequences=("i_a", "v_b")) -> bytes:
    tree = tmp_path / "src" / "hpatches-release"
    rng = np.random.default_rng(0)
    for s in sequences:
        write_hpatches_sequence(tree, s, {t: rng.integers(0, 256, (3, 65, 65)).astype(np.uint8) for t in IMAGE_TYPES})
    # padding so that the archive is larger than one read: the cut lands mid-stream
    (tree / "i_a" / "notes.txt").write_bytes(rng.integers(0, 256, 300_000).astype(np.uint8).tobytes())
    return _tar(tree, "hpatches-release")


def _left_over(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


def _use(monkeypatch, server: Server, path: str, body: bytes, **release_fields) -> None:
    server.files[path] = body
    release = dl.RELEASES["patches"]
    fields = {"url": server.url(path), "md5": None} | release_fields
    monkeypatch.setitem(dl.RELEASES, "patches", dl.Release(**{**release.__dict__, **fields}))


def test_download_cut_mid_stream_resumes_with_range_and_unpacks(server, tmp_path, monkeypatch):
    body = _patch_release(tmp_path)
    _use(monkeypatch, server, "/hpatches-release.tar.gz", body, md5=hashlib.md5(body).hexdigest())
    server.cut_at, server.cuts = len(body) // 3, 1
    out = tmp_path / "data"
    sha = hashlib.sha256(body).hexdigest()
    assert prepare_main(["download", "patches", "--out", str(out), "--sha256", sha, "--quiet"]) == 0
    assert server.ranges == [None, f"bytes={len(body) // 3}-"]  # the second request asked for the rest only
    folder = out / "hpatches-release"
    assert sorted(p.name for p in folder.iterdir()) == [".tripletkit-download.json", "i_a", "v_b"]
    assert all((folder / "v_b" / f"{t}.png").exists() for t in IMAGE_TYPES)
    marker = json.loads((folder / ".tripletkit-download.json").read_text())
    assert marker["sha256"] == sha and marker["units"] == 2
    assert _left_over(out) == ["hpatches-release"]  # the archive and every temporary are gone
    # a rerun finds it complete and fetches nothing
    assert prepare_main(["download", "patches", "--out", str(out), "--quiet"]) == 0
    assert len(server.ranges) == 2


def test_an_interrupted_process_leaves_only_a_part_file_and_the_next_run_resumes(server, tmp_path, monkeypatch):
    body = _patch_release(tmp_path)
    _use(monkeypatch, server, "/r.tar.gz", body)
    server.cut_at, server.cuts = len(body) // 2, 1
    out = tmp_path / "data"
    with pytest.raises(dl.DownloadError, match="resumes"):
        dl.download_release("patches", out, retries=0, quiet=True)
    assert _left_over(out) == ["hpatches-release.tar.gz.part"]
    assert (out / "hpatches-release.tar.gz.part").stat().st_size == len(body) // 2
    dl.download_release("patches", out, quiet=True)
    assert server.ranges[-1] == f"bytes={len(body) // 2}-"
    assert _left_over(out) == ["hpatches-release"]


def test_a_server_that_ignores_range_restarts_cleanly(server, tmp_path, monkeypatch):
    body = _patch_release(tmp_path)
    _use(monkeypatch, server, "/r.tar.gz", body, sha256=hashlib.sha256(body).hexdigest())
    server.ignore_range = True
    out = tmp_path / "data"
    out.mkdir()
    (out / "hpatches-release.tar.gz.part").write_bytes(b"stale bytes from somewhere else")
    dl.download_release("patches", out, quiet=True)
    assert (out / "hpatches-release" / "i_a" / "ref.png").exists()


def test_not_found_is_a_clear_error_and_writes_nothing(server, tmp_path, monkeypatch, capsys):
    _use(monkeypatch, server, "/elsewhere", b"x")
    out = tmp_path / "data"
    bad = server.url("/missing.tar.gz")
    assert prepare_main(["download", "patches", "--out", str(out), "--url", bad, "--quiet"]) == 2
    assert "HTTP 404" in capsys.readouterr().err
    assert _left_over(out) == []


def test_a_wrong_checksum_removes_the_download(server, tmp_path, monkeypatch, capsys):
    body = _patch_release(tmp_path)
    _use(monkeypatch, server, "/r.tar.gz", body)
    out = tmp_path / "data"
    assert prepare_main(["download", "patches", "--out", str(out), "--sha256", "0" * 64, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "SHA-256 is " + hashlib.sha256(body).hexdigest() in err and "expected " + "0" * 64 in err
    assert _left_over(out) == []
    # the release's known MD5 is checked too, also for a mirror
    _use(monkeypatch, server, "/r.tar.gz", body, md5="f" * 32)
    with pytest.raises(dl.DownloadError, match="MD5"):
        dl.download_release("patches", out, url=server.url("/r.tar.gz"), quiet=True)
    assert _left_over(out) == []


def test_a_short_body_is_refused(server, tmp_path, monkeypatch):
    body = _patch_release(tmp_path)
    _use(monkeypatch, server, "/r.tar.gz", body, size=len(body) + 10)
    out = tmp_path / "data"
    with pytest.raises(dl.DownloadError, match="expected"):
        dl.download_release("patches", out, quiet=True)
    assert _left_over(out) == []


def test_a_full_disk_is_a_clear_error_and_leaves_no_final_file(server, tmp_path, monkeypatch):
    body = _patch_release(tmp_path)
    _use(monkeypatch, server, "/r.tar.gz", body)
    out = tmp_path / "data"
    real_open = Path.open

    class FullDisk(io.RawIOBase):
        def __init__(self, f):
            self.f = f

        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()

    def open_full(self, mode="r", *args, **kwargs):
        f = real_open(self, mode, *args, **kwargs)
        return FullDisk(f) if self.name.endswith(".part") and "b" in mode and mode[0] in "wa" else f

    monkeypatch.setattr(Path, "open", open_full)
    with pytest.raises(dl.DownloadError, match="no space left"):
        dl.download_release("patches", out, quiet=True)
    assert not (out / "hpatches-release.tar.gz").exists() and not (out / "hpatches-release").exists()


def test_unpacking_refuses_unsafe_members_and_leaves_nothing(server, tmp_path, monkeypatch):
    tree = tmp_path / "src" / "hpatches-release"
    write_hpatches_sequence(tree, "i_a", {t: np.zeros((1, 65, 65), np.uint8) for t in IMAGE_TYPES})
    info = tarfile.TarInfo("hpatches-release/../../escape.txt")
    info.size = 3
    _use(monkeypatch, server, "/r.tar.gz", _tar(tree, "hpatches-release", [(info, b"bad")]))
    out = tmp_path / "data"
    with pytest.raises(dl.DownloadError, match="unsafe member"):
        dl.download_release("patches", out, quiet=True)
    assert _left_over(out) == []  # no folder, no temporary folder, no archive
    # a member outside the release's folder (here an absolute path) is never extracted
    info = tarfile.TarInfo(str(tmp_path / "abs.txt"))
    info.size = 3
    _use(monkeypatch, server, "/r.tar.gz", _tar(tree, "hpatches-release", [(info, b"bad")]))
    folder = dl.download_release("patches", tmp_path / "data2", quiet=True)
    assert not (tmp_path / "abs.txt").exists() and not list(folder.rglob("abs.txt"))
    link = tarfile.TarInfo("hpatches-release/i_a/link.png")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    _use(monkeypatch, server, "/r.tar.gz", _tar(tree, "hpatches-release", [(link, None)]))
    with pytest.raises(dl.DownloadError, match="is a link"):
        dl.download_release("patches", tmp_path / "datalink", quiet=True)
    assert not (tmp_path / "datalink" / "hpatches-release").exists()
    assert not (tmp_path.parent / "escape.txt").exists()


def test_an_archive_in_another_layout_is_refused(server, tmp_path, monkeypatch):
    tree = tmp_path / "src" / "hpatches-release" / "i_a"
    tree.mkdir(parents=True)
    (tree / "ref.png").write_bytes(b"only one image")
    _use(monkeypatch, server, "/r.tar.gz", _tar(tree.parent, "hpatches-release"))
    out = tmp_path / "data"
    with pytest.raises(dl.DownloadError, match="missing e1"):
        dl.download_release("patches", out, quiet=True)
    assert not (out / "hpatches-release").exists()


def test_a_folder_not_made_by_download_is_never_merged(tmp_path):
    out = tmp_path / "data"
    (out / "hpatches-release").mkdir(parents=True)
    with pytest.raises(dl.DownloadError, match="not made by this command"):
        dl.download_release("patches", out, quiet=True)


def test_the_sequence_release_feeds_extraction(server, tmp_path, monkeypatch):
    """The sequence release's layout (.ppm images, H_1_k) unpacks and `prepare.py extract` reads it."""
    from skimage import data as skdata

    src = tmp_path / "src" / "hpatches-sequences-release" / "v_cam"
    src.mkdir(parents=True)
    image = skdata.camera()[::2, ::2]
    for k in range(1, 7):
        shift = np.array([[1, 0, 2.0 * (k - 1)], [0, 1, 1.0 * (k - 1)], [0, 0, 1]])
        (src / f"{k}.ppm").write_bytes(_ppm(np.roll(image, (k - 1, 2 * (k - 1)), axis=(0, 1))))
        if k > 1:
            (src / f"H_1_{k}").write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in shift) + "\n")
    body = _tar(src.parent, "hpatches-sequences-release")
    server.files["/seq.tar.gz"] = body
    release = dl.RELEASES["sequences"]
    monkeypatch.setitem(dl.RELEASES, "sequences", dl.Release(**{**release.__dict__, "url": server.url("/seq.tar.gz")}))
    out = tmp_path / "data"
    folder = dl.download_release("sequences", out, quiet=True)
    assert (folder / "v_cam" / "1.ppm").exists() and (folder / "v_cam" / "H_1_6").exists()
    assert (
        prepare_main(["extract", "--sequences", str(folder), "--out", str(tmp_path / "ext"), "--max-patches", "20"])
        == 0
    )
    meta = json.loads((tmp_path / "ext" / "dataset.json").read_text())
    assert meta["sequences"]["v_cam"] > 0 and (tmp_path / "ext" / "v_cam" / "t5.png").exists()


def _ppm(gray: np.ndarray) -> bytes:
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)
    return f"P6 {rgb.shape[1]} {rgb.shape[0]} 255\n".encode() + rgb.tobytes()


def test_a_full_disk_while_unpacking_keeps_the_checked_archive_and_the_rerun_fetches_nothing(
    server, tmp_path, monkeypatch
):
    body = _patch_release(tmp_path)
    _use(monkeypatch, server, "/r.tar.gz", body)
    out = tmp_path / "data"
    real_extract = tarfile.TarFile.extract
    calls = {"n": 0}

    def extract_until_full(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_extract(self, *args, **kwargs)

    monkeypatch.setattr(tarfile.TarFile, "extract", extract_until_full)
    with pytest.raises(dl.DownloadError, match="no space left"):
        dl.download_release("patches", out, quiet=True)
    assert _left_over(out) == ["hpatches-release.tar.gz"]  # whole and checked; no half-unpacked folder
    monkeypatch.setattr(tarfile.TarFile, "extract", real_extract)
    requests = len(server.ranges)
    dl.download_release("patches", out, quiet=True)
    assert len(server.ranges) == requests  # unpacked from the kept archive
    assert _left_over(out) == ["hpatches-release"]
