"""A TCP forwarder in front of the real PostgreSQL, so a test can cut the database off and back."""

import contextlib
import socket
import threading

from psycopg2.extensions import parse_dsn

from servers import free_port


def server_address(database_url):
    """(family, address) of the server a libpq URL names: a TCP host, or a unix socket's directory."""
    settings = parse_dsn(database_url)
    host, port = settings.get("host", "127.0.0.1"), int(settings.get("port", 5432))
    if host.startswith("/"):  # the embedded server listens on a unix socket only
        return socket.AF_UNIX, f"{host}/.s.PGSQL.{port}"
    return socket.AF_INET, (host, port)


class TcpProxy:
    """Forwards 127.0.0.1:port to the database's server; stop() drops every connection, start() re-listens."""

    def __init__(self, database_url):
        self.family, self.target = server_address(database_url)
        self.port = free_port()
        self.sockets = []
        self.listener = None

    def start(self):
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def stop(self):
        for sock in [self.listener, *self.sockets]:
            close_quietly(sock)
        self.sockets = []

    def _accept(self, listener):
        while True:
            try:
                client = listener.accept()[0]
                server = socket.socket(self.family, socket.SOCK_STREAM)
                server.connect(self.target)
            except OSError:
                return  # the listener was closed by stop()
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=pipe, args=(source, sink), daemon=True).start()


def pipe(source, sink):
    """Copy bytes one way until either side closes."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    for sock in (source, sink):
        close_quietly(sock)


def close_quietly(sock):
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
