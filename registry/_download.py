"""Fetching weight files: Hugging Face Hub, plain URLs and Google Drive, with a verified, atomic cache.

URL and Google Drive files are cached under ``$WHITEBOX_HOME/checkpoints`` (default
``~/.cache/whitebox/checkpoints``; ``cache_dir=`` overrides). A download goes to a temporary file in
the cache folder, is checked against ``Content-Length`` and the known sha256, flushed to disk and
only then renamed into place: an interrupted, truncated or wrong download leaves nothing behind.
Hub files use ``huggingface_hub`` and its cache (``HF_HOME``, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``,
read at call time).

Offline (``HF_HUB_OFFLINE=1`` or ``WHITEBOX_OFFLINE=1``) nothing is fetched; a file that is not
cached gives ``WeightsUnavailableError`` saying what was looked for, where, and how to supply it.
Google Drive's base address is ``$WHITEBOX_GDRIVE_URL`` (default ``https://drive.google.com/uc``).
"""

from __future__ import annotations

import hashlib
import html.parser
import http.cookiejar
import os
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import IO, Any

from ._pretrained import PretrainedCfg

__all__ = [
    "ChecksumError",
    "IncompleteDownloadError",
    "WeightsUnavailableError",
    "cache_root",
    "download_gdrive",
    "download_hf_hub",
    "download_url",
    "is_offline",
    "resolve_pretrained_file",
    "sha256_file",
]

_CHUNK = 1 << 20
_TIMEOUT = 60.0
_USER_AGENT = "whitebox-weights/0.1"


class WeightsUnavailableError(FileNotFoundError):
    """Weights could not be fetched (offline, or no network) and are not in the cache."""


class ChecksumError(ValueError):
    """A file's sha256 is not the one its pretrained record expects."""


class IncompleteDownloadError(OSError):
    """The server closed the connection before the announced number of bytes arrived."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` or ``WHITEBOX_OFFLINE`` is set (read now, not at import)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("WHITEBOX_OFFLINE"))


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Folder for URL and Google Drive downloads."""
    if cache_dir is not None:
        return Path(cache_dir)
    home = os.environ.get("WHITEBOX_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "whitebox")
    return Path(home) / "checkpoints"


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str | None, source: str) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual.lower() != expected.lower():
        raise ChecksumError(f"sha256 of {source} is {actual}, expected {expected}")


