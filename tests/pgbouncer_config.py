"""deploy/pgbouncer.ini as the tests and the benchmark run it: only addresses and authentication replaced.

No test library is imported here, so `make bench` (which installs none) uses it too.
"""

import os
import re
import tempfile
from pathlib import Path

PGBOUNCER_INI = Path(__file__).resolve().parent.parent / "deploy" / "pgbouncer.ini"
HOST = "127.0.0.1"


def pgbouncer_ini(listen_port, server_host, server_port, auth_file):
    """deploy/pgbouncer.ini listening on HOST:listen_port in front of the server, trusting its users."""
    values = {
        "*": f"host={server_host} port={server_port}",
        "listen_addr": HOST,
        "listen_port": listen_port,
        "auth_type": "trust",
        "auth_file": auth_file,
    }
    text = PGBOUNCER_INI.read_text()
    for key, value in values.items():
        line = f"{key} = {value}"
        text, count = re.subn(rf"(?m)^{re.escape(key)} = .*$", lambda _match, line=line: line, text)
        assert count == 1, f"deploy/pgbouncer.ini should set {key} once"
    return text


def prepared_directory(listen_port, server_host, server_port, user):
    """A new directory holding the config and its auth file; returns the config's path.

    pgbouncer refuses to run as root, so run as root it runs as nobody, who must read these files.
    """
    directory = Path(tempfile.mkdtemp(prefix="identity-pgbouncer-"))
    directory.chmod(0o755)
    auth_file = directory / "userlist.txt"
    auth_file.write_text(f'"{user}" ""\n')
    ini = directory / "pgbouncer.ini"
    ini.write_text(pgbouncer_ini(listen_port, server_host, server_port, auth_file))
    return ini


def command(program, ini):
    """The command line that runs pgbouncer with ini, as nobody when we are root."""
    return [program, *(["-u", "nobody"] if os.geteuid() == 0 else []), str(ini)]
