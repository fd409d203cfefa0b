"""A pyzmq CURVE client and server exchanging protocol-1.0 calls through
the proxy (proxy/tests/curve.rs): the server DEALER on the backend, the
client DEALER on the frontend, each with its own key pair and the proxy's
public key. Prints "ok <n>" after n calls answered, or exits non-zero."""
import os
import sys
import uuid

import zmq

assert zmq.has("curve"), "pyzmq without CURVE"
env = os.environ
ctx = zmq.Context()


def dealer(identity, public, secret, endpoint):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.IDENTITY, identity.encode())
    s.curve_serverkey = env["PROXY_PUBLIC"].encode()
    s.curve_publickey = public.encode()
    s.curve_secretkey = secret.encode()
    s.connect(endpoint)
    return s


server_id = env["SERVER_ID"]
client_id = env["CLIENT_ID"]
server = dealer(server_id, env["SERVER_PUBLIC"], env["SERVER_SECRET"], env["BACKEND"])
client = dealer(client_id, env["CLIENT_PUBLIC"], env["CLIENT_SECRET"], env["FRONTEND"])
poller = zmq.Poller()
poller.register(server, zmq.POLLIN)
poller.register(client, zmq.POLLIN)

calls = int(env.get("CALLS", "3"))
answered = 0
deadline_polls = int(env.get("POLLS", "300"))  # 100 ms each
# The first call may come before the server's connection: the proxy holds
# it (--unroutable-wait-ms), and the call is repeated if it is not answered.
pending = None
while answered < calls and deadline_polls > 0:
    if pending is None:
        pending = str(uuid.uuid1())
        client.send_multipart([b"", b"1.0", b"1", server_id.encode(), pending.encode(),
                               b'{"method": "echo", "n": %d}' % answered])
    events = dict(poller.poll(100))
    deadline_polls -= 1
    if server in events:
        frames = server.recv_multipart()
        # ["", "1.0", sender, type, msg_id, payload...]
        assert frames[1] == b"1.0" and frames[3] == b"1", frames
        assert frames[2] == client_id.encode(), frames
        server.send_multipart([b"", b"1.0", b"5", frames[2], frames[4], b'{"result": "pong"}'])
    if client in events:
        frames = client.recv_multipart()
        assert frames[2] == server_id.encode() and frames[3] == b"5", frames
        if frames[4] == (pending or "").encode():
            answered += 1
            pending = None
    elif deadline_polls % 20 == 0:
        pending = None  # not answered in 2 s: call again
if answered < calls:
    print("timeout after %d answers" % answered, flush=True)
    sys.exit(1)
print("ok %d" % answered, flush=True)