# ----------------------------------------------------------------------------- streaming to the cache
def _stream_to_cache(response: Any, dest: Path, sha256: str | None, source: str) -> Path:
    """Copy an HTTP response into ``dest`` atomically, checking its length and sha256 first."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected_len = response.headers.get("Content-Length")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        received = 0
        with os.fdopen(fd, "wb") as f:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except Exception as err:  # http.client.IncompleteRead, connection reset ...
                    raise IncompleteDownloadError(
                        f"download of {source} broke off after {received} bytes"
                        + (f" of {expected_len}" if expected_len else "")
                        + f" ({type(err).__name__}); nothing was kept"
                    ) from err
                if not chunk:
                    break
                f.write(chunk)
                digest.update(chunk)
                received += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        if expected_len is not None and received != int(expected_len):
            raise IncompleteDownloadError(
                f"download of {source} is truncated: {received} of {expected_len} bytes; nothing was kept"
            )
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise ChecksumError(
                f"sha256 of {source} is {digest.hexdigest()}, expected {sha256}; the download was not kept"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def _cached(dest: Path, sha256: str | None) -> Path | None:
    if not dest.is_file():
        return None
    try:
        _check_sha256(dest, sha256, f"cached file {dest}")
    except ChecksumError as err:
        raise ChecksumError(f"{err}; delete {dest} to download it again") from None
    return dest


def _offline_error(what: str, dest: Path, how: str, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"cannot get {what}: {reason}, and it is not in the cache (looked for {dest}). "
        f"To supply it by hand, {how} and save it as {dest} (or pass pretrained_cfg_overlay=dict(file=PATH) / "
        "checkpoint_path=PATH)."
    )


def _open(opener: urllib.request.OpenerDirector, url: str) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    return opener.open(request, timeout=_TIMEOUT)


def download_url(
    url: str,
    filename: str | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """A plain URL, cached as ``cache_dir / filename`` (default: the URL's last path part)."""
    name = filename or Path(urllib.parse.urlparse(url).path).name or hashlib.sha256(url.encode()).hexdigest()[:16]
    dest = cache_root(cache_dir) / name
    hit = _cached(dest, sha256)
    if hit is not None:
        return hit
    how = f"download {url}"
    if is_offline():
        raise _offline_error(url, dest, how, "offline mode is on (HF_HUB_OFFLINE / WHITEBOX_OFFLINE)")
    try:
        with _open(urllib.request.build_opener(), url) as response:
            return _stream_to_cache(response, dest, sha256, url)
    except urllib.error.HTTPError as err:
        raise OSError(f"cannot download {url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise _offline_error(url, dest, how, f"the network is unreachable ({reason})") from err


# ----------------------------------------------------------------------------- Google Drive
class _ConfirmPage(html.parser.HTMLParser):
    """Collects what Google Drive's "can't scan this file for viruses" page offers to continue."""

    def __init__(self) -> None:
        super().__init__()
        self.form_action: str | None = None
        self.form_fields: dict[str, str] = {}
        self.hrefs: list[str] = []
        self.title = ""
        self._in_form = self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and (a.get("id") == "download-form" or self.form_action is None):
            self.form_action, self.form_fields, self._in_form = a.get("action", ""), {}, True
        elif tag == "input" and self._in_form and a.get("name"):
            self.form_fields[a["name"]] = a.get("value", "")
        elif tag == "a" and "confirm=" in a.get("href", ""):
            self.hrefs.append(a["href"])
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def _is_html(response: Any) -> bool:
    return response.headers.get_content_type() == "text/html"


def _confirm_url(page_url: str, body: str, cookies: http.cookiejar.CookieJar, file_id: str) -> str | None:
    """The address that confirms a large download: a form, a ``confirm=`` link, or a warning cookie."""
    page = _ConfirmPage()
    page.feed(body)
    if page.form_action and "confirm" in page.form_fields:
        action = urllib.parse.urljoin(page_url, page.form_action)
        return f"{action}?{urllib.parse.urlencode(page.form_fields)}"
    if page.hrefs:
        return urllib.parse.urljoin(page_url, page.hrefs[0])
    token = next((c.value for c in cookies if c.name.startswith("download_warning")), None)
    if token:
        return f"{page_url.split('?')[0]}?{urllib.parse.urlencode(dict(export='download', id=file_id, confirm=token))}"
    return None


def download_gdrive(
    file_id: str,
    filename: str | None = None,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """A Google Drive file by id, through Drive's confirmation step for large files."""
    dest = cache_root(cache_dir) / (filename or f"gdrive-{file_id}")
    hit = _cached(dest, sha256)
    if hit is not None:
        return hit
    how = f"download https://drive.google.com/file/d/{file_id}/view in a browser"
    if is_offline():
        raise _offline_error(f"Google Drive file {file_id}", dest, how, "offline mode is on")
    base = os.environ.get("WHITEBOX_GDRIVE_URL", "https://drive.google.com/uc")
    url = f"{base}?{urllib.parse.urlencode(dict(export='download', id=file_id))}"
    cookies = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(cookies))
    source = f"Google Drive file {file_id}"
    try:
        response: IO[bytes] | Any = _open(opener, url)
        try:
            if _is_html(response):
                page_url = response.geturl()
                body = response.read(2_000_000).decode("utf-8", "replace")
                next_url = _confirm_url(page_url, body, cookies, file_id)
                if next_url is None:
                    page = _ConfirmPage()
                    page.feed(body)
                    raise OSError(
                        f"Google Drive did not serve {file_id} (page title: {page.title.strip()!r}); it may be "
                        f"private, deleted or over its download quota. Try again later or {how}."
                    )
                response.close()
                response = _open(opener, next_url)
                if _is_html(response):
                    raise OSError(f"Google Drive answered the confirmed download of {file_id} with a web page; {how}")
            return _stream_to_cache(response, dest, sha256, source)
        finally:
            response.close()
    except urllib.error.HTTPError as err:
        raise OSError(f"cannot download {source}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise _offline_error(source, dest, how, f"the network is unreachable ({reason})") from err


# ----------------------------------------------------------------------------- Hugging Face Hub
def download_hf_hub(
    repo_id: str,
    filename: str,
    sha256: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """A file of a Hub model repository (``org/name`` or ``org/name@revision``), via ``huggingface_hub``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo, _, revision = repo_id.partition("@")
    # read now: huggingface_hub reads these once, at import
    endpoint = os.environ.get("HF_ENDPOINT") or None
    if cache_dir is None and (os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME")):
        cache_dir = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ["HF_HOME"], "hub")
    offline = is_offline()
    try:
        path = Path(
            hf_hub_download(
                repo,
                filename,
                revision=revision or None,
                cache_dir=cache_dir,
                endpoint=endpoint,
                local_files_only=offline,
            )
        )
    except LocalEntryNotFoundError as err:
        from huggingface_hub import constants

        where = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
        reason = "offline mode is on (HF_HUB_OFFLINE / WHITEBOX_OFFLINE)" if offline else "the Hub is unreachable"
        raise WeightsUnavailableError(
            f"cannot get {filename!r} of Hub repo {repo_id!r} from {endpoint or constants.ENDPOINT}: {reason}, and "
            f"it is not in the Hub cache (looked in {where}). To supply it by hand, download "
            f"{(endpoint or 'https://huggingface.co')}/{repo}/resolve/{revision or 'main'}/{filename} "
            "and pass pretrained_cfg_overlay=dict(file=PATH) (for an 'hf-hub:' model: put its config.json and "
            "model.safetensors in a folder and use 'local-dir:FOLDER'), or run `hf download` on a connected "
            "machine and copy the cache folder."
        ) from err
    except (RepositoryNotFoundError, EntryNotFoundError) as err:  # after: LocalEntryNotFoundError is one
        raise OSError(f"the Hub has no file {filename!r} in {repo_id!r}: {str(err).splitlines()[0]}") from err
    try:
        _check_sha256(path, sha256, f"{repo_id}/{filename}")
    except ChecksumError as err:
        # the blob is bad: remove it and its snapshot link so the next call downloads again
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise ChecksumError(f"{err}; it was removed from the Hub cache") from None
    return path


# ----------------------------------------------------------------------------- a record's file
def resolve_pretrained_file(cfg: PretrainedCfg, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The local path of the weights ``cfg`` points to, fetching them when needed.

    Sources are tried in the order ``file``, ``hf_hub_id``, ``url``, ``gdrive_id``; the first that is
    set is used (a failure is reported, never replaced by another source).
    """
    if cfg.file:
        path = Path(cfg.file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{cfg.name}: weights file not found: {path}")
        _check_sha256(path, cfg.sha256, str(path))
        return path
    if cfg.hf_hub_id:
        return download_hf_hub(cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors", cfg.sha256, cache_dir)
    if cfg.url:
        return download_url(cfg.url, cfg.filename, cfg.sha256, cache_dir)
    if cfg.gdrive_id:
        return download_gdrive(cfg.gdrive_id, cfg.filename, cfg.sha256, cache_dir)
    raise ValueError(f"{cfg.name}: the pretrained record names no weights (file, hf_hub_id, url or gdrive_id)")
