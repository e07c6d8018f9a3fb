"""A small HTTP server on 127.0.0.1 for download tests: a plain file server, Google Drive and the Hub.

It answers as the real services do for what whitebox uses, so the real download code runs:

- ``/files/NAME``: the bytes of ``files[NAME]``; ``truncate[NAME] = n`` announces the full length
  but sends only ``n`` bytes and closes the connection.
- Google Drive, over HTTPS through this server as a proxy (``HTTPS_PROXY``): ``CONNECT`` tunnels to
  ``drive.google.com`` and ``drive.usercontent.google.com`` are answered with a certificate from a test
  CA whose file is ``ca_path`` (for ``REQUESTS_CA_BUNDLE``), so that ``gdown`` runs unchanged.
  ``drive[ID] = (bytes, mode)`` with mode ``'direct'`` (a small file), ``'form'`` (the "can't scan
  this file for viruses" page with a download form, as Drive serves it since 2024), ``'quota'`` (the
  "too many users" error page) or ``'missing'`` (a 404 page, as for a deleted file).
- ``/{org}/{name}/resolve/{rev}/{file}`` (HEAD and GET): the Hub's file route, with the
  ``X-Repo-Commit`` and ``ETag`` headers ``huggingface_hub`` needs; ``/api/repos/create``,
  ``/api/validate-yaml``, ``/api/models/{repo}/preupload/{rev}`` and ``/api/models/{repo}/commit/{rev}`` take uploads
  (every file as a regular, base64 file, no LFS).

``requests`` records every (method, path) served.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
DRIVE_HOSTS = ("drive.google.com", "drive.usercontent.google.com")
CONFIRM = "t0k3n"


class LocalServer:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: dict[str, int] = {}
        self.drive: dict[str, tuple[bytes, str]] = {}
        self.hub: dict[str, dict[str, bytes]] = {}  # repo id -> path -> bytes
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        import trustme

        ca = trustme.CA()
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*DRIVE_HOSTS).configure_cert(self.tls)
        self._ca_dir = tempfile.TemporaryDirectory()
        self.ca_path = str(Path(self._ca_dir.name) / "ca.pem")
        ca.cert_pem.write_to_path(self.ca_path)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LocalServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._ca_dir.cleanup()

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self.stop()


def _make_handler(state: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        # ------------------------------------------------------------------ helpers
        def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj: object, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _file(self, data: bytes, name: str, cut: int | None = None) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Disposition", f'attachment; filename="{name}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if cut is None:
                self.wfile.write(data)
            else:
                self.wfile.write(data[:cut])
                self.wfile.flush()
                self.close_connection = True

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        # ------------------------------------------------------------------ routes
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_CONNECT(self) -> None:  # an HTTPS tunnel to Google Drive: answered here, over TLS
            if self.path.partition(":")[0] not in DRIVE_HOSTS:
                return self._send(403, b"only Google Drive is proxied", "text/plain")
            self.send_response(200, "Connection established")
            self.end_headers()
            tunnel = state.tls.wrap_socket(self.connection, server_side=True)
            Handler(tunnel, self.client_address, self.server)  # serves the tunnelled requests
            self.close_connection = True

        def do_GET(self) -> None:
            url = urllib.parse.urlparse(self.path)
            query = dict(urllib.parse.parse_qsl(url.query))
            state.requests.append((self.command, url.path))
            parts = url.path.strip("/").split("/")
            name = "/".join(parts[1:])  # files["a/w.pth"] is served at /files/a/w.pth
            if parts[0] == "files" and name in state.files:
                return self._file(state.files[name], parts[-1], state.truncate.get(name))
            if self.headers.get("Host", "").partition(":")[0] in DRIVE_HOSTS and query.get("id") in state.drive:
                return self._drive(query)
            if len(parts) >= 5 and parts[2] == "resolve":
                return self._hub_file("/".join(parts[:2]), "/".join(parts[4:]))
            self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            url = urllib.parse.urlparse(self.path)
            state.requests.append(("POST", url.path))
            body = self._body()
            parts = url.path.strip("/").split("/")
            if url.path == "/api/repos/create":
                info = json.loads(body)
                repo = f"{info['organization']}/{info['name']}" if info.get("organization") else info["name"]
                state.hub.setdefault(repo, {})
                return self._json({"url": f"{state.url}/{repo}", "name": repo})
            if url.path == "/api/validate-yaml":  # the model card's metadata: accepted as is
                return self._json({"errors": [], "warnings": []})
            if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "preupload":
                files = json.loads(body)["files"]
                return self._json(
                    {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "commit":
                repo = f"{parts[2]}/{parts[3]}"
                for line in body.splitlines():
                    item = json.loads(line)
                    if item.get("key") == "file":
                        value = item["value"]
                        state.hub.setdefault(repo, {})[value["path"]] = base64.b64decode(value["content"])
                return self._json({"commitUrl": f"{state.url}/{repo}/commit/{COMMIT}", "commitOid": COMMIT})
            self._send(404, b"not found", "text/plain")

        def _hub_file(self, repo: str, path: str) -> None:
            files = state.hub.get(repo)
            if files is None:
                return self._send(404, b"", "text/plain", {"X-Error-Code": "RepoNotFound"})
            if path not in files:
                return self._send(404, b"", "text/plain", {"X-Error-Code": "EntryNotFound"})
            data = files[path]
            etag = hashlib.sha256(data).hexdigest()
            self._send(200, data, "application/octet-stream", {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'})

        def _drive(self, query: dict[str, str]) -> None:
            data, mode = state.drive[query["id"]]
            if mode == "direct" or query.get("confirm") == CONFIRM:
                return self._file(data, f"{query['id']}.pth")
            if mode == "form":
                page = (
                    "<html><head><title>Google Drive - Virus scan warning</title></head><body>"
                    "<p>Google Drive can't scan this file for viruses.</p>"
                    '<form id="download-form" action="https://drive.usercontent.google.com/download" method="get">'
                    '<input type="submit" value="Download anyway"/>'
                    f'<input type="hidden" name="id" value="{query["id"]}">'
                    '<input type="hidden" name="export" value="download">'
                    f'<input type="hidden" name="confirm" value="{CONFIRM}">'
                    '<input type="hidden" name="uuid" value="1234-abcd"></form></body></html>'
                )
                return self._send(200, page.encode(), "text/html; charset=utf-8")
            if mode == "quota":
                page = (
                    "<html><head><title>Google Drive - Quota exceeded</title></head><body>"
                    '<p class="uc-error-caption">Sorry, you can&#39;t view or download this file at this time.</p>'
                    '<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently.</p>'
                    "</body></html>"
                )
                return self._send(200, page.encode(), "text/html; charset=utf-8")
            page = "<html><head><title>Google Drive - Page Not Found</title></head><body>not found</body></html>"
            return self._send(404, page.encode(), "text/html; charset=utf-8")

    return Handler
