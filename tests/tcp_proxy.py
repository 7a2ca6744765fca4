"""A TCP forwarder in front of the real PostgreSQL, so a test can cut the database off and back."""

import contextlib
import socket
import threading

from servers import free_port


class TcpProxy:
    """Forwards 127.0.0.1:port to target; stop() drops every connection, start() listens again."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
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
                server = socket.create_connection(self.target)
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
