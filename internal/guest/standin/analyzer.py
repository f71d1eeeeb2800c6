"""sandfleet's stand-in analyzer.

Not CAPE's analyzer: it analyses nothing. It speaks CAPE's result-server
protocol the way CAPE's analyzer does, so that someone trying sandfleet
without CAPE sees a whole analysis go through: the host hands the guest this
folder and analysis.conf, the agent runs this script, and the result server
receives an analysis log (LOG), an uploaded file (FILE 2) and a behaviour
stream (BSON <pid>).

It reads analysis.conf from its own folder, connects to the result server
named there (ip, port), says what it was given, uploads a small report to
files/, sends a few BSON bytes, waits until the analysis timeout or a few
seconds (the shorter), and exits 0. Any error exits 1, with the reason on
stderr and, when the connection allows, in the log. The agent reports the
exit code through GET /status.

Python 3, standard library only.
"""

import configparser
import datetime
import hashlib
import os
import platform
import socket
import struct
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
RUN_FOR = 3  # seconds, at most: a stand-in has nothing to watch
CONNECT_FOR = 30  # seconds of retries before the result server counts as unreachable


def load_config():
    parser = configparser.ConfigParser(interpolation=None)
    path = os.path.join(HERE, "analysis.conf")
    if not parser.read(path):
        raise RuntimeError(f"no analysis.conf at {path}")
    return parser["analysis"]


def connect(cfg, first_line):
    """Open a result-server connection and send its command line.

    CAPE's analyzer retries until the result server answers; so does this,
    for a while."""
    address = (cfg["ip"], int(cfg["port"]))
    deadline = time.monotonic() + CONNECT_FOR
    while True:
        try:
            sock = socket.create_connection(address, timeout=5)
            break
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"result server {address[0]}:{address[1]} unreachable: {exc}") from exc
            time.sleep(0.2)
    sock.settimeout(30)
    sock.sendall(first_line)
    return sock


class Log:
    """The analysis log, as CAPE's analyzer formats its lines."""

    def __init__(self, sock):
        self.sock = sock

    def line(self, level, message):
        now = datetime.datetime.now()
        stamp = now.strftime("%Y-%m-%d %H:%M:%S") + f",{now.microsecond // 1000:03d}"
        self.sock.sendall(f"{stamp} [sandfleet.standin] {level}: {message}\n".encode("utf-8", "replace"))

    def info(self, message):
        self.line("INFO", message)

    def error(self, message):
        self.line("ERROR", message)

    def close(self):
        self.sock.shutdown(socket.SHUT_WR)
        self.sock.close()


def upload(cfg, dump_path, guest_path, data, pid):
    """A FILE 2 upload: the path in the analysis folder, then the six header
    lines of version 2 (original path, pids, ppids, metadata, category,
    duplicated), then the bytes."""
    header = b"FILE 2\n" + b"\n".join(
        [
            dump_path.encode(),
            guest_path.encode("utf-8", "replace"),
            str(pid).encode(),
            str(os.getppid()).encode(),
            guest_path.encode("utf-8", "replace"),
            b"files",
            b"0",
        ]
    ) + b"\n"
    sock = connect(cfg, header)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    sock.close()


def bson_doc(items):
    """A BSON document of strings, 32-bit ints and lists of strings: enough
    for one of the monitor's "info" messages."""
    body = b""
    for key, value in items:
        name = key.encode() + b"\x00"
        if isinstance(value, int):
            body += b"\x10" + name + struct.pack("<i", value)
        elif isinstance(value, str):
            raw = value.encode() + b"\x00"
            body += b"\x02" + name + struct.pack("<i", len(raw)) + raw
        else:
            body += b"\x04" + name + bson_doc([(str(i), v) for i, v in enumerate(value)])
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


def behaviour(cfg, pid):
    """A BSON <pid> stream holding one monitor "info" message, as CAPE's
    monitor starts each process log."""
    message = bson_doc(
        [
            ("I", 0),
            ("name", "__process__"),
            ("type", "info"),
            ("category", "__notification__"),
            ("args", ["ProcessIdentifier", "ParentProcessIdentifier", "ModulePath"]),
        ]
    )
    sock = connect(cfg, f"BSON {pid}\n".encode())
    sock.sendall(message)
    sock.shutdown(socket.SHUT_WR)
    sock.close()


def sample_path(cfg):
    # Where the host stored the sample: TEMP on Windows, the temporary
    # folder elsewhere (CAPE's analyzers look there too).
    return os.path.join(tempfile.gettempdir(), cfg.get("file_name", ""))


def run(cfg, log):
    pid = os.getpid()
    log.info(f"sandfleet stand-in analyzer started in {HERE}: pid {pid}, Python {platform.python_version()} on {platform.system()}")
    log.info(
        "task {}: category {}, target {}, package {}, options {}".format(
            cfg.get("id"), cfg.get("category"), cfg.get("target"), cfg.get("package") or "(none)", cfg.get("options") or "(none)"
        )
    )
    report = [
        "sandfleet stand-in analyzer report",
        f"task: {cfg.get('id')}",
        f"category: {cfg.get('category')}",
        f"target: {cfg.get('target')}",
        f"package: {cfg.get('package')}",
        f"options: {cfg.get('options')}",
        f"timeout: {cfg.get('timeout')}",
        f"clock: {cfg.get('clock')}",
    ]
    if cfg.get("category") == "file":
        path = sample_path(cfg)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise RuntimeError(f"the sample is not where the host put it: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        log.info(f"sample {path}: {len(data)} bytes, sha256 {digest}, type {cfg.get('file_type') or '(unknown)'}")
        report += [f"sample: {path}", f"size: {len(data)}", f"sha256: {digest}"]
    body = ("\n".join(report) + "\n").encode("utf-8", "replace")
    dump_path = "files/" + hashlib.sha256(body).hexdigest()
    guest_path = os.path.join(tempfile.gettempdir(), "sandfleet-standin-report.txt")
    upload(cfg, dump_path, guest_path, body, pid)
    log.info(f"uploaded {len(body)} bytes to {dump_path}")
    behaviour(cfg, pid)
    log.info(f"sent a behaviour log for pid {pid}")

    try:
        timeout = int(cfg.get("timeout", RUN_FOR))
    except ValueError:
        timeout = RUN_FOR
    wait = max(0, min(timeout, RUN_FOR))
    log.info(f"waiting {wait} s")
    time.sleep(wait)
    log.info("analysis completed")


def main():
    log = None
    try:
        cfg = load_config()
        log = Log(connect(cfg, b"LOG\n"))
        run(cfg, log)
        log.close()
        return 0
    except Exception as exc:
        sys.stderr.write(traceback.format_exc())
        if log is not None:
            try:
                log.error(f"stand-in analyzer failed: {exc}")
                log.close()
            except OSError:
                pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
