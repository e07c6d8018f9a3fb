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

import contextlib
import hashlib
import os
import re
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


# ----------------------------------------------------------------------------- names, checked before any request
_HUB_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9_-])?")
_REV_PART = re.compile(r"[A-Za-z0-9._-]+")
_FILE_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=@ -]*")
_DRIVE_ID = re.compile(r"[A-Za-z0-9_-]{1,200}")


def check_hub_repo(repo_id: str) -> tuple[str, str | None]:
    """``org/name`` or ``org/name@revision``, split; anything that could leave the cache folder is refused.

    Raises:
        ValueError: an empty part, a part with characters other than letters, digits, ``._-``, ``..`` or
            ``--`` in a name, more than one ``/`` in the repository or a revision part that is ``..``.
    """
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"Hub repository {repo_id!r} is empty; expected 'org/name' or 'org/name@revision'")
    repo, at, revision = repo_id.partition("@")
    parts = repo.split("/")
    bad = [x for x in parts if not _HUB_PART.fullmatch(x) or ".." in x or "--" in x or len(x) > 96]
    if len(parts) > 2 or bad or not repo:
        raise ValueError(
            f"invalid Hub repository {repo!r} in {repo_id!r}: expected 'org/name' (or 'name'), each part letters, "
            "digits and '._-', not starting or ending with '.' or '-', without '..' or '--'"
        )
    if at:
        rev_parts = revision.split("/")
        if not revision or any(not _REV_PART.fullmatch(x) or x in (".", "..") for x in rev_parts):
            raise ValueError(
                f"invalid revision {revision!r} in {repo_id!r}: expected a branch, tag or commit (letters, digits, "
                "'._-', parts separated by '/', none empty, '.' or '..')"
            )
    return repo, revision if at else None


def check_relative_file(name: str, what: str = "file name") -> str:
    """A relative file path inside a repository: parts of letters, digits and ``._+=@ -``; no ``..``, no root."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if not name or any(not _FILE_PART.fullmatch(x) or x in (".", "..") for x in parts):
        raise ValueError(
            f"invalid {what} {name!r}: expected a relative path such as 'model.safetensors' or 'torch/w.pth' "
            "(parts of letters, digits and '._+=@ -', not starting with '.', none empty or '..', no '\\')"
        )
    return name


def check_url(url: str) -> str:
    """An ``http(s)://host/...`` address (a local file is ``file=``, not a URL)."""
    parsed = urllib.parse.urlparse(url) if isinstance(url, str) else None
    if (
        parsed is None
        or parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or any(c in url for c in "\0\n\r")
    ):
        raise ValueError(
            f"invalid weights url {url!r}: expected http:// or https:// with a host (a local file: file=PATH)"
        )
    return url


def check_gdrive_id(file_id: str) -> str:
    if not isinstance(file_id, str) or not _DRIVE_ID.fullmatch(file_id):
        raise ValueError(f"invalid Google Drive file id {file_id!r}: expected 1-200 letters, digits, '_' or '-'")
    return file_id


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
        f"{how} and save it as {dest}."
    )


def _route(name: str, cfg: Any) -> str:
    """The calls that load a copy of ``name``'s weights from anywhere as that tag's model (its ``model_args`` too)."""
    args = getattr(cfg, "model_args", None) or {}
    built = f" (both build it with {', '.join(f'{k}={v!r}' for k, v in args.items())})" if args else ""
    return (
        f"Or load a copy from anywhere as {name}: create_model({name!r}, pretrained=True, "
        f"pretrained_cfg_overlay=dict(file=PATH)) or create_model({name!r}, checkpoint_path=PATH){built}."
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
        if not dest.exists() and dest.parent.name.startswith("url-"):  # a failed URL leaves no empty entry
            with contextlib.suppress(OSError):
                dest.parent.rmdir()
    return dest


def download_url(url: str, sha256: str | None = None, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A plain ``http(s)`` URL, cached as ``url-HASH/NAME``: HASH of the whole address, NAME its last path part.

    Two addresses with the same file name (``.../a/model.safetensors``, ``.../b/model.safetensors``) are
    two cache entries; a name with characters outside ``A-Za-z0-9._-`` is stored as ``weights``.
    """
    check_url(url)
    name = Path(urllib.parse.urlparse(url).path).name
    name = name if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name) and name not in (".", "..") else "weights"
    dest = cache_root(cache_dir) / f"url-{hashlib.sha256(url.encode()).hexdigest()[:16]}" / name

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

    dest, what = cache_root(cache_dir) / f"gdrive-{check_gdrive_id(file_id)}", f"Google Drive file {file_id}"
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

    repo, revision = check_hub_repo(repo_id)
    check_relative_file(filename)
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


def check_sources(cfg: Any) -> None:
    """Every weight source a record (with its overlay) names, checked before anything is fetched or written."""
    for key in ("file", "url", "hf_hub_id", "hf_hub_filename", "gdrive_id", "sha256"):
        value = getattr(cfg, key, None)
        if value is not None and not isinstance(value, (str, os.PathLike) if key == "file" else str):
            raise ValueError(f"pretrained record field {key!r} is a {type(value).__name__}, expected a string")
    if cfg.hf_hub_id is not None:  # an empty string is an empty part, not "no source"
        check_hub_repo(cfg.hf_hub_id)
    if cfg.hf_hub_filename is not None:
        check_relative_file(cfg.hf_hub_filename, "hf_hub_filename")
    if cfg.url is not None:
        check_url(cfg.url)
    if getattr(cfg, "gdrive_id", None) is not None:
        check_gdrive_id(cfg.gdrive_id)
    if getattr(cfg, "sha256", None) is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", cfg.sha256):
        raise ValueError(f"sha256 {cfg.sha256!r} is not 64 hexadecimal digits")


def resolve_pretrained_file(cfg: Any, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local weights a record points to, fetched when needed.

    The first source set is used, in timm's order (``file``, ``hf_hub_id``, ``url``) then ``gdrive_id``;
    a failure is reported, never replaced by another source. ``file`` may be a folder (timm's
    ``local-dir`` source) and ``hf_hub_filename`` may be unset (a saved model's repository): the
    weights are then the first of ``WEIGHT_FILES`` that exists. When a file cannot be had, the error
    names the calls that load a copy as the tag's model (with its ``model_args``).
    """
    name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    check_sources(cfg)
    try:
        return _resolve(cfg, cache_dir, name)
    except WeightsUnavailableError as err:
        if getattr(cfg, "source", None) in ("hf-hub", "local-dir"):  # a saved model: its message says how
            raise
        raise WeightsUnavailableError(f"{name}: {err} {_route(name, cfg)}") from err


def _resolve(cfg: Any, cache_dir: str | os.PathLike[str] | None, name: str) -> Path:
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
            f"https://drive.google.com/file/d/{cfg.gdrive_id}/view (or a mirror). {_route(name, cfg)}"
        ) from err
