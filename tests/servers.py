"""Real servers for end-to-end tests: gunicorn as production starts it, nginx with deploy/nginx.conf, Redis,
PgBouncer with deploy/pgbouncer.ini.

Each runs as a child process on free loopback ports, logging into the test's temporary directory,
and is stopped by the caller (see stop()).
"""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

import pgbouncer_config

REPO_ROOT = Path(__file__).resolve().parent.parent
NGINX_CONF = REPO_ROOT / "deploy" / "nginx.conf"
HOST = "127.0.0.1"
STARTUP_SECONDS = 20
STOP_SECONDS = 30
# The lines deploy/nginx.conf marks "tests replace": the upstream's servers (each with its parameters)
# and where nginx listens.
NGINX_UPSTREAM = re.compile(r"(?m)^(\s*)server \S+ ([^;]*);\s*# tests replace: one line per app host\n")
NGINX_LISTEN = "listen 8080;"


def free_port():
    """A TCP port on HOST that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def program(name):
    """The path of a Debian program; `make test` and .ci/run install the package when it is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} is not installed: `make test` installs it (apt-get install {name})")
    return path


def start(command, log, env=None):
    """Start command with its output in the file log."""
    with log.open("w") as output:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT)


def wait_until(ready, process, what, log):
    """Return once ready() holds; fail with the log if the process exits or stays unready too long."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.1)
    stop(process)
    code = process.returncode
    pytest.fail(f"{what} was not ready within {STARTUP_SECONDS} s (exit code {code}):\n{log.read_text()}")


def stop(process):
    """SIGTERM, the way a supervisor stops a server; killed if it takes too long."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def healthy(port):
    """Whether GET /healthz answers 200 on port."""
    connection = http.client.HTTPConnection(HOST, port, timeout=1)
    try:
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def listening(port):
    """Whether something accepts TCP connections on port."""
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


def send(port, method, path, body=None, headers=None, source=HOST, timeout=10):
    """One request on a connection of its own, made from the loopback address source.

    Returns (status, headers, body), the body parsed when it is JSON, else as text. A request body
    that is an iterable of bytes is sent chunked.
    """
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout, source_address=(source, 0))
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    is_json = response.headers.get_content_type() == "application/json"
    return (
        response.status,
        response.headers,
        json.loads(answer) if is_json else answer.decode(errors="replace"),
    )


def send_raw(port, data, timeout=10):
    """Send data, bytes a client library would refuse to send, on a connection of its own.

    Returns (status, headers with lower-case names, body) of the one answer, read until the server
    closes the connection (a valid request should say `Connection: close`).
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


def post_json(port, payload, **kwargs):
    """POST /identify with payload as JSON; returns what send() returns."""
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return send(port, "POST", "/identify", json.dumps(payload), headers, **kwargs)


def start_gunicorn(tmp_path, port, **settings):
    """gunicorn with gunicorn.conf.py on port, the settings as its environment; returns (process, log)."""
    env = {**os.environ, "PORT": str(port), **{name: str(value) for name, value in settings.items()}}
    # gunicorn 27 puts a control socket under XDG_RUNTIME_DIR: keep it off any server already running.
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    log = tmp_path / f"gunicorn-{port}.log"
    process = start([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], log, env)
    wait_until(lambda: healthy(port), process, "gunicorn", log)
    return process, log


def replace_once(text, old, new):
    """text with old replaced by new, which must occur exactly once."""
    assert text.count(old) == 1, f"deploy/nginx.conf should contain {old!r} once"
    return text.replace(old, new)


def upstream_servers(text, ports):
    """text with the upstream's marked server lines replaced by one like them for each port."""
    lines = NGINX_UPSTREAM.findall(text)
    assert lines, "deploy/nginx.conf should mark its upstream's servers"
    indent, parameters = lines[0]
    servers = "".join(f"{indent}server {HOST}:{port} {parameters};\n" for port in ports)
    return NGINX_UPSTREAM.sub("", text).replace("upstream identity {\n", "upstream identity {\n" + servers, 1)


def nginx_conf(listen_port, upstream_ports, **directives):
    """deploy/nginx.conf with the marked addresses replaced, and each directive given a new value."""
    text = replace_once(NGINX_CONF.read_text(), NGINX_LISTEN, f"listen {HOST}:{listen_port};")
    ports = [upstream_ports] if isinstance(upstream_ports, int) else upstream_ports
    text = upstream_servers(text, ports)
    for name, value in directives.items():
        text, count = re.subn(rf"(?m)^(\s*{name}) [^;]+;", rf"\1 {value};", text)
        assert count == 1, f"deploy/nginx.conf should set {name} once"
    return text


def start_nginx(prefix, log, upstream_ports, **directives):
    """Debian's nginx with deploy/nginx.conf in front of one port or a list of them; returns (process, port).

    Started as root, like production it runs its workers as nobody, who must reach the temporary
    directories it makes under prefix: so prefix must not lie in a directory only root may enter.
    """
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(port, upstream_ports, **directives))
    command = [program("nginx"), "-c", str(conf), "-p", f"{prefix}/", "-e", "stderr", "-g", "daemon off;"]
    process = start(command, log)
    wait_until(lambda: listening(port), process, "nginx", log)
    return process, port


def start_redis(tmp_path, port=None):
    """A Redis of the test's own on port (or a free one), nothing kept on disk; returns (process, port)."""
    port = port or free_port()
    log = tmp_path / f"redis-{port}.log"
    command = [program("redis-server"), "--bind", HOST, "--port", str(port)]
    command += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    process = start(command, log)
    client = redis.Redis(host=HOST, port=port, socket_timeout=1)

    def answers():
        try:
            return client.ping()
        except redis.RedisError:
            return False

    wait_until(answers, process, "redis-server", log)
    return process, port


def start_pgbouncer(server_host, server_port, user):
    """Debian's pgbouncer with deploy/pgbouncer.ini in front of the server; returns (process, port, ini)."""
    port = free_port()
    ini = pgbouncer_config.prepared_directory(port, server_host, server_port, user)
    log = ini.parent / "pgbouncer.log"
    process = start(pgbouncer_config.command(program("pgbouncer"), ini), log)
    wait_until(lambda: listening(port), process, "pgbouncer", log)
    return process, port, ini
