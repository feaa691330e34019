#!/usr/bin/python3
"""A gRPC server and client (Python grpcio, C-core) for Sluice's tests.

No generated code: methods take and return raw bytes.

  peer.py server NAME            listens on 127.0.0.1 (any port), prints "listening PORT"
  peer.py client ADDR [KEY]      runs the scenario against ADDR, prints one JSON object
"""
import json
import sys
import threading
from concurrent import futures

import grpc

flaky_seen = {}
flaky_lock = threading.Lock()


def serve(name):
    def unary(req, ctx):
        ctx.set_trailing_metadata((("x-served-by", name),))
        return name.encode() + b":" + req

    def server_stream(req, ctx):
        for i in range(int(req.decode())):
            yield b"%d" % i

    def fail(req, ctx):
        ctx.abort(getattr(grpc.StatusCode, req.decode()), "failed on purpose by " + name)

    def flaky(req, ctx):
        key, n = req.decode().split(":")
        with flaky_lock:
            flaky_seen[key] = flaky_seen.get(key, 0) + 1
            seen = flaky_seen[key]
        if seen <= int(n):
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "not yet (%d)" % seen)
        return b"ok after %d" % seen

    def bidi(reqs, ctx):
        for r in reqs:
            yield r[::-1]

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("sluice.Test", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("listening %d" % port, flush=True)
    server.wait_for_termination()


def client(addr, key):
    out = {}
    with grpc.insecure_channel(addr) as ch:
        payload = bytes(range(256)) * 400  # 100 KiB
        call = ch.unary_unary("/sluice.Test/Unary")
        resp, info = call.with_call(payload, timeout=10)
        out["unary_ok"] = resp.endswith(payload)
        out["unary_from"] = resp.split(b":", 1)[0].decode()
        out["unary_trailer"] = dict(info.trailing_metadata()).get("x-served-by")
        msgs = list(ch.unary_stream("/sluice.Test/ServerStream")(b"100", timeout=10))
        out["stream_count"] = len(msgs)
        out["stream_in_order"] = msgs == [b"%d" % i for i in range(100)]
        try:
            ch.unary_unary("/sluice.Test/Fail")(b"NOT_FOUND", timeout=10)
            out["fail_code"] = "OK"
        except grpc.RpcError as e:
            out["fail_code"] = e.code().name
            out["fail_details"] = e.details()
        try:
            out["flaky"] = ch.unary_unary("/sluice.Test/Flaky")(key.encode() + b":2", timeout=10).decode()
        except grpc.RpcError as e:
            out["flaky"] = e.code().name
        words = [b"alpha", b"beta", b"gamma"] * 20
        back = list(ch.stream_stream("/sluice.Test/Bidi")(iter(words), timeout=10))
        out["bidi_ok"] = back == [w[::-1] for w in words]
    print(json.dumps(out), flush=True)


def call_once(addr, method, arg):
    """One unary call; prints CODE DETAILS."""
    with grpc.insecure_channel(addr) as ch:
        try:
            ch.unary_unary("/sluice.Test/" + method)(arg.encode(), timeout=10)
            print("OK")
        except grpc.RpcError as e:
            print(e.code().name, e.details())


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(sys.argv[2])
    elif sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "k1")
    elif sys.argv[1] == "call":
        call_once(sys.argv[2], sys.argv[3], sys.argv[4])
