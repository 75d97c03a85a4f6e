"""A hostile trial: it tries everything a trial should not be able to do, and says what worked.

Run by tests/integration/test_hostile_trial.py as a local trial and as an AML stand-in run. It
prints one JSON line ``{"attempt": "refused" | "DONE: <what it got>"}`` on stdout, then
reports a final result through its own credential (the one thing it may do). Its parameters
tell it what to look for: ``secrets`` (strings no trial may find anywhere) and ``amqp``
(host:port of the broker, to try logging in as guest).
"""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from urllib.parse import urlsplit

import nni

params = nni.get_next_parameter()
url = os.environ["TUNEBUS_METRICS_URL"]
parts = urlsplit(url)
sas = parts.query
container = parts.path.split("/experiments/")[0]  # /<account>/<container>
origin = f"{parts.scheme}://{parts.netloc}"
found: dict[str, str] = {}


def http(method: str, target: str, body: bytes | None = None, **headers: str) -> str:
    request = urllib.request.Request(target, data=body, method=method,
                                     headers={"x-ms-version": "2021-08-06", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return f"DONE: HTTP {reply.status} {reply.read(200)!r}"
    except urllib.error.HTTPError as exc:
        return "refused" if exc.code in (401, 403, 404) else f"DONE?: HTTP {exc.code}"
    except OSError as exc:
        return f"refused ({exc})"


def elsewhere(blob: str) -> str:
    return f"{origin}{container}/{blob}?{sas}"


exp = os.environ["NNI_EXP_ID"]
found["read own results"] = http("GET", url)
found["read own results properties"] = http("HEAD", url)
found["overwrite own results"] = http("PUT", url, b"forged", **{"x-ms-blob-type": "BlockBlob"})
found["re-create own results (truncate)"] = http("PUT", url, b"", **{"x-ms-blob-type": "AppendBlob"})
found["delete own results"] = http("DELETE", url)
found["list the container"] = http("GET", f"{origin}{container}?restype=container&comp=list&{sas}")
for blob in (f"experiments/{exp}/code.tar.gz", f"experiments/{exp}/state.json", "planted.txt",
             f"experiments/{exp}/experiment.json", f"experiments/{exp}/secrets.json"):
    found[f"write {blob}"] = http("PUT", elsewhere(blob), b"x", **{"x-ms-blob-type": "BlockBlob"})
    found[f"read {blob}"] = http("GET", elsewhere(blob))
sibling = f"experiments/{exp}/trials/{params['sibling']}/results.jsonl"
found["append to a sibling's results"] = http(
    "PUT", elsewhere(sibling) + "&comp=appendblock",
    b'{"sequence":0,"kind":"FINAL","value":1e9}\n')

# Secrets in this environment, or in any process's environment or memory it can read.
secrets = [s[::-1] for s in params["secrets"] if s]  # sent reversed, so as not to sit in my own environment
found["a service secret in my environment"] = next(
    (f"DONE: {k}" for k, v in os.environ.items() if any(s in v for s in secrets)), "refused")
leaks = []
ancestors = []


def _started_by_me(pid: int) -> bool:
    """Whether ``pid`` is part of this trial (its session: the submitter starts each trial in one)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[3]) == os.getsid(0)
    except OSError:
        return False


pid = os.getppid()
while pid > 1 and len(ancestors) < 10:
    # The trial's own shell is its own; its parents are the ones not of its making.
    if os.stat(f"/proc/{pid}").st_uid != os.getuid() or not _started_by_me(pid):
        ancestors.append(pid)
    try:
        with open(f"/proc/{pid}/stat") as stat:
            pid = int(stat.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        break
for entry in os.listdir("/proc"):
    if not entry.isdigit() or int(entry) == os.getpid():
        continue
    try:
        with open(f"/proc/{entry}/environ", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        continue
    if any(s in text for s in secrets):
        leaks.append(entry)
found["a service secret in any readable /proc/*/environ"] = f"DONE: pids {leaks}" if leaks else "refused"
readable = []
for pid in ancestors:
    for name in ("environ", "mem"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                if name == "mem":
                    f.seek(0x400000)
                f.read(64)
            readable.append(f"{pid}/{name}")
        except OSError:
            pass
found["read a parent's environ or memory"] = f"DONE: {readable}" if readable else "refused"
found["running as root"] = "DONE" if os.geteuid() == 0 else "refused"


def amqp_login(host: str, port: int, user: str, password: str) -> str:
    """AMQP 0-9-1 up to Connection.Open's answer, by hand (no client library in a trial)."""
    import struct

    def frame(kind: int, channel: int, payload: bytes) -> bytes:
        return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"

    def shortstr(text: str) -> bytes:
        return bytes([len(text)]) + text.encode()

    def longstr(data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + data

    def read_method(sock: socket.socket) -> tuple[int, int]:
        head = b""
        while len(head) < 7:
            chunk = sock.recv(7 - len(head))
            if not chunk:
                raise ConnectionError("closed")
            head += chunk
        size = struct.unpack(">I", head[3:7])[0]
        body = b""
        while len(body) < size + 1:
            chunk = sock.recv(size + 1 - len(body))
            if not chunk:
                raise ConnectionError("closed")
            body += chunk
        return struct.unpack(">HH", body[:4])

    try:
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            read_method(sock)  # Connection.Start
            response = b"\x00" + user.encode() + b"\x00" + password.encode()
            start_ok = struct.pack(">HH", 10, 11) + longstr(b"") + shortstr("PLAIN") + longstr(response) \
                + shortstr("en_US")
            sock.sendall(frame(1, 0, start_ok))
            cls, method = read_method(sock)  # Tune (10, 30) if accepted, else the socket closes
            if (cls, method) != (10, 30):
                return "refused"
            sock.sendall(frame(1, 0, struct.pack(">HHHIH", 10, 31, 1, 131072, 0)))  # one channel
            sock.sendall(frame(1, 0, struct.pack(">HH", 10, 40) + shortstr("/") + shortstr("") + b"\x00"))
            cls, method = read_method(sock)
            return "DONE: Connection.OpenOk" if (cls, method) == (10, 41) else "refused"
    except (OSError, ConnectionError, struct.error) as exc:
        return f"refused ({type(exc).__name__})"


if params.get("amqp"):
    host, _, port = params["amqp"].rpartition(":")
    found["log in to the broker as guest"] = amqp_login(host, int(port), "guest", "guest")

# Swap its own stdout log for a link to a root-only file (which a root submitter would upload).
try:
    log_path = os.readlink("/proc/self/fd/1")
    link = log_path + ".swap"
    os.symlink("/etc/shadow", link)
    os.replace(link, log_path)
    found["swap my log for a link"] = f"DONE: {log_path}"
except OSError as exc:
    found["swap my log for a link"] = f"refused ({type(exc).__name__})"

# A local trial's code folder (its working directory) is read-only to it: it cannot plant a
# file there nor change its own script (which a later attempt of it would run).
if params.get("code_read_only"):
    for attempt, path in (("plant a file in my code folder", "planted.py"),
                          ("change my own script", os.path.abspath(__file__))):
        try:
            with open(path, "a") as planted:
                planted.write("# planted\n")
            found[attempt] = f"DONE: {path}"
        except OSError as exc:
            found[attempt] = f"refused ({type(exc).__name__})"

# What it may do: write its own output folder, and report through its own credential.
with open(os.path.join(os.environ["NNI_OUTPUT_DIR"], "mine.txt"), "w") as own:
    own.write("ok")
print(json.dumps(found), flush=True)
nni.report_final_result(float(sum(v.startswith("refused") for v in found.values())))
