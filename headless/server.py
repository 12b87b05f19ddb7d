"""The ComfyUI server client: queue a prompt with ``POST /prompt``, follow its progress on the ``/ws`` websocket
(a minimal RFC 6455 client, standard library only), and download its outputs through ``/view``."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .runner import WorkflowError


class MiniWebSocket:
    """Just enough RFC 6455 to follow ComfyUI's ``/ws`` (text and binary frames, ping, close)."""

    def __init__(self, url: str, timeout: float = 1.0):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("ws", "http"):
            raise WorkflowError(f"only plain ws:// servers are supported, got {url}")
        port = parts.port or 80
        self.sock = socket.create_connection((parts.hostname, port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        path = parts.path + ("?" + parts.query if parts.query else "")
        request = (f"GET {path} HTTP/1.1\r\nHost: {parts.hostname}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1024)
            if not chunk:
                raise WorkflowError("websocket handshake failed: connection closed")
            head += chunk
        status, self.buffer = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in status.split(b"\r\n")[0]:
            raise WorkflowError(f"websocket handshake failed: {status.splitlines()[0].decode(errors='replace')}")
        self.timeout = timeout
        self.sock.settimeout(timeout)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def _frame(self) -> tuple[bool, int, bytes]:
        first = self._read(2)
        self.sock.settimeout(30)  # the rest of a started frame is on its way
        try:
            fin, opcode, n = bool(first[0] & 0x80), first[0] & 0x0F, first[1] & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if first[1] & 0x80 else None
            payload = self._read(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        finally:
            self.sock.settimeout(self.timeout)
        return fin, opcode, payload

    def recv(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next data message (fragments joined), or None on timeout."""
        try:
            fin, opcode, payload = self._frame()
        except (TimeoutError, socket.timeout):  # noqa: UP041 - py3.10
            return None
        while not fin:  # continuation frames
            fin, _op, more = self._frame()
            payload += more
        if opcode == 0x9:
            self._send(0xA, payload)
            return self.recv()
        if opcode == 0x8:
            raise ConnectionError("websocket closed by the server")
        return opcode, payload

    def close(self) -> None:
        try:
            self._send(0x8)
        except OSError:
            pass
        self.sock.close()


def _http(method: str, url: str, payload: Any = None, timeout: float = 60) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), exc.code
    except urllib.error.URLError as exc:
        raise WorkflowError(f"cannot reach ComfyUI at {url}: {exc.reason}") from exc
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, body


def _format_node_errors(node_errors: dict) -> str:
    lines = []
    for nid, info in (node_errors or {}).items():
        for err in info.get("errors", []):
            lines.append(f"  node {nid} ({info.get('class_type', '?')}): {err.get('message', '')} "
                         f"{err.get('details', '')}".rstrip())
    return "\n".join(lines)


def run_on_server(
    prompt: dict,
    server: str,
    *,
    output_dir: str | os.PathLike | None = "output",
    workflow: dict | None = None,
    timeout: float = 3600,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Submit to ComfyUI, follow it on the websocket, download outputs via ``/view``. Returns
    ``{"prompt_id", "outputs", "files"}``; raises WorkflowError on validation or execution errors."""
    base = server.rstrip("/")
    client_id = str(uuid.uuid4())
    ws_url = base.replace("https://", "wss://").replace("http://", "ws://") + f"/ws?clientId={client_id}"
    try:
        ws = MiniWebSocket(ws_url)
    except (OSError, WorkflowError) as exc:
        if log:
            log(f"websocket unavailable ({exc}); polling /history instead")
        ws = None
    body = {"prompt": prompt, "client_id": client_id}
    if workflow is not None:
        body["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
    status, reply = _http("POST", base + "/prompt", body)
    if status != 200 or not isinstance(reply, dict):
        err = reply.get("error", {}) if isinstance(reply, dict) else {}
        detail = _format_node_errors(reply.get("node_errors", {})) if isinstance(reply, dict) else str(reply)
        raise WorkflowError(f"ComfyUI refused the workflow ({status}): {err.get('message', '')} "
                            f"{err.get('details', '')}\n{detail}".rstrip())
    if reply.get("node_errors"):
        raise WorkflowError("ComfyUI accepted only part of the workflow; node errors:\n"
                            + _format_node_errors(reply["node_errors"]))
    prompt_id = reply["prompt_id"]
    if log:
        log(f"queued prompt {prompt_id}")
    deadline = time.monotonic() + timeout
    error = None
    try:
        while time.monotonic() < deadline:
            if ws is None:
                code, hist = _http("GET", f"{base}/history/{prompt_id}")
                if code == 200 and hist and prompt_id in hist and hist[prompt_id].get("status", {}).get("completed") \
                        is not None and hist[prompt_id]["status"].get("status_str") in ("success", "error"):
                    break
                time.sleep(0.5)
                continue
            frame = ws.recv()
            if frame is None or frame[0] != 0x1:
                continue
            msg = json.loads(frame[1])
            data = msg.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            kind = msg.get("type")
            if kind == "executing" and log and data.get("node"):
                log(f"[{data['node']}] running")
            elif kind == "progress" and log:
                v, m = data.get("value", 0), data.get("max", 1)
                if v == m or v == 1 or v % max(1, m // 10) == 0:
                    log(f"    [{data.get('node')}] {v}/{m}")
            elif kind == "execution_error":
                error = (f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                         f"{data.get('exception_type')}: {data.get('exception_message')}")
                break
            elif kind == "execution_interrupted":
                error = f"interrupted at node {data.get('node_id')} ({data.get('node_type')})"
                break
            elif kind == "execution_success" or (kind == "executing" and data.get("node") is None
                                                 and data.get("prompt_id") == prompt_id):
                break
        else:
            raise WorkflowError(f"timed out after {timeout:.0f}s waiting for prompt {prompt_id}")
    except KeyboardInterrupt:
        _http("POST", base + "/interrupt", {"prompt_id": prompt_id})
        raise
    finally:
        if ws is not None:
            ws.close()
    if error:
        raise WorkflowError(error)
    history = {}
    for _ in range(50):  # /history lags the websocket by a moment
        code, hist = _http("GET", f"{base}/history/{prompt_id}")
        if code == 200 and isinstance(hist, dict) and prompt_id in hist:
            history = hist[prompt_id]
            break
        time.sleep(0.1)
    outputs = history.get("outputs", {})
    status_str = history.get("status", {}).get("status_str")
    if status_str == "error":
        msgs = [m for m in history.get("status", {}).get("messages", []) if m[0] == "execution_error"]
        raise WorkflowError(f"ComfyUI reports an error: {msgs[-1][1] if msgs else history.get('status')}")
    files = []
    if output_dir is not None:
        for _nid, out in outputs.items():
            for key in ("images", "gifs", "videos"):
                for item in out.get(key, []) if isinstance(out, dict) else []:
                    if not isinstance(item, dict) or item.get("type") != "output":
                        continue
                    query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
                    dest = download_target(Path(output_dir), str(item.get("subfolder", "")), str(item["filename"]))
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with urllib.request.urlopen(f"{base}/view?{query}", timeout=120) as resp:
                        data = resp.read()
                    with open(dest, "xb") as fh:  # never replaces a file (the name was checked free above)
                        fh.write(data)
                    files.append(str(dest))
                    if log:
                        log(f"downloaded {dest}")
    return {"prompt_id": prompt_id, "outputs": outputs, "files": files}




def download_target(out: Path, subfolder: str, filename: str) -> Path:
    """Where a server's output goes under --out: names come from the server, so a path that leaves --out
    (``..``, an absolute subfolder) or a file that exists already is refused, never written."""
    base = out.resolve()
    dest = (base / subfolder / filename).resolve()
    if base not in dest.parents:
        raise WorkflowError(f"the server named an output outside --out ({subfolder!r}/{filename!r}); not downloaded")
    if dest.exists():
        raise WorkflowError(f"{dest} exists already; choose another --out (downloads never replace files)")
    return dest
