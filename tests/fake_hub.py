"""A tiny stdlib fake of the Hugging Face Hub API for push tests: the endpoints huggingface_hub calls to create
repos, branches and commits.

    with FakeHub() as hub:                      # 127.0.0.1, free port, server thread
        HfApi(endpoint=hub.url, token="x").create_repo("org/name")
        hub.files("org/name")                   # {path: bytes} of the main branch

Routes: repo create, branch create, validate-yaml, preupload (every file "regular", so the client inlines
it base64 in the commit), commit (ndjson), whoami. Everything else answers 404. `hub.requests` logs
(method, path) of every request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "branches": {name: {path: bytes}}}
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id]["branches"][branch]


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _reply(self, status: int, body) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self):
            hub.requests.append(("GET", self.path))
            if urlparse(self.path).path == "/api/whoami-v2":
                return self._reply(200, {"name": "tester", "type": "user", "orgs": []})
            self._reply(404, {"error": "not found"})

        def do_POST(self):
            path = unquote(urlparse(self.path).path)
            hub.requests.append(("POST", path))
            hub.auth_headers.append(self.headers.get("Authorization", ""))
            body = self._body()
            parts = path.strip("/").split("/")
            if path == "/api/repos/create":
                req = json.loads(body or b"{}")
                repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
                if repo_id in hub.repos:
                    return self._reply(409, {"error": "You already created this model repo", "url": ""})
                private = bool(req.get("private")) or req.get("visibility") == "private"
                hub.repos[repo_id] = {"private": private, "branches": {"main": {}}}
                return self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})
            if path == "/api/validate-yaml":
                return self._reply(200, {"errors": [], "warnings": []})
            if len(parts) >= 5 and parts[0] == "api" and parts[1] == "models":
                repo_id, action, rev = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:]) or "main"
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._reply(404, {"error": f"repo {repo_id} not found"})
                if action == "branch":
                    repo["branches"].setdefault(rev, dict(repo["branches"]["main"]))
                    return self._reply(200, {})
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                        "shouldIgnore": False} for f in files]})
                if action == "commit":
                    branch = repo["branches"].setdefault(rev, {})
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item.get("key") == "file":
                            value = item["value"]
                            branch[value["path"]] = base64.b64decode(value["content"])
                    oid = hashlib.sha1(body).hexdigest()
                    return self._reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid})
            self._reply(404, {"error": "not found"})

    return Handler


if __name__ == "__main__":  # manual use: python tests/fake_hub.py
    import time

    with FakeHub() as fake:
        print(fake.url, flush=True)
        while True:
            time.sleep(3600)
