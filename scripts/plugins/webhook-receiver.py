#!/usr/bin/env python3
"""A webhook receiver for trying backmesh notifications: prints (and with
--out, appends to a file) every JSON body POSTed to it, one per line.

    scripts/plugins/webhook-receiver.py --port 8099 [--out received.jsonl] [--fail 2]
                                        [--port-file F]
    backmesh register NODE PATH --every 60 --notify http://127.0.0.1:8099/backmesh

--fail N answers 500 to the first N requests, to watch the retries.
--port 0 takes a free port; --port-file F then tells which (written once
the server listens).
"""
import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, default=8099)
ap.add_argument("--out")
ap.add_argument("--fail", type=int, default=0)
ap.add_argument("--port-file")
args = ap.parse_args()
failures_left = args.fail


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        global failures_left
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if failures_left > 0:
            failures_left -= 1
            self.send_response(500)
            self.end_headers()
            return
        try:
            doc = json.loads(body)
        except ValueError:
            self.send_response(400)
            self.end_headers()
            return
        line = json.dumps(doc, sort_keys=True)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
        self.send_response(200)
        self.end_headers()

    def log_message(self, *a):
        pass


server = HTTPServer(("127.0.0.1", args.port), Handler)
port = server.server_address[1]
if args.port_file:
    with open(args.port_file + ".tmp", "w") as f:
        f.write(f"{port}\n")
    os.replace(args.port_file + ".tmp", args.port_file)
print(f"listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
server.serve_forever()
