"""A record's weight file, fetched with what timm's downloads lack.

URL and Google Drive files go to a verified, atomic cache (``$WHITEBOX_HOME/checkpoints``, default
``~/.cache/whitebox/checkpoints``; ``cache_dir=`` overrides): the download lands in a temporary
file beside its destination, is checked (length, sha256) and only then renamed into place. Drive
files come through ``gdown``, which follows Drive's confirmation pages as they change; Hub files
through ``huggingface_hub`` and its cache, with ``HF_ENDPOINT`` read at call time. A pinned sha256
is checked on every source. Offline (``HF_HUB_OFFLINE=1`` or ``WHITEBOX_OFFLINE=1``) nothing is
fetched, and a file that is not cached is an error that says what was looked for, where, and how
to supply it by hand.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

_CHUNK, _TIMEOUT = 1 << 20, 60.0
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # of a saved model: whitebox's, then timm's default
_OFFLINE = "offline mode is on (HF_HUB_OFFLINE / WHITEBOX_OFFLINE)"


class WeightsUnavailableError(FileNotFoundError):
    """Weights could not be fetched (offline, or no network) and are not in the cache."""


class ChecksumError(ValueError):
    """A file's sha256 is not the one its record pins."""


class IncompleteDownloadError(OSError):
    """The server closed the connection before the announced number of bytes arrived."""


class DriveFileUnavailableError(OSError):
    """Google Drive answered with a page instead of the file (deleted, private or over its quota)."""


def is_offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("WHITEBOX_OFFLINE"))
    return any((v or "").strip().lower() in ("1", "true", "yes", "on") for v in flags)


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder of URL and Google Drive downloads."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("WHITEBOX_HOME") or Path.home() / ".cache" / "whitebox") / "checkpoints"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in chunks.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str | None, what: str, advice: str = "") -> Path:
    if expected is not None and (actual := sha256_file(path)) != expected.lower():
        raise ChecksumError(f"sha256 of {what} is {actual}, expected {expected}{advice}")
    return path


def _unavailable(what: str, dest: Path, how: str, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot get {what}: {reason}, and it is not in the cache (looked for {dest}). To supply it by hand, "
        f"{how} and save it as {dest} (or pass pretrained_cfg_overlay=dict(file=PATH) / checkpoint_path=PATH)."
    )


