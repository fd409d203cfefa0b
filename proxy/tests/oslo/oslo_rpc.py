"""An unmodified oslo.messaging 8.1.4 RPC server or client on the ZeroMQ
driver, for the interop test (proxy/tests/oslo_interop.rs).

    oslo_rpc.py serve  URL TOPIC         # endpoint: echo(**kw), fail(), note(**kw);
                                         # prints "ready", then "note <json>" per note
    oslo_rpc.py call   URL TOPIC METHOD ARGS_JSON [TIMEOUT]   # prints one JSON line
    oslo_rpc.py cast   URL TOPIC METHOD ARGS_JSON             # prints "sent"
    oslo_rpc.py fanout URL TOPIC METHOD ARGS_JSON             # prints "sent"

All use the router proxy (use_router_proxy) found through the Redis
matchmaker of URL (zmq+redis://host:port/). OSLO_ACKS and OSLO_PUBSUB set
rpc_use_acks and use_pub_sub.
"""
import json
import os
import signal
import sys
import tempfile
import threading
import time

from oslo_config import cfg
import oslo_messaging as om


def make_conf(url):
    ini = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
    ini.write(
        "[DEFAULT]\n"
        "transport_url = %s\n"
        "[oslo_messaging_zmq]\n"
        "rpc_zmq_host = 127.0.0.1\n"
        "use_router_proxy = true\n"
        "use_pub_sub = %s\n"
        "rpc_use_acks = %s\n"
        "zmq_target_update = 2\n"
        "zmq_target_expire = 10\n"
        % (
            url,
            os.environ.get("OSLO_PUBSUB", "false"),
            os.environ.get("OSLO_ACKS", "false"),
        )
    )
    ini.close()
    conf = cfg.ConfigOpts()
    conf(["--config-file", ini.name], project="interop")
    return conf


class Endpoint(object):
    def echo(self, ctxt, **kwargs):
        return {"args": kwargs, "server": "oslo", "ctxt": ctxt}

    def fail(self, ctxt, **kwargs):
        raise ValueError("oslo failed on purpose")

    def note(self, ctxt, **kwargs):
        print("note " + json.dumps(kwargs, sort_keys=True), flush=True)


def serve(url, topic):
    conf = make_conf(url)
    transport = om.get_rpc_transport(conf, url=url)
    target = om.Target(topic=topic, server="oslo-server")
    server = om.get_rpc_server(transport, target, [Endpoint()], executor="threading")
    server.start()
    print("ready", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.stop()
    server.wait()
    transport.cleanup()


def call(url, topic, method, args, timeout):
    conf = make_conf(url)
    transport = om.get_rpc_transport(conf, url=url)
    client = om.RPCClient(transport, om.Target(topic=topic), timeout=timeout)
    try:
        result = client.call({"caller": "oslo"}, method, **args)
        print(json.dumps({"ok": result}), flush=True)
    except om.MessagingTimeout as e:
        print(json.dumps({"timeout": str(e)}), flush=True)
    except Exception as e:  # a remote error is re-raised as a local class
        if os.environ.get("OSLO_TRACE"):
            import traceback; traceback.print_exc()
        print(json.dumps({"error": type(e).__name__, "message": str(e)}), flush=True)
    finally:
        transport.cleanup()


def cast(url, topic, method, args, fanout):
    conf = make_conf(url)
    transport = om.get_rpc_transport(conf, url=url)
    client = om.RPCClient(transport, om.Target(topic=topic, fanout=fanout))
    client.cast({"caller": "oslo"}, method, **args)
    # The send is asynchronous: give the socket time before closing it.
    time.sleep(1)
    print("sent", flush=True)
    transport.cleanup()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], sys.argv[3])
    elif sys.argv[1] in ("cast", "fanout"):
        cast(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]), sys.argv[1] == "fanout")
    else:
        timeout = int(sys.argv[6]) if len(sys.argv) > 6 else 30
        call(sys.argv[2], sys.argv[3], sys.argv[4], json.loads(sys.argv[5]), timeout)
    os._exit(0)
