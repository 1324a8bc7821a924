"""``cellforge deploy`` and ``cellforge predict``: the terminal side of serving.

    cellforge deploy runs/quickstart/bundle --name digits --max-replicas 4
    echo '[[[0,1,2,3,4,5,6,7]]]' | cellforge predict digits --input -
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def register(sub) -> None:
    d = sub.add_parser("deploy", help="serve a bundle as an HTTP endpoint (Ray Serve)")
    d.add_argument("bundle")
    d.add_argument("--name", required=True, help="the model's name in URLs: /v1/models/NAME")
    d.add_argument("--min-replicas", type=int, default=None)
    d.add_argument("--max-replicas", type=int, default=None, help="autoscale between min and max replicas")
    d.add_argument("--target-ongoing-requests", type=float, default=None)
    d.add_argument("--num-replicas", type=int, default=None, help="a fixed number of replicas instead")
    d.add_argument("--max-batch-size", type=int, default=None)
    d.add_argument("--batch-wait-ms", type=float, default=None)
    d.add_argument("--no-batching", action="store_true")
    d.add_argument("--num-cpus", type=float, default=None, help="CPUs per replica (fractions allowed)")
    d.add_argument("--num-gpus", type=float, default=None, help="GPUs per replica (runs torch on CUDA)")
    d.add_argument("--runtime", choices=["numpy", "torch"], default=None)
    d.add_argument("--api-key", default=os.environ.get("CELLFORGE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default $CELLFORGE_API_KEY)")
    d.add_argument("--config", help="a YAML file of deploy-config fields; flags override it")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8000)
    d.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or an embedded local Ray)")
    d.add_argument("--block", action=argparse.BooleanOptionalAction, default=None,
                   help="keep serving until Ctrl-C (the default on an embedded Ray, which ends with this command)")
    d.set_defaults(fn=_deploy)

    p = sub.add_parser("predict", help="send inputs to a deployed model and print its predictions")
    p.add_argument("name")
    p.add_argument("--input", required=True, help="a JSON file (a list of inputs, or {'inputs': [...]}) or - for stdin")
    p.add_argument("--url", default=os.environ.get("CELLFORGE_URL", "http://127.0.0.1:8000"))
    p.add_argument("--api-key", default=os.environ.get("CELLFORGE_API_KEY"))
    p.set_defaults(fn=_predict)


def _config(args) -> dict:
    import yaml

    cfg = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    auto = {k: v for k, v in (("min_replicas", args.min_replicas), ("max_replicas", args.max_replicas),
                              ("target_ongoing_requests", args.target_ongoing_requests)) if v is not None}
    if auto:
        cfg["autoscaling"] = {**cfg.get("autoscaling", {}), **auto}
    batch = {k: v for k, v in (("max_batch_size", args.max_batch_size),
                               ("batch_wait_timeout_s", None if args.batch_wait_ms is None else args.batch_wait_ms / 1000),
                               ("enabled", False if args.no_batching else None)) if v is not None}
    if batch:
        cfg["batching"] = {**cfg.get("batching", {}), **batch}
    for key in ("num_replicas", "num_cpus", "num_gpus", "runtime", "api_key"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    return cfg


def _deploy(args) -> int:
    from cellforge.serving.deploy import deploy, hold

    ep = deploy(args.bundle, args.name, host=args.host, port=args.port, address=args.address, **_config(args))
    print(f"[cellforge] {ep.name} version {ep.version} serving at {ep.url}  (API docs: {ep.base_url}/docs)",
          flush=True)
    hold(args.block, args.address, "Ctrl-C to stop")
    return 0


def _predict(args) -> int:
    import httpx

    from cellforge.client import Client, RequestError

    text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        print(f"cellforge: --input is not valid JSON: {e}", file=sys.stderr)
        return 2
    inputs = data["inputs"] if isinstance(data, dict) and "inputs" in data else data
    try:
        with Client(args.url, api_key=args.api_key) as client:
            print(json.dumps(client.predict(args.name, inputs)))
    except RequestError as e:
        print(f"cellforge: {e}", file=sys.stderr)
        return 1
    except httpx.TransportError as e:
        print(f"cellforge: cannot reach {args.url} ({e}); is the model deployed? see --url", file=sys.stderr)
        return 1
    return 0