def _fetch(dest: Path, sha256: str | None, what: str, how: str, write: Callable[[Path], str]) -> Path:
    """The cached ``dest``, or ``write(tmp) -> sha256`` into a temporary file beside it, checked, then renamed."""
    if dest.is_file():
        return _check_sha256(dest, sha256, f"cached file {dest}", f"; delete {dest} to download it again")
    if is_offline():
        raise _unavailable(what, dest, how, _OFFLINE)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    try:
        digest = write(Path(tmp))
        if sha256 is not None and digest != sha256.lower():
            raise ChecksumError(f"sha256 of {what} is {digest}, expected {sha256}; the download was not kept")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def download_url(url: str, sha256: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A plain URL, cached under its last path part."""
    dest = cache_root(cache_dir) / (
        Path(urllib.parse.urlparse(url).path).name or hashlib.sha256(url.encode()).hexdigest()[:16]
    )

    def write(tmp: Path) -> str:
        request = urllib.request.Request(url, headers={"User-Agent": "whitebox", "Accept-Encoding": "identity"})
        digest, received = hashlib.sha256(), 0
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response, open(tmp, "wb") as f:
            expected = response.headers.get("Content-Length")
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
        if expected is not None and received != int(expected):
            raise IncompleteDownloadError(
                f"download of {url} broke off: {received} of {expected} bytes; nothing was kept"
            )
        return digest.hexdigest()

    try:
        return _fetch(dest, sha256, url, f"download {url}", write)
    except urllib.error.HTTPError as err:
        raise OSError(f"cannot download {url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise _unavailable(url, dest, f"download {url}", f"the network is unreachable ({reason})") from err


def download_gdrive(file_id: str, sha256: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A Google Drive file, cached as ``gdrive-ID``."""
    import gdown
    import requests

    dest, what = cache_root(cache_dir) / f"gdrive-{file_id}", f"Google Drive file {file_id}"
    how = f"download https://drive.google.com/file/d/{file_id}/view in a browser"

    def write(tmp: Path) -> str:
        digest = hashlib.sha256()
        gdown.download(id=file_id, output=str(tmp), quiet=True, use_cookies=False, hasher=digest, timeout=_TIMEOUT)
        return digest.hexdigest()

    try:
        return _fetch(dest, sha256, what, how, write)
    except gdown.exceptions.FileURLRetrievalError as err:
        reason = " ".join(str(err).split())
        raise DriveFileUnavailableError(f"Google Drive served a page instead of file {file_id} ({reason})") from err
    except gdown.exceptions.DownloadError as err:
        raise IncompleteDownloadError(f"download of {what} broke off ({err}); nothing was kept") from err
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _unavailable(what, dest, how, f"Google Drive is unreachable ({type(err).__name__})") from err
    except requests.RequestException as err:
        raise OSError(f"cannot download {what}: {err}") from err


def download_hf_hub(
    repo_id: str, filename: str, sha256: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A file of a Hub model repository (``org/name`` or ``org/name@revision``)."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo, _, revision = repo_id.partition("@")
    endpoint = os.environ.get("HF_ENDPOINT") or None  # huggingface_hub reads it once, at import
    if cache_dir is None and (os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME")):
        cache_dir = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ["HF_HOME"], "hub")
    try:
        path = hf_hub_download(
            repo,
            filename,
            revision=revision or None,
            cache_dir=cache_dir,
            endpoint=endpoint,
            local_files_only=is_offline(),
        )
    except LocalEntryNotFoundError as err:
        where = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        url = f"{endpoint or constants.ENDPOINT}/{repo}/resolve/{revision or 'main'}/{filename}"
        raise WeightsUnavailableError(
            f"cannot get {filename!r} of Hub repo {repo_id!r}: {_OFFLINE if is_offline() else 'the Hub is unreachable'}"
            f", and it is not in the Hub cache (looked in {where}). To supply it by hand, download {url} and pass "
            "pretrained_cfg_overlay=dict(file=PATH) (for an 'hf-hub:' model: put its config.json and weights in a "
            "folder and use 'local-dir:FOLDER'), or run `hf download` on a connected machine and copy the cache folder."
        ) from err
    except (RepositoryNotFoundError, EntryNotFoundError) as err:  # after: LocalEntryNotFoundError is one
        raise FileNotFoundError(f"the Hub has no file {filename!r} in {repo_id!r}: {str(err).splitlines()[0]}") from err
    try:
        return _check_sha256(Path(path), sha256, f"{repo_id}/{filename}")
    except ChecksumError as err:  # a bad blob: remove it and its link, so that the next call downloads again
        Path(path).resolve().unlink(missing_ok=True)
        Path(path).unlink(missing_ok=True)
        raise ChecksumError(f"{err}; it was removed from the Hub cache") from None


def resolve_pretrained_file(cfg: Any, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local weights a record points to, fetched when needed.

    The first source set is used, in timm's order (``file``, ``hf_hub_id``, ``url``) then ``gdrive_id``;
    a failure is reported, never replaced by another source. ``file`` may be a folder (timm's
    ``local-dir`` source) and ``hf_hub_filename`` may be unset (a saved model's repository): the
    weights are then the first of ``WEIGHT_FILES`` that exists.
    """
    name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if path.is_dir():
            path = next((path / f for f in WEIGHT_FILES if (path / f).is_file()), path / WEIGHT_FILES[0])
        if not path.is_file():
            raise FileNotFoundError(f"{name}: weights file not found: {path}")
        return _check_sha256(path, cfg.sha256, str(path))
    if cfg.hf_hub_id:
        if cfg.hf_hub_filename:
            return download_hf_hub(cfg.hf_hub_id, cfg.hf_hub_filename, cfg.sha256, cache_dir)
        try:
            return download_hf_hub(cfg.hf_hub_id, WEIGHT_FILES[0], cfg.sha256, cache_dir)
        except WeightsUnavailableError:
            raise
        except FileNotFoundError:  # a repository with timm's default pickle only
            return download_hf_hub(cfg.hf_hub_id, WEIGHT_FILES[1], cfg.sha256, cache_dir)
    if cfg.url:
        return download_url(cfg.url, cfg.sha256, cache_dir)
    if not cfg.gdrive_id:
        raise ValueError(f"{name}: the pretrained record names no weights (file, hf_hub_id, url or gdrive_id)")
    try:
        return download_gdrive(cfg.gdrive_id, cfg.sha256, cache_dir)
    except DriveFileUnavailableError as err:
        raise DriveFileUnavailableError(
            f"{name}: {err}. The file may be deleted, private or over its download quota: report it to "
            f"{cfg.origin_url + '/issues' if cfg.origin_url else 'its authors'}. To load a copy by hand, download "
            f"https://drive.google.com/file/d/{cfg.gdrive_id}/view (or a mirror) and pass "
            "pretrained_cfg_overlay=dict(file=PATH)."
        ) from err
